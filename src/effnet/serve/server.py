"""Run HTTP (uvicorn) and gRPC (grpc.aio) in one event loop over the same schedulers; drain on SIGTERM.

SIGTERM or SIGINT: readiness turns false at once, new inference is refused with 503 / UNAVAILABLE, what
was accepted is finished (up to `drain_timeout` seconds), then both servers stop and `serve` returns 0.
"""
from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field

from ..classifier import Classifier
from .http import create_app
from .model import ServedModel
from .scheduler import MainThreadExecutor
from .state import ServerState


@dataclass
class ServeOptions:
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int | None = 8001          # None: no gRPC
    max_batch_size: int = 8
    max_queue_delay_ms: float = 2.0
    max_queue_size: int = 64
    request_timeout_ms: float | None = None
    max_request_bytes: int = 64 << 20
    token: str | None = None
    cors_origins: list[str] = field(default_factory=list)
    drain_timeout: float = 30.0
    decode_workers: int = 2
    header_timeout: float = 10.0          # a request's head must arrive within this; a body may not stall longer
    keep_alive_timeout: float = 5.0       # idle keep-alive connections close after this
    max_connections: int | None = None    # None: as many as the file limit (RLIMIT_NOFILE) leaves room for


class Server:
    """An embeddable server: `await Server(classifiers, options).run()` (or `serve(...)` from sync code).

    Its life is four phases: `start` (schedulers, sockets, ready), `serve` (until stop()), `drain` (finish
    what was accepted, within drain_timeout) and `close` (servers, schedulers, signal handlers)."""

    def __init__(self, classifiers: Sequence[Classifier], options: ServeOptions,
                 log: Callable[[str], None] = lambda line: print(line, flush=True),
                 executor: Executor | None = None) -> None:
        """Each Classifier contributes its decoder, backend and labels. `executor`: where the backends run
        (default: one thread per model; `serve` uses the main thread)."""
        self.options = options
        self.log = log
        self.models = [ServedModel(c.resolved, c.decoder, c.backend, c.labels, max_batch_size=options.max_batch_size,
                                   max_queue_delay_ms=options.max_queue_delay_ms,
                                   max_queue_size=options.max_queue_size,
                                   request_timeout_ms=options.request_timeout_ms,
                                   decode_workers=options.decode_workers, executor=executor) for c in classifiers]
        self.state = ServerState(self.models, max_request_bytes=options.max_request_bytes, token=options.token)
        self.app = create_app(self.state, cors_origins=options.cors_origins)
        self.http_port: int | None = None
        self.grpc_port: int | None = None
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._http = None
        self._http_task: asyncio.Task | None = None
        self._grpc = None
        self._signals = False
        self._restore_errors: Callable[[], None] | None = None  # the loop's own exception handler, put back
        self.wakeup: socket.socket | None = None  # signal.set_wakeup_fd's other end (set by `serve`)

    async def run(self, install_signals: bool = True) -> int:
        """start, serve until stop() (SIGTERM/SIGINT when `install_signals`), drain, close; the exit status."""
        try:
            if not await self.start(install_signals):
                return 1
            await self.serve()
            await self.drain()
        finally:
            await self.close()
        self.log("effnet serve: stopped")
        return 0

    async def start(self, install_signals: bool = True) -> bool:
        """Schedulers up, both protocols listening, ready; False when the HTTP server could not start."""
        opts = self.options
        self._stop = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        if self.wakeup is not None:  # a signal, delivered while the engine holds the main thread, lands here at once
            self._loop.add_reader(self.wakeup.fileno(), self._on_wakeup)
        for m in self.models:
            await m.scheduler.start()
        sock = _listening_socket(opts.host, opts.http_port)
        self.http_port = sock.getsockname()[1]
        import uvicorn

        from .connections import HEAD_LIMIT, Limits, http_protocol, quiet_accept_errors

        limits = Limits.for_process(opts.max_request_bytes, opts.header_timeout, opts.max_connections)
        config = uvicorn.Config(self.app, log_level="warning", access_log=False, lifespan="off",
                                timeout_graceful_shutdown=max(1.0, opts.drain_timeout), server_header=False,
                                h11_max_incomplete_event_size=HEAD_LIMIT, http=http_protocol(limits, self.log),
                                timeout_keep_alive=opts.keep_alive_timeout, backlog=limits.accept_batch)
        self._http = _QuietServer(config)
        if opts.grpc_port is not None:
            from .grpc_service import create_server

            self._grpc, self.grpc_port = create_server(self.state, opts.host, opts.grpc_port, opts.max_request_bytes)
            await self._grpc.start()
        self._http_task = asyncio.create_task(self._http.serve(sockets=[sock]))
        while not self._http.started and not self._http_task.done():
            await asyncio.sleep(0.01)
        if self._http_task.done():
            await self._http_task
            return False
        # asyncio listened with its accept batch (limits.accept_batch) as the kernel's queue: make the queue
        # uvicorn's usual 2048 again, so bursts of clients wait in it instead of retrying their SYNs.
        sock.listen(2048)
        self._restore_errors = quiet_accept_errors(self._loop, self.log)
        if install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._loop.add_signal_handler(sig, self.stop)
            self._signals = True
        host = f"[{opts.host}]" if ":" in opts.host else opts.host
        for m in self.models:
            where = m.backend.device + (f", {gpu}" if (gpu := m.describe().get("gpu")) else "")
            self.log(f"effnet serve: {m.name} on {m.backend.name} ({m.backend.precision}, {where}), "
                     f"batches up to {m.max_batch_size}, queue {m.scheduler.max_queue_size}")
        self.log(f"effnet serve: HTTP on http://{host}:{self.http_port} (page at /, API at /docs)")
        if self.grpc_port is not None:
            self.log(f"effnet serve: gRPC on {host}:{self.grpc_port}")
        self.state.ready = True
        self.log("effnet serve: ready")
        return True

    async def serve(self) -> None:
        """Until stop() (a signal) or the HTTP server ends by itself."""
        assert self._stop is not None and self._http_task is not None
        stop_wait = asyncio.create_task(self._stop.wait())
        try:
            await asyncio.wait({stop_wait, self._http_task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop_wait.cancel()

    async def drain(self) -> None:
        """Readiness is already off (stop()); finish what was accepted, up to drain_timeout."""
        self.state.ready = False
        timeout = self.options.drain_timeout
        drained = all(await asyncio.gather(*(m.scheduler.drain(timeout) for m in self.models)))
        if not drained:
            self.log(f"effnet serve: drain timeout ({timeout:g} s) passed with requests unanswered")

    async def close(self) -> None:
        """Close the doors: HTTP, gRPC, the schedulers, the signal handlers."""
        self.state.ready = False
        if self._http is not None:
            self._http.should_exit = True
        if self._grpc is not None:
            await self._grpc.stop(grace=1.0)
        if self._http_task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._http_task
        for m in self.models:
            await m.close()
        if self._loop is not None:
            if self._signals:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    self._loop.remove_signal_handler(sig)
            if self.wakeup is not None:
                self._loop.remove_reader(self.wakeup.fileno())
        if self._restore_errors is not None:
            self._restore_errors()

    def _on_wakeup(self) -> None:
        try:
            data = self.wakeup.recv(64) if self.wakeup is not None else b""
        except (BlockingIOError, InterruptedError):
            return
        if any(b in (signal.SIGTERM, signal.SIGINT) for b in data):
            self.stop()

    def stop_threadsafe(self) -> None:
        """`stop` from another thread (a signal handler on the main thread)."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self.stop)

    def stop(self) -> None:
        """Begin the drain (what SIGTERM does): not ready from now on, no new work."""
        self.state.ready = False
        for m in self.models:
            m.scheduler.accepting = False
        if self._stop is not None:
            self._stop.set()


def _listening_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio turns Nagle off (TCP_NODELAY) only on sockets whose proto says TCP;
    # with proto 0 every response whose headers and body are written apart waits ~40 ms for an ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def _quiet_server_class():
    import uvicorn

    class QuietServer(uvicorn.Server):
        """uvicorn without its own signal handling: effnet's drain owns SIGTERM and exits 0."""

        @contextlib.contextmanager
        def capture_signals(self):
            yield

    return QuietServer


def _QuietServer(config):  # noqa: N802 - a class factory, so that importing this module needs no uvicorn
    return _quiet_server_class()(config)


def serve(classifiers: Sequence[Classifier], options: ServeOptions | None = None) -> int:
    """Serve until SIGTERM/SIGINT; returns the exit status (0 after a drain).

    The event loop (HTTP, gRPC, scheduling) runs in a thread; the engines run on this, the main, thread
    (see MainThreadExecutor: PyTorch computes markedly faster there). Call it from the main thread."""
    executor = MainThreadExecutor()
    server = Server(classifiers, options or ServeOptions(), executor=executor)
    outcome: dict[str, object] = {}

    def loop_thread() -> None:
        try:
            outcome["code"] = asyncio.run(server.run(install_signals=False))
        except BaseException as exc:  # noqa: BLE001 - reported on the main thread
            outcome["error"] = exc
        finally:
            executor.shutdown()

    thread = threading.Thread(target=loop_thread, name="effnet-serve-loop", daemon=True)
    handlers = {}
    # Python runs signal handlers on the main thread between bytecodes, which can be seconds away while an
    # engine call holds it; the C-level handler writes the signal number to the wakeup fd at once, and the
    # event loop's thread reads it there.
    reader, writer = socket.socketpair()
    reader.setblocking(False)
    writer.setblocking(False)
    previous_fd = None
    try:
        previous_fd = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        server.wakeup = reader
        for sig in (signal.SIGTERM, signal.SIGINT):
            handlers[sig] = signal.signal(sig, lambda signum, frame: server.stop_threadsafe())
    except ValueError:  # not the main thread: no signal handling (the embedding program stops the server)
        pass
    try:
        thread.start()
        executor.run()
        thread.join()
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        if previous_fd is not None:
            signal.set_wakeup_fd(previous_fd)
        reader.close()
        writer.close()
    error = outcome.get("error")
    if isinstance(error, OSError):
        print(f"effnet: error: {error}", file=sys.stderr)
        return 1
    if error is not None:
        raise error  # type: ignore[misc]
    return int(outcome.get("code", 1))  # type: ignore[arg-type]
