"""One scheduler per model: a bounded queue, dynamic batching into the engine, deadlines, drain.

Requests arrive as uint8 crops (already decoded, in threads, by the caller). When the engine has room, the
batcher takes the oldest request, waits up to `max_queue_delay` for more until `max_batch_size` images (or
the room left) are gathered, drops what expired or was abandoned while waiting, and hands the batch to the
engine off the event loop, so health answers, new requests are admitted or refused, and deadlines fire on
time while batches run. A streaming engine (OpenVINO) has room whenever one of its infer requests is free,
so batches overlap and no stream waits for another's batch; other engines run one batch at a time.
A request's caller waits on its own future with its own deadline; an answer computed too late is dropped.
Stopping (a drain that ran out of time) answers every admitted request with the error given, and closing lets
the engine end what it runs before the scheduler returns: no engine thread outlives it.
"""
from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from ..backends.base import Backend, StreamingBackend, WarmableBackend
from .errors import DeadlineExceeded, Draining, EngineFailed, Overloaded, ServeError


@dataclass
class Stats:
    """Triton's statistics, in nanoseconds, shared by /v2/models/{m}/stats, gRPC and /metrics."""

    success_count: int = 0
    success_ns: int = 0
    fail: dict[str, int] = field(default_factory=lambda: {"REJECTED": 0, "CANCELED": 0, "BACKEND": 0, "OTHER": 0})
    fail_ns: int = 0
    queue_count: int = 0
    queue_ns: int = 0
    compute_input_ns: int = 0
    compute_infer_ns: int = 0
    compute_output_ns: int = 0
    inference_count: int = 0   # images answered (Triton: those of successful requests only)
    execution_count: int = 0   # engine calls (batches)
    last_inference_ms: int = 0
    batch_sizes: dict[int, list[int]] = field(default_factory=dict)  # size -> [count, infer ns]

    def failed(self, reason: str, ns: int) -> None:
        self.fail[reason] = self.fail.get(reason, 0) + 1
        self.fail_ns += ns


@dataclass(eq=False)
class Job:
    crops: np.ndarray
    deadline: float | None  # time.monotonic()
    future: asyncio.Future
    gone: Callable[[], bool]
    enqueued_ns: int = field(default_factory=time.perf_counter_ns)

    def abandoned(self, now: float) -> bool:
        return self.future.done() or self.gone() or (self.deadline is not None and now >= self.deadline)


class Scheduler:
    def __init__(self, backend: Backend, *, max_batch_size: int = 8, max_queue_delay_ms: float = 2.0,
                 max_queue_size: int = 64, executor: Executor | None = None) -> None:
        """`executor`: where the backend's calls run (default: a thread of its own); `serve` passes the
        process's main thread (MainThreadExecutor), where PyTorch's OpenMP runs about 2.5x faster than in
        other threads."""
        self.backend = backend
        self.max_batch_size = max(1, max_batch_size)
        self.max_queue_delay = max(0.0, max_queue_delay_ms) / 1000
        self.max_queue_size = max(1, max_queue_size)
        self.stats = Stats()
        self.pending = 0      # admitted, not yet answered (decoding, queued or in the engine)
        self.incoming = 0     # admitted and still decoding: the only requests worth holding a batch for
        self.in_flight = 0    # images handed to the engine and not yet answered
        self._streaming = isinstance(backend, StreamingBackend)
        self.queue: deque[Job] = deque()
        self.running: set[tuple[Job, ...]] = set()  # batches in the engine
        self.accepting = True
        self._stopped: ServeError | None = None  # set by stop(): what every unanswered request hears
        self._wake: asyncio.Event | None = None
        self._idle: asyncio.Event | None = None
        self._engine_idle: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._own_executor = executor is None
        self._executor = executor or ThreadPoolExecutor(1, thread_name_prefix="effnet-engine")

    # ---- lifecycle ----
    async def start(self) -> None:
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._engine_idle = asyncio.Event()
        self._engine_idle.set()
        self._task = asyncio.create_task(self._run(), name="effnet-batcher")

    async def idle(self) -> None:
        """Until every admitted request is answered."""
        assert self._idle is not None
        await self._idle.wait()

    def stop(self, error: ServeError) -> int:
        """Admit nothing more and answer every admitted request still waiting, queued or in the engine, with
        `error`; requests still being decoded get it when they reach the queue. Returns how many were waiting."""
        self.accepting = False
        self._stopped = error
        waiting = [*self.queue, *(j for batch in self.running for j in batch)]
        self.queue.clear()
        self._refuse(waiting)
        if self._wake is not None:
            self._wake.set()
        return len(waiting)

    def _refuse(self, jobs) -> None:
        assert self._stopped is not None
        for job in jobs:
            if not job.future.done():
                job.future.set_exception(type(self._stopped)(str(self._stopped)))

    async def warm_up(self) -> None:
        """Let the backend prepare what its first batch would (torch.compile, CUDA graphs), where it runs."""
        if isinstance(self.backend, WarmableBackend):
            await asyncio.get_running_loop().run_in_executor(self._executor, self.backend.warm_up)

    async def close(self) -> None:
        """Stop (if not already), then wait for the engine to end what it runs: a batch cannot be interrupted,
        and an engine's threads (OpenVINO's infer requests) must not outlive the server."""
        if self._stopped is None:
            self.stop(Draining("the server is shutting down"))
        if self._task is not None:
            await self._task
        if self._engine_idle is not None:
            await self._engine_idle.wait()
        if self._own_executor:
            self._executor.shutdown(wait=True, cancel_futures=True)

    # ---- admission ----
    def admit(self) -> None:
        """Reserve a queue place before the (costly) decode; raises Overloaded or Draining."""
        if not self.accepting:
            raise Draining(str(self._stopped or "the server is shutting down"))
        if self.pending >= self.max_queue_size:
            raise Overloaded(f"the queue is full ({self.max_queue_size} requests); retry shortly")
        self.pending += 1
        assert self._idle is not None
        self._idle.clear()

    def release(self) -> None:
        """Give back an admitted place (after the answer, or when the request ends without one)."""
        self.pending -= 1
        if self.pending <= 0:
            self.pending = 0
            assert self._idle is not None
            self._idle.set()

    async def run(self, crops: np.ndarray, deadline: float | None, gone: Callable[[], bool] = lambda: False
                  ) -> np.ndarray:
        """Probabilities for `crops` (N, S, S, 3) uint8, batched with other requests. The caller has
        admitted the request; the place is released here."""
        loop = asyncio.get_running_loop()
        job = Job(crops, deadline, loop.create_future(), gone)
        try:
            if self._stopped is not None:  # decoded after the server stopped
                raise type(self._stopped)(str(self._stopped))
            self.queue.append(job)
            assert self._wake is not None
            self._wake.set()
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                return await asyncio.wait_for(asyncio.shield(job.future), timeout)
            except asyncio.TimeoutError:
                raise DeadlineExceeded("the request's deadline passed before its answer") from None
        finally:
            if not job.future.done():
                job.future.cancel()  # the batcher skips it if still queued
            self.release()

    # ---- the batcher ----
    def _room(self) -> int:
        """Images the engine can start now: a streaming engine (OpenVINO's infer requests) takes the next
        batch as soon as one of its requests frees up; any other engine runs one batch at a time."""
        if self._streaming:
            return max(0, self.backend.capacity - self.in_flight)
        return self.max_batch_size if self.in_flight == 0 else 0

    async def _run(self) -> None:
        """Batches into the engine until stop(); returns once the engine call it awaits has ended (a streaming
        engine's batches may still run: close() waits for them)."""
        assert self._wake is not None and self._engine_idle is not None
        loop = asyncio.get_running_loop()
        while self._stopped is None:
            if not self.queue or not self._room():
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = await self._gather(min(self.max_batch_size, self._room()))
            if self._stopped is not None:  # stopped while the batch formed
                self._refuse(batch)
                break
            if not batch:
                continue
            crops = batch[0].crops if len(batch) == 1 else np.concatenate([j.crops for j in batch])
            now_ns = time.perf_counter_ns()
            for j in batch:
                self.stats.queue_count += 1
                self.stats.queue_ns += now_ns - j.enqueued_ns
            running = tuple(batch)
            self.running.add(running)
            self.in_flight += len(crops)
            self._engine_idle.clear()
            if self._streaming:
                def done(probs, error, batch=running, started=now_ns):  # an engine thread: hand over to the loop
                    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits (close() was skipped)
                        loop.call_soon_threadsafe(self._finish, batch, probs, error, started)
                try:
                    await loop.run_in_executor(self._executor, self.backend.submit, crops, done)
                except Exception as exc:  # noqa: BLE001 - the executor is gone (shutdown): `done` never comes
                    self._finish(running, None, exc, now_ns)
                continue
            try:
                probs = await loop.run_in_executor(self._executor, self.backend.predict, crops)
            except Exception as exc:  # noqa: BLE001 - reported to each caller, the server goes on
                self._finish(running, None, exc, now_ns)
            else:
                self._finish(running, probs, None, now_ns)

    def _finish(self, batch: tuple[Job, ...], probs: np.ndarray | None, error: BaseException | None,
                started_ns: int) -> None:
        images = sum(len(j.crops) for j in batch)
        self.running.discard(batch)
        self.in_flight -= images
        assert self._wake is not None and self._engine_idle is not None
        if self.in_flight == 0:
            self._engine_idle.set()
        self._wake.set()
        if error is not None:
            for j in batch:
                if not j.future.done():
                    j.future.set_exception(EngineFailed(f"the engine failed: {error}"))
            return
        probs = np.asarray(probs, dtype=np.float32)
        start, answered = 0, 0
        for j in batch:
            n = len(j.crops)
            if not j.future.done():  # not expired, cancelled or stopped meanwhile
                j.future.set_result(probs[start:start + n])
                answered += n
            start += n
        self._account(images, answered, time.perf_counter_ns() - started_ns)

    def _account(self, images: int, answered: int, infer_ns: int) -> None:
        """An engine call of `images` that ended well, `answered` of them for requests still waiting: Triton counts
        only those as inferences; the execution and its batch size count either way."""
        s = self.stats
        s.inference_count += answered
        s.execution_count += 1
        s.compute_infer_ns += infer_ns
        s.last_inference_ms = int(time.time() * 1000)
        entry = s.batch_sizes.setdefault(images, [0, 0])
        entry[0] += 1
        entry[1] += infer_ns

    async def _gather(self, limit: int) -> list[Job]:
        """The oldest live job, plus whatever arrives within max_queue_delay, up to `limit` images (a single
        job may hold more: it goes alone).

        The delay is only spent while other admitted requests are still being decoded; a lone request (one
        client at a time) goes to the engine at once. Under load, requests that arrive while the engine
        runs form the next batch by themselves."""
        batch: list[Job] = []
        images = 0
        first_at = None
        while True:
            now = time.monotonic()
            while self.queue:
                job = self.queue[0]
                if job.abandoned(now):  # expired, client gone, or already answered (cancelled)
                    self.queue.popleft()
                    if not job.future.done():
                        job.future.cancel()
                    continue
                if batch and images + len(job.crops) > limit:
                    return batch
                self.queue.popleft()
                batch.append(job)
                images += len(job.crops)
                if first_at is None:
                    first_at = now
                if images >= limit:
                    return batch
            if not batch or self.incoming == 0:
                return batch  # nothing else on its way: waiting would only add latency
            remaining = first_at + self.max_queue_delay - time.monotonic()
            if remaining <= 0:
                return batch
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), remaining)
            except asyncio.TimeoutError:
                pass


class MainThreadExecutor(Executor):
    """Runs submitted calls on the thread that calls `run()` (the process's main thread), one at a time.

    Measured here: Lite0 on the torch engine takes ~24 ms per image called from the main thread and ~65 ms
    from any other thread (PyTorch's OpenMP pool behaves differently off the initial thread), so `serve` runs
    the event loop in a thread and the engines here."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._closed = threading.Event()

    def submit(self, fn, /, *args, **kwargs) -> Future:
        future: Future = Future()
        if self._closed.is_set():
            future.set_exception(RuntimeError("the engine executor is shut down"))
            return future
        self._jobs.put((future, fn, args, kwargs))
        return future

    def run(self, while_alive: threading.Thread | None = None) -> None:
        """Serve calls until `shutdown`, or until `while_alive` (the thread that submits them) has ended, whether
        or not it called `shutdown`; returns to Python every 0.1 s so that signal handlers run."""
        while not self._closed.is_set() and (while_alive is None or while_alive.is_alive()):
            try:
                future, fn, args, kwargs = self._jobs.get(timeout=0.1)
            except queue.Empty:
                continue
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting coroutine
                future.set_exception(exc)
        self.shutdown(cancel_futures=True)  # nobody runs calls from now on, nor waits for those left

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No more calls; with `cancel_futures`, calls not yet started are cancelled (the one running ends)."""
        self._closed.set()
        if cancel_futures:
            self._cancel_queued()

    def _cancel_queued(self) -> None:
        while True:
            try:
                future, *_ = self._jobs.get_nowait()
            except queue.Empty:
                return
            future.cancel()
