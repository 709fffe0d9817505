"""The export cache: ONNX and IR files built once per (model, weights sha256, format, precision, batch,
effnet version, calibration set) and reused by every later process."""
from __future__ import annotations

import atexit
import errno
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from ..cache_layout import EXPORT_DONE, CacheLayout, cache_dir
from ..calibration import CalibrationSet
from ..errors import OutputError
from ..model import EfficientNet
from ..resolved import ResolvedModel
from .metadata import describe
from .onnx import export_onnx
from .openvino import save_ir
from .writing import NO_SPACE, write_failure

log = logging.getLogger(__name__)
T = TypeVar("T")

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


def unwritable_cache_notice(root: Path, reason: str) -> str:
    """The one line said when the cache cannot keep engine models (read-only, misplaced, or its disk full)."""
    where = f"EFFNET_HOME={root}" if os.environ.get("EFFNET_HOME") and root == cache_dir() else str(root)
    return (f"cannot write to the cache {where} ({reason}); engine models are built in a temporary folder for "
            f"this run only (set EFFNET_HOME to a writable folder to keep them)")


def cached(key: str | None, filename: str, layout: CacheLayout | None, make: Callable[[], T],
           save: Callable[[T, Path], object]) -> Path:
    """`key`'s folder holding `filename`; if it is not there yet, made once (`make()`) and saved
    (`save(made, path)`).

    Saved in a temporary sibling folder and renamed into place, so a killed build leaves nothing that
    looks finished. Where the cache cannot keep it, it is saved in a folder removed when the process exits:
    `key` None (random weights); a read-only or misplaced cache (which the CLI names before the build); a
    disk that fills up while saving (which only the save finds, so it is logged here, and the model is not
    made again).
    """
    layout = layout or CacheLayout.default()
    root = layout.root
    final = layout.exports / key if key is not None else None
    if final is not None and (final / EXPORT_DONE).exists():
        return final / filename
    made = make()
    if final is None:
        return _save_for_this_process(made, save, filename, root)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=final.parent))
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):  # a check before the build cannot see this
            log.warning(unwritable_cache_notice(root, write_failure(exc, final.parent) or NO_SPACE))
        return _save_for_this_process(made, save, filename, root)
    try:
        try:
            save(made, work / filename)
            (work / EXPORT_DONE).touch()
        except Exception as exc:
            reason = write_failure(exc, work)
            if reason is None:
                raise
            log.warning(unwritable_cache_notice(root, reason))
            return _save_for_this_process(made, save, filename, root)
        try:
            os.rename(work, final)
        except OSError:  # another process finished first: keep its copy
            if not (final / EXPORT_DONE).exists():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final / filename


def _save_for_this_process(made: T, save: Callable[[T, Path], object], filename: str, root: Path) -> Path:
    target = Path(tempfile.mkdtemp(dir=_scratch_dir())) / filename
    try:
        save(made, target)
    except Exception as exc:
        reason = write_failure(exc, target.parent)
        if reason is None:
            raise
        raise OutputError(f"cannot write the engine model {filename} to the cache {root} nor to the temporary "
                          f"folder {target.parent} ({reason})") from exc
    return target


def cached_onnx(resolved: ResolvedModel, *, batch: int | None = None, layout: CacheLayout | None = None) -> Path:
    """The card's ONNX file (the original model) for `resolved`, exported on first use."""
    def save(model: EfficientNet, path: Path) -> None:
        export_onnx(model, path, batch=batch, metadata=describe(resolved, color="RGB", folded=False))

    return cached(export_key(resolved, "onnx", "fp32", batch), "model.onnx", layout,
                  lambda: resolved.create_model(input_size=resolved.input_size), save)


def cached_ir(resolved: ResolvedModel, *, precision: str = "fp32", batch: int | None = None,
              calibration: CalibrationSet | None = None, layout: CacheLayout | None = None) -> Path:
    """The card's IR (`.xml`) for `resolved` at `precision` (fp32, fp16, int8), built on first use.
    int8 is quantised on `calibration` (every fifth photo kept out, as in export)."""
    from .build import build_ir

    return cached(export_key(resolved, "openvino", precision, batch, calibration), "model.xml", layout,
                  lambda: build_ir(resolved, precision, batch=batch, calibration=calibration),
                  lambda ir, path: save_ir(ir, path, precision))
