"""`effnet export`: build the model, write the card's ONNX and/or IR (fp32, fp16, int8), verify each."""
from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..calibration import NEEDS_PHOTOS, CalibrationSet
from ..engines import FILE_PRECISIONS
from ..errors import EffnetError, OutputError, RequestError
from ..files import folder_images
from ..optional import require
from ..preprocessing import PreprocessConfig
from ..resolved import ResolvedModel
from .build import ir_from_onnx
from .metadata import describe
from .onnx import export_onnx, run_onnx
from .openvino import bgr_nchw, run_ir, save_ir
from .quantize import load_crops
from .writing import FolderWriteError, written
from .verify import (
    FP32_TOLERANCE,
    Parity,
    compare,
    example_crops,
    normalized_nchw,
    torch_probabilities,
)

log = logging.getLogger(__name__)

FORMATS = ("onnx", "openvino")
VERIFY_IMAGES = 8  # fp32/fp16 parity: a few images prove the graph; agreement statistics need more
VERIFY_EXTRA = 16  # photos taken from `images`: enough to see a problem, bounded for B7's speed


class ParityError(EffnetError):
    """An exported fp32 model whose probabilities differ from PyTorch's by more than the tolerance."""


@dataclass(frozen=True)
class Exported:
    """One written file and, when verified, how it agrees with PyTorch fp32."""

    format: str
    precision: str
    path: Path
    parity: Parity | None = None


def check_request(formats: Sequence[str], precision: str, calibration: CalibrationSet | None, *,
                  verify: bool = True) -> None:
    """Refuse impossible combinations, and name a missing engine package, before minutes of work (a model
    built, B7's weights downloaded)."""
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise RequestError(f"unknown formats={','.join(unknown) or '(none)'}; choose from {', '.join(FORMATS)}",
                          params=("formats",))
    if precision not in FILE_PRECISIONS:
        raise RequestError(f"unknown precision={precision}; choose from {', '.join(FILE_PRECISIONS)}",
                          params=("precision",))
    if precision != "fp32" and "openvino" not in formats:
        raise RequestError(f"ONNX export is fp32 (the card's original model); precision={precision} needs "
                          f"formats=openvino", params=("precision", "formats"))
    if precision == "int8" and calibration is None:
        raise RequestError(NEEDS_PHOTOS, params=("precision", "calibration"))
    for module in required_modules(formats, precision, verify=verify):
        require(module)


def required_modules(formats: Sequence[str], precision: str, *, verify: bool) -> list[str]:
    """The optional packages an export uses: onnx always (the IR is converted from the ONNX file), ONNX
    Runtime to verify an ONNX file, OpenVINO for the IR, NNCF for int8."""
    needed = ["onnx"]
    if "onnx" in formats and verify:
        needed.append("onnxruntime")
    if "openvino" in formats:
        needed.append("openvino")
    if precision == "int8":
        needed.append("nncf")
    return needed


def ir_filename(name: str, precision: str) -> str:
    return f"{name}.xml" if precision == "fp32" else f"{name}-{precision}.xml"


def export_model(resolved: ResolvedModel, *, output: str | os.PathLike[str], formats: Sequence[str] = ("onnx",),
                 precision: str = "fp32", batch: int | None = 1, calibration: CalibrationSet | None = None,
                 verify: bool = True, images: str | os.PathLike[str] | None = None) -> list[Exported]:
    """Write `resolved` in each of `formats` under `output`; ONNX is always fp32, `precision` is the IR's.

    With `verify`, each file is run next to PyTorch on real photos (`verification_crops`): fp32
    probabilities must match within 1e-4 (else ParityError), fp16 and int8 report their agreement.
    int8 is calibrated on `calibration`'s photos, every fifth one kept back to measure agreement on
    photos it did not see. `images`: a folder of more photos to verify on.

    Each file is written under a temporary name in `output` and renamed when complete: a full disk leaves
    no partial file under a final name, and raises OutputError naming the folder.
    """
    check_request(formats, precision, calibration, verify=verify)
    config, name = resolved.preprocess, resolved.name
    output = Path(output)
    model = resolved.create_model(input_size=config.input_size)  # reads (and checks) the weights
    log.info("building %s (weights %s) at %dx%d", name, resolved.weights_id, config.input_size, config.input_size)
    _, held_files = calibration.split() if calibration is not None else ([], [])
    samples, reference = None, None
    if verify:
        # int8 is judged on every held-out photo; fp32/fp16 parity needs only a few inputs.
        held = held_files if precision == "int8" else held_files[:VERIFY_IMAGES]
        samples = verification_crops(config, images=images, held_out=held)
        log.info("running the PyTorch reference on %d photos", len(samples))
        reference = torch_probabilities(model, samples, config)
    results: list[Exported] = []
    with tempfile.TemporaryDirectory(prefix="effnet-export-") as tmp:
        onnx_path = output / f"{name}.onnx" if "onnx" in formats else Path(tmp) / f"{name}.onnx"
        log.info("exporting ONNX (%s batch)", "dynamic" if batch is None else batch)
        with writing_into(output, onnx_path) as path:
            export_onnx(model, path, batch=batch, metadata=describe(resolved, color="RGB", folded=False))
        if "onnx" in formats:
            parity = None
            if reference is not None:
                probs = run_onnx(onnx_path, normalized_nchw(samples, config))
                parity = check_parity(reference, probs, "fp32", "onnx")
            results.append(Exported("onnx", "fp32", onnx_path, parity))
        if "openvino" in formats:
            ir = ir_from_onnx(resolved, onnx_path, precision, calibration=calibration)
            xml = output / ir_filename(name, precision)
            with writing_into(output, xml, ".bin") as path:
                save_ir(ir, path, precision)
            parity = None
            if reference is not None:
                parity = check_parity(reference, run_ir(xml, bgr_nchw(samples)), precision, "openvino")
            results.append(Exported("openvino", precision, xml, parity))
    return results


@contextlib.contextmanager
def writing_into(output: Path, final: Path, *companions: str) -> Iterator[Path]:
    """`written(final, *companions)`, with a failure of the folder (a full disk) as one OutputError naming
    it: `output` as the parameter it is, a temporary folder by its path."""
    final.parent.mkdir(parents=True, exist_ok=True)
    try:
        with written(final, *companions) as path:
            yield path
    except FolderWriteError as exc:
        if final.parent == output:
            raise OutputError(f"cannot write to output={output}: {exc.reason}; give a writable folder with room "
                              f"for the files", params=("output",)) from exc
        raise OutputError(f"cannot write to the temporary folder {final.parent}: {exc.reason}") from exc


def verification_crops(config: PreprocessConfig, *, images: str | os.PathLike[str] | None = None,
                       held_out: Sequence[Path] = ()) -> np.ndarray:
    """The photos an export is verified on, as uint8 (N, S, S, 3) crops: views of the bundled example
    photo, up to VERIFY_EXTRA of `images`' photos (spread over the folder), and the `held_out`
    calibration photos. Always real photos, never synthetic patterns (see `example_crops`)."""
    parts = [example_crops(config)]
    if images is not None:
        files = folder_images(images, "images")  # refuses what is not a folder of images
        step = max(1, len(files) // VERIFY_EXTRA)
        parts.append(load_crops(files[::step][:VERIFY_EXTRA], config, desc="verification images"))
    if held_out:
        parts.append(load_crops(held_out, config, desc="held-out images"))
    return np.concatenate(parts)


def check_parity(reference: np.ndarray, probs: np.ndarray, precision: str, fmt: str) -> Parity:
    """How an exported file's probabilities agree with PyTorch's; fp32 probabilities off by more than
    FP32_TOLERANCE on any photo (or NaN) raise ParityError (see `compare`)."""
    parity = compare(reference, probs)
    if precision == "fp32" and not parity.max_abs_diff <= FP32_TOLERANCE:
        raise ParityError(f"{fmt} fp32 differs from PyTorch by {parity.max_abs_diff:.2e} in probability "
                          f"(> {FP32_TOLERANCE:g}) on {parity.count} real photos; the export is wrong")
    return parity

