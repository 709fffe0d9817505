"""PyTorch: the card's original model, eager on CPUs, and compiled with CUDA graphs on NVIDIA GPUs.

The engine takes the uint8 crops as they are and normalises them itself, on its device, through the
checker's lookup table (`preprocessing.normalize_table`: float64 arithmetic rounded once to float32), so the
network sees exactly the card's input on every device. On a GPU the weights are cast to the precision (bf16,
or fp16), activations are channels-last, cuDNN picks its algorithms by timing them, and `torch.compile`
(Inductor with freezing, which folds BatchNorm into the convolutions, and CUDA graphs) runs at a few fixed
batch sizes: a call is padded up to the next one (see `torch_compile.py`). Batches are pipelined: the next
batch is copied from pinned memory while the current one computes.
"""
from __future__ import annotations

import contextlib
import logging
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..engines import CPU, Device
from ..errors import EngineError
from ..model import EfficientNet
from ..preprocessing import PreprocessConfig, normalize_table

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class Network(nn.Module):
    """uint8 (N, S, S, 3) RGB crops -> logits: the checker's normalisation (a table lookup), channels-last
    NCHW in the compute dtype, then the network. One module, so that a compiler fuses the first two."""

    def __init__(self, model: EfficientNet, preprocess: PreprocessConfig, dtype: torch.dtype,
                 autocast: bool = False) -> None:
        super().__init__()
        self.model = model
        self.dtype = dtype
        self.autocast = autocast  # CPUs compute bf16 with fp32 weights (autocast); GPUs cast the weights
        table = torch.from_numpy(normalize_table(preprocess.mean, preprocess.std).reshape(-1).copy())
        self.register_buffer("table", table, persistent=False)
        self.register_buffer("offsets", torch.tensor([0, 256, 512], dtype=torch.int32), persistent=False)

    def normalize(self, crops: torch.Tensor) -> torch.Tensor:
        """(N, S, S, 3) uint8 -> (N, 3, S, S) float32, the checker's values, its memory channels-last."""
        x = self.table[crops.to(torch.int32) + self.offsets]
        return x.permute(0, 3, 1, 2)  # NCHW whose memory is channels-last: no copy

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        x = self.normalize(crops)
        if self.autocast:
            with torch.autocast(x.device.type, dtype=self.dtype):
                return self.model(x)
        return self.model(x.to(self.dtype))


class TorchBackend:
    name = "torch"

    def __init__(self, model: EfficientNet, preprocess: PreprocessConfig, *, device: Device = CPU,
                 precision: str = "fp32", compile: bool = False, batch_sizes: tuple[int, ...] = (),
                 compile_cache: Path | None = None, threads: int | None = None) -> None:
        """`compile`: torch.compile the network (CUDA graphs on a GPU) for each of `batch_sizes`, keeping
        Inductor's products in `compile_cache` (a file) so that a later process starts in seconds; a machine
        where compiling fails runs eager, with a notice. `threads`: CPU threads (torch.set_num_threads)."""
        if precision not in DTYPES or (precision == "fp16" and not device.is_cuda):
            raise EngineError(f"the torch backend runs fp32, bf16 on CPUs and fp16 too on GPUs, not "
                              f"precision={precision}", params=("precision",))
        if threads:
            torch.set_num_threads(threads)
        self.precision = precision
        self.device = str(device)
        self._device = torch.device(str(device))
        self._cuda = device.is_cuda
        dtype = DTYPES[precision]
        weights_dtype = dtype if self._cuda else torch.float32
        self.model = model.eval().to(device=self._device, dtype=weights_dtype, memory_format=torch.channels_last)
        self.network = Network(self.model, preprocess, dtype, autocast=not self._cuda and dtype != torch.float32)
        self.network.to(self._device)
        self.classes = self.model.classifier.out_features
        self.input_size = preprocess.input_size
        self.batch_sizes = tuple(sorted(set(batch_sizes))) if compile else ()
        self._compiled = None
        if compile:
            from .torch_compile import CompiledNetwork

            self._compiled = CompiledNetwork(self.network, self._device, self.input_size, compile_cache, self._context)

    @property
    def torch_module(self) -> nn.Module:
        return self.model

    @property
    def compiled(self) -> bool:
        """Whether batches run torch.compile'd code (False where compiling failed here)."""
        return self._compiled is not None and not self._compiled.broken

    def warm_up(self) -> None:
        """Compile (and record the CUDA graph of) every batch size now, not on its first batch: a server does
        this before it says it is ready."""
        if self._compiled is not None:
            for size in self.batch_sizes:
                self._compiled.ready(size)

    def settings(self) -> dict:
        out: dict[str, Any] = {"device": self.device, "compiled": self.compiled}
        if self._cuda:
            out["gpu"] = torch.cuda.get_device_name(self._device)
            if self.batch_sizes:
                out["batch_sizes"] = list(self.batch_sizes)
        else:
            out.update(threads=torch.get_num_threads(), streams=1)
        return out

    def predict(self, crops: Any) -> np.ndarray:
        (probs,) = self.predict_stream([crops])
        return probs

    def predict_stream(self, batches: Iterable[Any]) -> Iterator[np.ndarray]:
        """Each batch's probabilities, in order. On a GPU a batch is launched (copy, compute, copy back) and
        the previous one collected while it runs, so the host prepares the next batch while the GPU works."""
        pending: deque[tuple[torch.Tensor, torch.cuda.Event | None, int]] = deque()
        for crops in batches:
            pending.append(self._launch(crops))
            if len(pending) > 1 or not self._cuda:
                yield self._collect(pending.popleft())
        while pending:
            yield self._collect(pending.popleft())

    def _launch(self, crops: Any) -> tuple[torch.Tensor, torch.cuda.Event | None, int]:
        n = len(crops)
        if n == 0:
            return torch.zeros((0, self.classes)), None, 0
        with torch.inference_mode(), self._context():
            x = self._to_device(crops)
            probs = self._probabilities(x)
            if not self._cuda:
                return probs, None, n
            host = torch.empty(probs.shape, dtype=torch.float32, pin_memory=True)
            host.copy_(probs, non_blocking=True)
            done = torch.cuda.Event()
            done.record()
        return host, done, n

    @staticmethod
    def _collect(launched: tuple[torch.Tensor, torch.cuda.Event | None, int]) -> np.ndarray:
        probs, done, n = launched
        if done is not None:
            done.synchronize()
        return probs[:n].numpy().copy() if n else np.zeros((0, probs.shape[1]), np.float32)

    def _to_device(self, crops: Any) -> torch.Tensor:
        """uint8 (N, S, S, 3) on the engine's device: a GPU decoder's tensors as they are, host arrays through
        a pinned buffer (asynchronous copy)."""
        if isinstance(crops, torch.Tensor):
            return crops.to(self._device)
        host = torch.from_numpy(np.ascontiguousarray(crops, dtype=np.uint8))
        if not self._cuda:
            return host
        # PyTorch's pinned-memory cache does not hand a buffer out again until its copy has finished.
        staging = torch.empty(host.shape, dtype=torch.uint8, pin_memory=True)
        staging.copy_(host)
        return staging.to(self._device, non_blocking=True)

    def _probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax of the network over `x`, in batches of the compiled sizes; a GPU that runs out of memory
        has the batch split in halves, down to one image, before the error is given up."""
        if not self.batch_sizes:
            return self._checked(x)
        largest = self.batch_sizes[-1]
        parts = []
        for start in range(0, len(x), largest):
            part = x[start:start + largest]
            size = next(s for s in self.batch_sizes if s >= len(part))
            if size > len(part):  # CUDA graphs replay fixed shapes: pad with blank crops, drop their answers
                part = torch.cat([part, part.new_zeros((size - len(part), *part.shape[1:]))])
            parts.append(self._checked(part)[:min(largest, len(x) - start)])
        return torch.cat(parts)

    def _checked(self, x: torch.Tensor, run: nn.Module | None = None) -> torch.Tensor:
        """Softmax of `run` (default: the compiled network where this size compiles, else the eager one) over
        `x`; out of memory, the halves go to the eager network (any shape), halving again down to one image."""
        if run is None:
            run = self._compiled if self._compiled is not None and self._compiled.ready(len(x)) else self.network
        try:
            return run(x).float().softmax(-1)
        except torch.OutOfMemoryError:
            if len(x) == 1:
                free, total = torch.cuda.mem_get_info(self._device)
                raise EngineError(f"the GPU ({self.device}) ran out of memory on a single image ({free / 2**30:.1f} of "
                                  f"{total / 2**30:.1f} GiB free): another process is using it") from None
            torch.cuda.empty_cache()
            log.warning("the GPU ran out of memory on a batch of %d; splitting it", len(x))
            half = len(x) // 2
            return torch.cat([self._checked(x[:half], self.network), self._checked(x[half:], self.network)])

    def _context(self) -> contextlib.AbstractContextManager:
        """cuDNN times its algorithms (fixed shapes repeat); fp32 means fp32: TF32 off for this call only."""
        if not self._cuda:
            return contextlib.nullcontext()
        return _cuda_flags(tf32=self.precision != "fp32")


@contextlib.contextmanager
def _cuda_flags(tf32: bool) -> Iterator[None]:
    matmul = torch.backends.cuda.matmul
    previous = matmul.allow_tf32
    matmul.allow_tf32 = tf32
    try:
        with torch.backends.cudnn.flags(enabled=True, benchmark=True, deterministic=False, allow_tf32=tf32):
            yield
    finally:
        matmul.allow_tf32 = previous
