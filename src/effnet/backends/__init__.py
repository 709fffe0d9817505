"""Inference engines behind one protocol (base.Backend), and `create_backend` to pick one.

Engine modules are imported inside `create_backend`, so importing effnet never needs onnxruntime or
openvino; a missing one raises MissingEngineError naming the extra that installs it.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from ..engines import ALL_PRECISIONS, ENGINE_MODULES, KINDS, PRECISIONS, SPEED_ORDER
from ..errors import EffnetError
from ..resolved import ResolvedModel
from .base import Backend


def available_backends() -> list[str]:
    """Installed engines, fastest first."""
    from ..optional import installed

    return [k for k in SPEED_ORDER if k not in ENGINE_MODULES or installed(ENGINE_MODULES[k])]


def default_precision(kind: str) -> str:
    """What an engine computes in when not told: OpenVINO's own choice (bf16 on CPUs that have it,
    about 1.9x fp32 on B7 here), fp32 elsewhere."""
    if kind != "openvino":
        return "fp32"
    from ..optional import require

    capabilities = require("openvino").Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return "bf16" if "BF16" in capabilities else "fp32"


def resolve_kind(kind: str, precision: str | None = "fp32") -> str:
    """`auto` -> the fastest installed engine that runs `precision` (None: any); other kinds are checked,
    installed included, so that a missing engine is reported before any work starts."""
    if precision is None:
        precision = "fp32"  # every engine runs it; the engine's own default is picked afterwards
    if kind not in KINDS:
        raise EffnetError(f"unknown backend {kind!r}; choose one of: {', '.join(KINDS)}")
    if kind == "auto":
        for candidate in available_backends():
            if precision in PRECISIONS[candidate]:
                return candidate
        need = [k for k in SPEED_ORDER if precision in PRECISIONS[k]]
        raise EffnetError(f"no installed engine runs {precision}; it needs {' or '.join(need)} "
                          f"(pip install 'effnet[{need[0]}]')")
    if precision not in PRECISIONS[kind]:
        raise EffnetError(f"the {kind} backend runs {', '.join(PRECISIONS[kind])}, not {precision} "
                          f"(--precision)")
    if kind in ENGINE_MODULES:
        from ..optional import require

        require(ENGINE_MODULES[kind])
    return kind


def create_backend(kind: str, resolved: ResolvedModel, precision: str | None = "fp32", *,
                   batch: int | None | Literal["auto"] = "auto",
                   calibration: str | os.PathLike[str] | None = None, hint: str = "THROUGHPUT",
                   streams: int | None = None, threads: int | None = None, pin_threads: bool = True,
                   cache_root: str | os.PathLike[str] | None = None,
                   log: Callable[[str], None] = lambda _: None) -> Backend:
    """An engine running the resolved model at `precision` (None: the engine's default, see
    `default_precision`).

    `auto` picks the fastest installed engine (OpenVINO on x86 CPUs). ONNX and IR files are exported
    on first use and cached under `cache_root` (default: effnet's cache dir), keyed by model, weights
    sha256, precision, batch and effnet version; OpenVINO also caches its compiled blob there.
    `batch`: the exported model's batch (None: any). "auto": 1 for OpenVINO, which spreads a call's
    images over its infer requests (a fixed shape also answers the first call sooner), any for ONNX Runtime.
    `calibration`: image folder, needed for int8. `hint`, `streams`: OpenVINO's performance settings.
    `threads`: the engine's threads (default: one per core). `pin_threads=False`: OpenVINO leaves its threads
    unpinned, for processes that share a machine's cores (each would pin its streams to the first cores).
    `log` hears one line before long work (the first build of an engine model).
    """
    from ..weights import cache_dir

    kind = resolve_kind(kind, precision)
    precision = precision or default_precision(kind)
    root = Path(cache_root) if cache_root is not None else cache_dir()
    if kind == "torch":
        from .torch_backend import TorchBackend

        return TorchBackend(resolved.create_model(), resolved.preprocess, bf16=precision == "bf16")
    if kind == "onnxruntime":
        from ..export.cache import cached_onnx
        from .onnxruntime_backend import OnnxRuntimeBackend

        path = cached_onnx(resolved, batch=None if batch == "auto" else batch, root=root / "exports")
        return OnnxRuntimeBackend(path, resolved.preprocess, threads=threads)
    from .openvino_backend import OpenVINOBackend
    from .openvino_graph import engine_ir

    file_precision = "fp32" if precision == "bf16" else precision  # bf16 is a compute mode, not a file
    xml = engine_ir(resolved, precision=file_precision, batch=1 if batch == "auto" else batch,
                    calibration=calibration, root=root / "exports", log=log)
    # Random weights make a throwaway model: keep its compiled blob out of the cache.
    blobs = root / "openvino" if not resolved.random_weights else None
    return OpenVINOBackend(xml, precision=precision, hint=hint, cache_dir=blobs, streams=streams,
                           threads=threads, pin_threads=pin_threads)


__all__ = ["ALL_PRECISIONS", "KINDS", "PRECISIONS", "Backend", "available_backends", "create_backend",
           "default_precision", "resolve_kind"]
