"""INT8 by post-training quantization (NNCF) of the card's IR, calibrated on a folder of photos."""
from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from ..arch import Activation, NetworkSpec
from ..calibration import DEFAULT_SUBSET
from ..errors import EffnetError, ImageError
from ..optional import require
from ..decode import center_crop, load_image
from ..preprocessing import PreprocessConfig
from .openvino import bgr_nchw, run_ir
from .verify import Parity, compare

if TYPE_CHECKING:
    import openvino as ov


def load_crops(files: Sequence[Path], config: PreprocessConfig, *, desc: str = "decoding",
               progress: bool = True) -> np.ndarray:
    """uint8 (N, S, S, 3) RGB centre crops; files that do not decode are skipped."""
    crops = []
    for path in tqdm(files, desc=desc, unit="img", disable=not (progress and sys.stderr.isatty())):
        try:
            crops.append(center_crop(load_image(path), config))
        except ImageError:
            continue
    if not crops:
        raise EffnetError("none of the calibration images could be decoded")
    return np.stack(crops)


def asymmetric_activations(spec: NetworkSpec) -> bool:
    """Whether the network's activations call for asymmetric int8 ranges (SiLU: yes; Lite's ReLU6: no)."""
    return spec.activation is Activation.SILU


def quantize_int8(model: ov.Model, crops: np.ndarray, *, held_out: np.ndarray | None = None,
                  max_drop: float | None = None, subset_size: int = DEFAULT_SUBSET,
                  asymmetric_activations: bool = True) -> tuple[ov.Model, Parity | None]:
    """INT8 version of the card's IR, calibrated on uint8 (N, S, S, 3) RGB crops, and how its answers
    follow the fp32 model's on the `held_out` crops (None when there are none).

    The recipe, measured with real weights (Lite0, Lite1, Lite2) on photos split by photo
    (benchmarks/RESULTS.md, "int8 and bf16 against fp32"): per-channel weight scales (per-tensor ones keep
    47-50 % of fp32's top-1 answers instead of 72-86 %), NNCF's full bias correction (Lite1 82 -> 88 %,
    Lite2 73 -> 88 %, Lite0 89 % either way; slower to build than its fast variant), and the stem conv kept
    in float: its input is the normalised image, three channels of different ranges sharing one int8 scale
    (Lite0 86 -> 89 %), for a layer that is a tiny share of the compute. `asymmetric_activations` (NNCF's
    mixed preset) suits SiLU, whose outputs are mostly positive with a short negative tail; ReLU6 (Lite)
    does as well with the faster symmetric default.

    `max_drop`: accuracy control. Layers go back to float, the most harmful first, until top-1 agreement
    with fp32 on `held_out` is at least 1 - max_drop (NNCF's quantize_with_accuracy_control, with that
    agreement as its metric). On Lite0, 0.005 left 4 of its 50 layers in int8 and ran at 0.59x bf16's
    speed, with 97.9 % agreement on photos it never saw: the honest price of fp32's answers.
    """
    nncf = require("nncf")
    stem = next(op.get_friendly_name() for op in model.get_ordered_ops() if op.get_type_name() == "Convolution")
    dataset = nncf.Dataset(list(crops), lambda crop: bgr_nchw(crop[np.newaxis]))
    preset = nncf.QuantizationPreset.MIXED if asymmetric_activations else nncf.QuantizationPreset.PERFORMANCE
    options = {"preset": preset, "subset_size": min(subset_size, len(crops)), "fast_bias_correction": False,
               "ignored_scope": nncf.IgnoredScope(names=[stem])}
    has_held_out = held_out is not None and len(held_out) > 0
    if max_drop is not None and not has_held_out:
        raise EffnetError("int8 accuracy control needs held-out photos: give at least 2 calibration photos")
    held_x = bgr_nchw(held_out) if has_held_out else None
    reference = run_ir(model, held_x) if has_held_out else None  # before NNCF touches the model
    # Its progress bars are printed to stdout, which carries results only.
    with quiet_nncf(), stdout_to_stderr():
        if max_drop is None:
            quantized = nncf.quantize(model, dataset, **options)
        else:
            labelled = [(held_x[i:i + 1], int(label)) for i, label in enumerate(reference.argmax(1))]
            quantized = nncf.quantize_with_accuracy_control(
                model, dataset, nncf.Dataset(labelled), _top1_agreement, max_drop=max_drop, **options)
    quality = compare(reference, run_ir(quantized, held_x)) if has_held_out else None
    return quantized, quality


@contextlib.contextmanager
def quiet_nncf() -> Iterator[None]:
    """NNCF's per-node INFO lines off inside the block; its progress bars stay."""
    logger = logging.getLogger("nncf")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def _top1_agreement(compiled, items) -> tuple[float, list[float]]:
    """Accuracy control's metric: the share of (input, fp32 top-1) items whose top-1 is unchanged, and
    each item's 0/1 (NNCF ranks layers on them)."""
    output = compiled.output(0)
    same = [float(compiled(x)[output][0].argmax() == label) for x, label in items]
    return float(np.mean(same)), same


def float_layers_kept(model: ov.Model) -> int:
    """Convolutions and matrix products of a quantised IR that run in float: those whose input is not
    quantised (no FakeQuantize in front): the stem, and what accuracy control put back."""
    heavy = ("Convolution", "GroupConvolution", "MatMul")
    return sum(1 for op in model.get_ordered_ops() if op.get_type_name() in heavy
               and op.input_value(0).get_node().get_type_name() != "FakeQuantize")


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Everything written to stdout inside the block goes to stderr instead: through Python's sys.stdout,
    and through file descriptor 1 for native code and libraries that hold the descriptor."""
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.flush()
    saved = None
    try:
        saved = os.dup(1)
        os.dup2(2, 1)
    except OSError:  # descriptor 1 or 2 is closed: leave the descriptors as they are
        if saved is not None:
            os.close(saved)
            saved = None
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
        if saved is not None:
            os.dup2(saved, 1)
            os.close(saved)
