"""torch.compile for the torch backend, with what makes it usable from a command line:

- Inductor with freezing: weights become constants, so BatchNorm folds into the convolutions;
- on a GPU, CUDA graphs (`triton.cudagraphs`, what mode="reduce-overhead" sets): one launch per batch
  instead of hundreds of kernel launches; a graph replays one shape, hence a few fixed batch sizes
  (`dynamic=False`), each compiled and recorded up front so no request pays for it;
- the compiled products (Inductor's FX graph, AOTAutograd and Triton caches, as `torch.compiler`'s cache
  artifacts) kept in effnet's cache under a key of model, weights, precision, sizes, GPU and torch version,
  so that a second process skips code generation and autotuning;
- a machine where compiling fails (no C++ compiler, no Triton, an unsupported GPU) runs eager, with a notice.
"""
from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import re
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from ..engines import EngineChoice
    from ..resolved import ResolvedModel

log = logging.getLogger(__name__)

REVISION = 1  # part of the cache key: bump it when what is compiled changes


def cache_key(resolved: ResolvedModel, engine: EngineChoice, batch_sizes: tuple[int, ...]) -> str | None:
    """The file name of one engine's compiled products: model, weights, precision, batch sizes, device (the
    GPU's model), torch and effnet versions; None for random weights (a throwaway network)."""
    from .. import __version__

    if resolved.random_weights:
        return None
    device = re.sub(r"[^A-Za-z0-9]+", "_", engine.device.name or engine.device.type).strip("_")
    return (f"{resolved.name}-{resolved.weights_id}-{engine.precision}-{device}-"
            f"b{'_'.join(map(str, batch_sizes))}-torch{torch.__version__}-v{__version__}-r{REVISION}.bin")


def compile_network(network: nn.Module, device: torch.device, batch_sizes: tuple[int, ...], input_size: int,
                    cache_file: Path | None, context: Callable[[], contextlib.AbstractContextManager]
                    ) -> tuple[Callable[[torch.Tensor], torch.Tensor], bool]:
    """(callable, compiled?): `network` compiled for each of `batch_sizes` and run once per size (CUDA graphs
    recorded), or `network` itself where compilation fails here."""
    cuda = device.type == "cuda"
    loaded = load_artifacts(cache_file)
    sizes = ", ".join(map(str, batch_sizes))
    log.info("compiling the network for %s at batch size%s %s (%s)", device, "s" if len(batch_sizes) > 1 else "",
             sizes, "reusing compiled code from the cache" if loaded else
             "B7: about a minute per size the first time; later runs reuse it" if cache_file is not None else
             "B7: about a minute per size; random weights: not kept, every run compiles again")
    options = {"freezing": True, "triton.cudagraphs": cuda}
    compiled = torch.compile(network, dynamic=False, options=options)
    try:
        with torch.inference_mode(), context():
            for size in batch_sizes:
                x = torch.zeros((size, input_size, input_size, 3), dtype=torch.uint8, device=device)
                for _ in range(3 if cuda else 1):  # CUDA graph trees warm up, then record, then replay
                    if cuda:
                        torch.compiler.cudagraph_mark_step_begin()
                    compiled(x)
            if cuda:
                torch.cuda.synchronize(device)
    except Exception as exc:  # noqa: BLE001 - any compiler failure: the eager network computes the same
        log.warning("torch.compile does not work here (%s); running the network eager (slower)", _one_line(exc))
        torch._dynamo.reset()
        return network, False
    if cache_file is not None and not loaded:
        save_artifacts(cache_file)
    return compiled, True


def load_artifacts(cache_file: Path | None) -> bool:
    """Hand a previous process's compiled products to torch before compiling; False when there are none."""
    if cache_file is None or not cache_file.is_file():
        return False
    try:
        return torch.compiler.load_cache_artifacts(cache_file.read_bytes()) is not None
    except Exception as exc:  # noqa: BLE001 - a damaged or foreign file only costs a compile
        log.warning("ignoring compiled code in %s (%s); compiling again", cache_file, _one_line(exc))
        return False


def save_artifacts(cache_file: Path) -> None:
    """This process's compiled products, written atomically; a cache that cannot be written is not an error."""
    saved = torch.compiler.save_cache_artifacts()
    if saved is None:
        return
    data, _ = saved
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{cache_file.name}.", dir=cache_file.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            os.replace(tmp, cache_file)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        log.warning("cannot keep the compiled code in %s (%s); the next run compiles again", cache_file,
                    exc.strerror or exc)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text[:200]}"
