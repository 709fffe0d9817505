"""The export cache: ONNX and IR files built once per (model, weights sha256, format, precision, batch,
effnet version, calibration set) and reused by every later process."""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from ..cache_layout import EXPORT_DONE, CacheLayout
from ..calibration import CalibrationSet
from ..resolved import ResolvedModel
from .metadata import describe
from .onnx import export_onnx
from .openvino import save_ir

_scratch: Path | None = None  # random-weights exports: not reusable, so kept for this process only


def export_key(resolved: ResolvedModel, fmt: str, precision: str, batch: int | None,
               calibration: CalibrationSet | None = None) -> str | None:
    """The cache directory name of one exported model; None where it cannot be reused (random weights).
    An int8 model is keyed by its calibration set's identity (the photos' names and contents)."""
    from .. import __version__

    if resolved.weights_sha256 is None:
        return None
    parts = [resolved.name, resolved.weights_id, fmt, precision, "bdyn" if batch is None else f"b{batch}",
             f"v{__version__}"]
    if precision == "int8" and calibration is not None:
        parts.append("cal" + calibration.sha256[:12])
    return "-".join(parts)


def _scratch_dir() -> Path:
    global _scratch
    if _scratch is None:
        _scratch = Path(tempfile.mkdtemp(prefix="effnet-exports-"))
        atexit.register(shutil.rmtree, _scratch, True)
    return _scratch


def cached(key: str | None, filename: str, layout: CacheLayout | None, build: Callable[[Path], None]) -> Path:
    """`key`'s directory holding `filename`, calling build(path) first if it is not there yet.

    Built in a temporary sibling folder and renamed into place, so a killed build leaves nothing that
    looks finished; `key` None builds into a folder removed when the process exits.
    """
    if key is None:
        target = Path(tempfile.mkdtemp(dir=_scratch_dir()))
        build(target / filename)
        return target / filename
    final = (layout or CacheLayout.default()).exports / key
    if (final / EXPORT_DONE).exists():
        return final / filename
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=final.parent))
    except OSError:  # a read-only (or misplaced) cache: build for this process only; the CLI says so
        return cached(None, filename, layout, build)
    try:
        build(work / filename)
        (work / EXPORT_DONE).touch()
        try:
            os.rename(work, final)
        except OSError:  # another process finished first: keep its copy
            if not (final / EXPORT_DONE).exists():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final / filename


def cached_onnx(resolved: ResolvedModel, *, batch: int | None = None, layout: CacheLayout | None = None) -> Path:
    """The card's ONNX file (the original model) for `resolved`, exported on first use."""
    def build(path: Path) -> None:
        model = resolved.create_model(input_size=resolved.input_size)
        export_onnx(model, path, batch=batch, metadata=describe(resolved, color="RGB", folded=False))

    return cached(export_key(resolved, "onnx", "fp32", batch), "model.onnx", layout, build)


def cached_ir(resolved: ResolvedModel, *, precision: str = "fp32", batch: int | None = None,
              calibration: CalibrationSet | None = None, layout: CacheLayout | None = None) -> Path:
    """The card's IR (`.xml`) for `resolved` at `precision` (fp32, fp16, int8), built on first use.
    int8 is quantised on `calibration` (every fifth photo kept out, as in export)."""
    from .build import build_ir

    def build(path: Path) -> None:
        save_ir(build_ir(resolved, precision, batch=batch, calibration=calibration), path, precision)

    return cached(export_key(resolved, "openvino", precision, batch, calibration), "model.xml", layout, build)
