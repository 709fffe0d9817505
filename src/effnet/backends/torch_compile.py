"""torch.compile for the torch backend, with what makes it usable from a command line:

- Inductor with freezing: weights become constants, so BatchNorm folds into the convolutions;
- on a GPU, CUDA graphs (`triton.cudagraphs`, what mode="reduce-overhead" sets): one launch per batch
  instead of hundreds of kernel launches; a graph replays one shape, hence a few fixed batch sizes
  (`dynamic=False`), each compiled and recorded the first time it is used (`warm` does it up front);
- the compiled products (Inductor's FX graph, AOTAutograd and Triton caches, as `torch.compiler`'s cache
  artifacts) kept in effnet's cache under a key of model, weights, precision, sizes, GPU and torch version,
  so that a later process skips code generation and autotuning;
- a machine where compiling fails (no C++ compiler, no Triton, an unsupported GPU) runs eager, with a notice.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
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


class CompiledNetwork:
    """`network` under torch.compile at fixed batch shapes: each shape is compiled, and on a GPU its CUDA graph
    recorded, the first time `ready(size)` is asked for it. Where compiling fails, `ready` says False from then
    on and the caller runs the eager network, which computes the same."""

    def __init__(self, network: nn.Module, device: torch.device, input_size: int, cache_file: Path | None,
                 context: Callable[[], contextlib.AbstractContextManager]) -> None:
        self.device = device
        self.input_size = input_size
        self.cache_file = cache_file
        self.context = context
        self.cuda = device.type == "cuda"
        self.cached = load_artifacts(cache_file)  # before the first compile, so that it finds them
        self.ready_sizes: set[int] = set()
        self.broken = False
        self.fn = torch.compile(network, dynamic=False, options={"freezing": True, "triton.cudagraphs": self.cuda})

    def ready(self, size: int) -> bool:
        """Whether batches of `size` run compiled, compiling (and recording) that size now if it is new."""
        if self.broken or size in self.ready_sizes:
            return not self.broken
        log.info("compiling the network for %s at batch size %d (%s)", self.device, size,
                 "reusing compiled code from the cache" if self.cached else
                 "B7: about a minute the first time; later runs reuse it" if self.cache_file is not None else
                 "B7: about a minute; random weights: not kept, every run compiles again")
        try:
            x = torch.zeros((size, self.input_size, self.input_size, 3), dtype=torch.uint8, device=self.device)
            with torch.inference_mode(), self.context():
                for _ in range(3 if self.cuda else 1):  # CUDA graph trees warm up, then record, then replay
                    self(x)
            if self.cuda:
                torch.cuda.synchronize(self.device)
        except Exception as exc:  # noqa: BLE001 - any compiler failure: the eager network computes the same
            log.warning("torch.compile does not work here (%s); running the network eager (slower)", _one_line(exc))
            self.broken = True
            torch._dynamo.reset()
            return False
        self.ready_sizes.add(size)
        if self.cache_file is not None:
            save_artifacts(self.cache_file)
        return True

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.cuda:
            torch.compiler.cudagraph_mark_step_begin()  # the previous replay's outputs are consumed
        return self.fn(x)


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
