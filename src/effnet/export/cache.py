"""Exported models kept under the cache, so only the first process pays for an export.

A directory per (model, weights digest, format, precision, batch, calibration set, effnet version);
it is built under a temporary name and renamed into place, so a crashed or concurrent export never
leaves a half-written model where a reader would take it.
"""
from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from ..api import Weights, create_model
from ..weights import cache_dir, preprocess_config, resolve_weights
from .metadata import describe
from .onnx import export_onnx
from .openvino import ENGINE_REVISION, convert_onnx, engine_model, save_ir
from .quantize import DEFAULT_SUBSET, asymmetric_activations, image_files, load_crops, quantize_int8, split_holdout

_MARKER = "complete"
_scratch: Path | None = None  # random-weights exports: not reusable, so kept for this process only


def exports_dir(root: str | os.PathLike[str] | None = None) -> Path:
    """Where exported models live: <effnet cache>/exports unless `root` is given."""
    return Path(root) if root is not None else cache_dir() / "exports"


def weights_key(name: str, weights: Weights, root: str | os.PathLike[str] | None = None) -> str | None:
    """The sha256 of the weights file actually used (resolved first: a missing file is the user's
    error, and "imagenet" may be served by more than one file). None for random weights, which no
    later process can reproduce."""
    if weights is None:
        return None
    return file_digest(resolve_weights(name, weights), exports_dir(root) / "digests.json")


def file_digest(path: str | os.PathLike[str], memo: Path) -> str:
    """sha256 of a file, remembered in `memo` by the file's identity (path, size, times, inode): hashing
    B7's 266 MB costs about 0.3 s, a tenth of the time budget of a warm start."""
    path = Path(path).resolve()
    st = path.stat()
    identity = f"{path}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}|{st.st_ino}"
    with contextlib.suppress(OSError, ValueError):
        known = json.loads(memo.read_text())
        if identity in known:
            return known[identity]
    with open(path, "rb") as fh:
        digest = hashlib.file_digest(fh, "sha256").hexdigest()
    with contextlib.suppress(OSError, ValueError):  # a read-only cache only costs a re-hash next time
        known = json.loads(memo.read_text()) if memo.exists() else {}
        known[identity] = digest
        memo.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo.with_name(f"{memo.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known))
        os.replace(tmp, memo)
    return digest


def calibration_key(folder: str | os.PathLike[str], subset_size: int) -> str:
    """Names, sizes and times of the calibration images: a changed folder means a new int8 model."""
    digest = hashlib.sha256(str(subset_size).encode())
    for path in image_files(folder):
        st = path.stat()
        digest.update(f"{path.relative_to(folder)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def export_key(name: str, weights: Weights, fmt: str, precision: str, batch: int | None,
               calibration: str | os.PathLike[str] | None = None, subset_size: int = DEFAULT_SUBSET,
               root: str | os.PathLike[str] | None = None) -> str | None:
    """The cache directory name of one exported model; None where it cannot be reused (random weights)."""
    from .. import __version__

    digest = weights_key(name, weights, root)
    if digest is None:
        return None
    parts = [name, digest[:16], fmt, precision, "bdyn" if batch is None else f"b{batch}", f"v{__version__}"]
    if precision == "int8" and calibration is not None:
        parts.append("cal" + calibration_key(calibration, subset_size)[:12])
    return "-".join(parts)


def _scratch_dir() -> Path:
    global _scratch
    if _scratch is None:
        _scratch = Path(tempfile.mkdtemp(prefix="effnet-exports-"))
        atexit.register(shutil.rmtree, _scratch, True)
    return _scratch


def _cached(key: str | None, filename: str, root: str | os.PathLike[str] | None,
            build: Callable[[Path], None]) -> Path:
    """`key`'s directory holding `filename`, calling build(path) first if it is not there yet."""
    if key is None:
        target = Path(tempfile.mkdtemp(dir=_scratch_dir()))
        build(target / filename)
        return target / filename
    final = exports_dir(root) / key
    if (final / _MARKER).exists():
        return final / filename
    final.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=final.parent))
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


def cached_onnx(name: str, weights: Weights = "imagenet", *, batch: int | None = None,
                root: str | os.PathLike[str] | None = None) -> Path:
    """The card's ONNX file for `name` with `weights`, exported on first use."""
    def build(path: Path) -> None:
        config = preprocess_config(name)
        model = create_model(name, weights, input_size=config.input_size)
        export_onnx(model, path, batch=batch, metadata=describe(name, config, color="RGB", folded=False))

    return _cached(export_key(name, weights, "onnx", "fp32", batch, root=root), "model.onnx", root, build)


def cached_ir(name: str, weights: Weights = "imagenet", *, precision: str = "fp32", batch: int | None = None,
              calibration: str | os.PathLike[str] | None = None, subset_size: int = DEFAULT_SUBSET,
              engine: bool = False, root: str | os.PathLike[str] | None = None) -> Path:
    """The card's IR (`.xml`) for `name` with `weights` at `precision` (fp32, fp16, int8), built on first use.

    `engine`: what OpenVINOBackend compiles (export.openvino.engine_model: effnet's uint8 RGB NHWC
    front, CPU-friendly pools) instead of the card's float BGR IR. int8 needs `calibration`, a folder of images (every fifth kept out, as in export).
    """
    if precision == "int8" and calibration is None:
        from ..errors import EffnetError
        raise EffnetError("int8 needs a calibration folder: a few hundred representative photos")

    def build(path: Path) -> None:
        config = preprocess_config(name)
        with tempfile.TemporaryDirectory(prefix="effnet-onnx-") as tmp:
            onnx_path = Path(tmp) / "model.onnx"
            model = create_model(name, weights, input_size=config.input_size)
            export_onnx(model, onnx_path, batch=batch)
            ir = convert_onnx(onnx_path, config, describe(name, config, color="BGR", folded=True))
            if precision == "int8":
                files, _ = split_holdout(image_files(calibration), subset_size)
                crops = load_crops(files, config, desc="calibration images")
                ir = quantize_int8(ir, crops, subset_size=subset_size,
                                   asymmetric_activations=asymmetric_activations(name))
            save_ir(engine_model(ir) if engine else ir, path, precision)

    fmt = f"openvino_engine{ENGINE_REVISION}" if engine else "openvino"
    key = export_key(name, weights, fmt, precision, batch, calibration, subset_size, root)
    return _cached(key, "model.xml", root, build)
