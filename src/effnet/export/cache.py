"""The export cache: ONNX and IR files built once per (model, weights sha256, format, precision, batch,
effnet version, calibration set) and reused by every later process."""
from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from ..errors import EffnetError
from ..preprocessing import folder_images
from ..resolved import ResolvedModel
from ..weights import cache_dir
from .metadata import describe
from .onnx import export_onnx
from .openvino import save_ir
from .quantize import DEFAULT_SUBSET, split_holdout

_MARKER = "complete"
_scratch: Path | None = None  # random-weights exports: not reusable, so kept for this process only


def exports_dir(root: str | os.PathLike[str] | None = None) -> Path:
    """Where exported models live: <effnet cache>/exports unless `root` is given."""
    return Path(root) if root is not None else cache_dir() / "exports"


def calibration_key(folder: str | os.PathLike[str], subset_size: int) -> str:
    """Names, sizes and times of the calibration images: a changed folder means a new int8 model."""
    digest = hashlib.sha256(str(subset_size).encode())
    for path in folder_images(folder, "--calibration"):
        st = path.stat()
        digest.update(f"{path.relative_to(folder)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def export_key(resolved: ResolvedModel, fmt: str, precision: str, batch: int | None,
               calibration: str | os.PathLike[str] | None = None, subset_size: int = DEFAULT_SUBSET) -> str | None:
    """The cache directory name of one exported model; None where it cannot be reused (random weights)."""
    from .. import __version__

    if resolved.weights_sha256 is None:
        return None
    parts = [resolved.name, resolved.weights_id, fmt, precision, "bdyn" if batch is None else f"b{batch}",
             f"v{__version__}"]
    if precision == "int8" and calibration is not None:
        parts.append("cal" + calibration_key(calibration, subset_size)[:12])
    return "-".join(parts)


def _scratch_dir() -> Path:
    global _scratch
    if _scratch is None:
        _scratch = Path(tempfile.mkdtemp(prefix="effnet-exports-"))
        atexit.register(shutil.rmtree, _scratch, True)
    return _scratch


def cached(key: str | None, filename: str, root: str | os.PathLike[str] | None,
           build: Callable[[Path], None]) -> Path:
    """`key`'s directory holding `filename`, calling build(path) first if it is not there yet.

    Built in a temporary sibling folder and renamed into place, so a killed build leaves nothing that
    looks finished; `key` None builds into a folder removed when the process exits.
    """
    if key is None:
        target = Path(tempfile.mkdtemp(dir=_scratch_dir()))
        build(target / filename)
        return target / filename
    final = exports_dir(root) / key
    if (final / _MARKER).exists():
        return final / filename
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=final.parent))
    except OSError:  # a read-only (or misplaced) cache: build for this process only; the CLI says so
        return cached(None, filename, root, build)
    try:
        build(work / filename)
        (work / _MARKER).touch()
        try:
            os.rename(work, final)
        except OSError:  # another process finished first: keep its copy
            if not (final / _MARKER).exists():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final / filename


def cached_onnx(resolved: ResolvedModel, *, batch: int | None = None,
                root: str | os.PathLike[str] | None = None) -> Path:
    """The card's ONNX file (the original model) for `resolved`, exported on first use."""
    def build(path: Path) -> None:
        model = resolved.create_model(input_size=resolved.input_size)
        export_onnx(model, path, batch=batch, metadata=describe(resolved, color="RGB", folded=False))

    return cached(export_key(resolved, "onnx", "fp32", batch), "model.onnx", root, build)


def calibration_split(calibration: str | os.PathLike[str] | None, precision: str,
                      subset_size: int = DEFAULT_SUBSET) -> tuple[list[Path], list[Path]]:
    """(calibration files, held-out files) for int8; int8 without a folder is refused up front."""
    if precision != "int8":
        return [], []
    if calibration is None:
        raise EffnetError("int8 needs --calibration DIR: a folder of a few hundred representative photos")
    return split_holdout(folder_images(calibration, "--calibration"), subset_size)


def cached_ir(resolved: ResolvedModel, *, precision: str = "fp32", batch: int | None = None,
              calibration: str | os.PathLike[str] | None = None, subset_size: int = DEFAULT_SUBSET,
              root: str | os.PathLike[str] | None = None) -> Path:
    """The card's IR (`.xml`) for `resolved` at `precision` (fp32, fp16, int8), built on first use.
    int8 needs `calibration`, a folder of images (every fifth kept out, as in export)."""
    from .build import build_ir

    files, _ = calibration_split(calibration, precision, subset_size)

    def build(path: Path) -> None:
        save_ir(build_ir(resolved, precision, batch=batch, calibration_files=files, subset_size=subset_size),
                path, precision)

    key = export_key(resolved, "openvino", precision, batch, calibration, subset_size)
    return cached(key, "model.xml", root, build)
