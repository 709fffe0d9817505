"""Run HTTP (uvicorn) and gRPC (grpc.aio) in one event loop over the same schedulers; drain on SIGTERM.

SIGTERM or SIGINT: readiness turns false ("shutting down") at once, new inference is refused with 503 /
UNAVAILABLE, what was accepted is finished for up to `drain_timeout` seconds, and what is still unanswered then
gets 503 / UNAVAILABLE (Draining); both servers close, the engine ends the batch it runs, and `serve` returns 0.
A second SIGTERM or SIGINT ends the process at once (exit status 128 + the signal's number).
Status lines go to stderr: stdout is left for results.
"""
from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field

from ..classifier import Classifier
from ..errors import EffnetError
from .errors import Draining
from .http import create_app
from .model import ServedModel
from .scheduler import MainThreadExecutor
from .state import ServerState

# Once the drain has answered every request (or given up on them), what HTTP connections may still take to write
# their answers before they are closed; a request that still has none then is answered 503 by the app.
CLOSE_GRACE = 1.0


def status_line(line: str) -> None:
    """The server's default log: status lines on stderr (stdout carries results only)."""
    print(line, file=sys.stderr, flush=True)


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
                 log: Callable[[str], None] = status_line,
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
        self._hurry: asyncio.Event | None = None  # a second stop(): the drain ends now
        self._stop_asked = False  # stop_threadsafe() before the loop ran
        self._loop: asyncio.AbstractEventLoop | None = None
        self._http = None
        self._http_task: asyncio.Task | None = None
        self._grpc = None
        self._signals = False
        self._restore_errors: Callable[[], None] | None = None  # the loop's own exception handler, put back

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
        self._hurry = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        if self._stop_asked:  # stop_threadsafe() came before the loop ran
            self._begin_stop()
        for m in self.models:
            await m.scheduler.start()
        sock = _listening_socket(opts.host, opts.http_port, "HTTP", "http_port")
        self.http_port = sock.getsockname()[1]
        import uvicorn

        from .connections import HEAD_LIMIT, Limits, http_protocol, quiet_accept_errors

        limits = Limits.for_process(opts.max_request_bytes, opts.header_timeout, opts.max_connections)
        config = uvicorn.Config(self.app, log_level="warning", access_log=False, lifespan="off",
                                timeout_graceful_shutdown=CLOSE_GRACE, server_header=False,
                                h11_max_incomplete_event_size=HEAD_LIMIT, http=http_protocol(limits, self.log),
                                timeout_keep_alive=opts.keep_alive_timeout, backlog=limits.accept_batch)
        self._http = _QuietServer(config)
        if opts.grpc_port is not None:
            from .grpc_service import create_server

            try:
                if opts.grpc_port:  # a port in use, said as plainly as for HTTP (gRPC's own words are a log line)
                    _listening_socket(opts.host, opts.grpc_port, "gRPC", "grpc_port").close()
                self._grpc, self.grpc_port = create_server(self.state, opts.host, opts.grpc_port,
                                                           opts.max_request_bytes)
            except BaseException:
                sock.close()
                raise
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
        # Health answers (live, not ready) while the engines prepare what a first batch would: a compiled GPU
        # engine compiles and records its batch sizes here, not on the first requests.
        await asyncio.gather(*(m.scheduler.warm_up() for m in self.models))
        self.state.ready = not self.state.shutting_down
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
        """Readiness is already off (stop()); finish what was accepted, for up to drain_timeout (or until a
        second stop()); what is unanswered then is answered 503 (Draining) at once."""
        assert self._hurry is not None
        self._begin_stop()  # when the HTTP server ended by itself
        timeout = self.options.drain_timeout
        idle = asyncio.ensure_future(asyncio.gather(*(m.scheduler.idle() for m in self.models)))
        hurry = asyncio.ensure_future(self._hurry.wait())
        try:
            done, _ = await asyncio.wait({idle, hurry}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            idle.cancel()
            hurry.cancel()
            await asyncio.gather(idle, hurry, return_exceptions=True)
        if idle in done:
            return
        why = "a second stop" if hurry in done else f"the drain timeout ({timeout:g} s)"
        message = f"the server is shutting down: {why} passed before this request was answered"
        unanswered = sum(m.scheduler.stop(Draining(message)) for m in self.models)
        self.log(f"effnet serve: {why} passed with {_requests(unanswered)} unanswered: answered 503")

    async def close(self) -> None:
        """Close the doors (HTTP, gRPC), stop the schedulers (each waits for its engine to end what it runs),
        remove the signal handlers."""
        self.state.ready = False
        if self._http is not None:
            self._http.should_exit = True
        if self._grpc is not None:
            await self._grpc.stop(grace=CLOSE_GRACE)
        if self._http_task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._http_task
        for m in self.models:
            await m.close()
        if self._loop is not None and self._signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._loop.remove_signal_handler(sig)
        if self._restore_errors is not None:
            self._restore_errors()

    def stop_threadsafe(self) -> None:
        """Begin the drain from another thread (the signal watcher of `serve`), before the loop runs too."""
        self._stop_asked = True
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop has closed: the server is gone already
                loop.call_soon_threadsafe(self._begin_stop)

    def _begin_stop(self) -> None:
        if not self.state.shutting_down:
            self.stop()

    def stop(self) -> None:
        """Begin the drain (what SIGTERM does): not ready ("shutting down") from now on, no new work. A second
        call ends the drain at once."""
        if self.state.shutting_down:
            if self._hurry is not None:
                self._hurry.set()
            return
        self.state.shutting_down = True
        self.state.ready = False
        for m in self.models:
            m.scheduler.accepting = False
        if self._stop is not None:
            self._stop.set()


def _listening_socket(host: str, port: int, protocol: str, param: str) -> socket.socket:
    """A socket listening on host:port; EffnetError naming the port (and `param`, the option that set it) when
    it cannot."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio turns Nagle off (TCP_NODELAY) only on sockets whose proto says TCP;
    # with proto 0 every response whose headers and body are written apart waits ~40 ms for an ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(1024)
    except OSError as exc:
        sock.close()
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if exc.errno == errno.EADDRINUSE:
            raise EffnetError(f"cannot listen for {protocol} on {where}: port {port} is in use (another server?); "
                              f"stop what uses it or choose another {param}= (0: any free port)",
                              params=(param,)) from None
        raise EffnetError(f"cannot listen for {protocol} on {where}: {exc.strerror or exc}; check host=",
                          params=("host",)) from None
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
    """Serve until SIGTERM/SIGINT; returns the exit status (0 after a drain). A second SIGTERM or SIGINT ends
    the process at once.

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
            executor.shutdown(cancel_futures=True)

    thread = threading.Thread(target=loop_thread, name="effnet-serve-loop", daemon=True)
    with SignalWatch(server):
        thread.start()
        executor.run(while_alive=thread)  # returns when the loop thread ends, however it ends
        thread.join()
    error = outcome.get("error")
    if error is not None:
        raise error  # type: ignore[misc]
    return int(outcome.get("code", 1))  # type: ignore[arg-type]


class SignalWatch:
    """SIGTERM and SIGINT while `serve` runs: the first begins the drain, a second ends the process at once with
    128 + the signal's number (when the drain itself is stuck, or the user will not wait for it).

    Python runs signal handlers on the main thread between bytecodes, which can be seconds away while an engine
    call holds it: the C-level handler writes the signal's number to the wakeup fd at once, and a thread of its
    own reads it there (also once the event loop is gone)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, server: Server) -> None:
        self.server = server
        self.count = 0
        self._reader, self._writer = socket.socketpair()
        self._writer.setblocking(False)
        self._previous_fd: int | None = None
        self._handlers: dict[int, object] = {}
        self._thread = threading.Thread(target=self._watch, name="effnet-serve-signals", daemon=True)

    def __enter__(self) -> SignalWatch:
        try:
            self._previous_fd = signal.set_wakeup_fd(self._writer.fileno(), warn_on_full_buffer=False)
        except ValueError:  # not the main thread: no signal handling (the embedding program stops the server)
            return self
        for sig in self.SIGNALS:
            self._handlers[sig] = signal.signal(sig, _noted)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._handlers.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        if self._previous_fd is not None:
            signal.set_wakeup_fd(self._previous_fd)
        self._writer.close()  # the watcher reads the end of the stream and returns
        if self._thread.is_alive():
            self._thread.join(1)
        self._reader.close()

    def _watch(self) -> None:
        with contextlib.suppress(OSError):
            while data := self._reader.recv(64):
                for signum in data:
                    if signum in self.SIGNALS:
                        self.signalled(signum)

    def signalled(self, signum: int) -> None:
        self.count += 1
        if self.count == 1:
            self.server.stop_threadsafe()
            return
        unanswered = sum(m.scheduler.pending for m in self.server.models)
        self.server.log(f"effnet serve: a second {signal.Signals(signum).name}: exiting now with "
                        f"{_requests(unanswered)} unanswered")
        with contextlib.suppress(OSError, ValueError):
            sys.stdout.flush()
        os._exit(128 + signum)  # at once: no clean-up that could wait for the engine or the loop


def _requests(n: int) -> str:
    return f"{n} request" + ("" if n == 1 else "s")


def _noted(signum: int, frame: object) -> None:
    """Python's half of SIGTERM/SIGINT while serving: nothing (SignalWatch acts on the wakeup fd)."""
