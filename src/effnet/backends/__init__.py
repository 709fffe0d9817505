"""Inference engines behind one protocol (base.Backend), and `create_backend`, which builds the one an
EngineChoice names for a ResolvedModel.

Engine modules are imported inside `create_backend`, so importing effnet never needs onnxruntime or
openvino (`engines.resolve_engine` has already said which extra a missing one needs).
"""
from __future__ import annotations

import os
from pathlib import Path

from ..cache_layout import CacheLayout
from ..engines import EngineChoice
from ..resolved import ResolvedModel
from .base import Backend, PipelinedBackend, StreamingBackend, WarmableBackend, predictions

DEFAULT_CUDA_BATCH_SIZES = (8, 64)  # what a compiled GPU engine records when not told: one photo, a full batch


def create_backend(resolved: ResolvedModel, engine: EngineChoice, *,
                   cache_root: str | os.PathLike[str] | None = None) -> Backend:
    """The engine `engine` names, running `resolved`.

    ONNX and IR files are exported on first use and cached under `cache_root` (default: effnet's cache),
    keyed by model, weights sha256, precision, batch and effnet version; OpenVINO also caches its compiled
    blob there, and a compiled torch engine its compiled code. `engine.options.model_batch` is the exported
    model's batch ("auto": 1 for OpenVINO, which spreads a call's images over its infer requests, any for
    ONNX Runtime).
    """
    layout = CacheLayout(Path(cache_root)) if cache_root is not None else CacheLayout.default()
    options = engine.options
    if engine.backend == "torch":
        from .torch_backend import TorchBackend
        from .torch_compile import cache_key

        sizes = options.batch_sizes or DEFAULT_CUDA_BATCH_SIZES
        key = cache_key(resolved, engine, sizes) if engine.compiled else None
        cache = layout.compiled / key if key else None
        return TorchBackend(resolved.create_model(), resolved.preprocess, device=engine.device,
                            precision=engine.precision, compile=engine.compiled, batch_sizes=sizes,
                            compile_cache=cache, threads=options.threads)
    model_batch = options.model_batch
    if engine.backend == "onnxruntime":
        from ..export.cache import cached_onnx
        from .onnxruntime_backend import OnnxRuntimeBackend

        path = cached_onnx(resolved, batch=None if model_batch == "auto" else model_batch, layout=layout)
        return OnnxRuntimeBackend(path, resolved.preprocess, threads=options.threads)
    from .openvino_backend import OpenVINOBackend
    from .openvino_graph import engine_ir

    xml = engine_ir(resolved, engine, batch=1 if model_batch == "auto" else model_batch, layout=layout)
    # Random weights make a throwaway model: keep its compiled blob out of the cache.
    blobs = layout.openvino if not resolved.random_weights else None
    return OpenVINOBackend(xml, precision=engine.precision, hint=options.hint, cache_dir=blobs,
                           streams=options.streams, threads=options.threads, pin_threads=options.pin_threads)


__all__ = ["Backend", "PipelinedBackend", "StreamingBackend", "WarmableBackend", "create_backend", "predictions"]
