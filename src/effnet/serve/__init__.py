"""`effnet serve`: the Open Inference Protocol (KServe v2) over HTTP and gRPC, with Triton's extensions, one
dynamic-batching scheduler per model, and a page for people. Needs the `serve` extra.

Embedding: `serve([Classifier("efficientnet_b7")], ServeOptions(http_port=0))`, or `await Server(...).run()`
inside a running event loop.
"""
from __future__ import annotations

import importlib

from ..errors import MissingEngineError

NEEDED = ("starlette", "uvicorn", "orjson", "grpc", "google.protobuf")


def check_installed() -> None:
    """Raise MissingEngineError naming the extra when a serving dependency is missing."""
    for module in NEEDED:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise MissingEngineError(f"{module} is not installed (needed by effnet serve); "
                                     "install it with: pip install 'effnet[serve]'") from exc


check_installed()

from .server import ServeOptions, Server, serve  # noqa: E402

__all__ = ["ServeOptions", "Server", "serve", "check_installed"]
