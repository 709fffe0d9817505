"""HTTP connections under the app: uvicorn's h11 protocol with the limits a hostile client meets first.

Framing (RFC 9112 section 6.1): a request with both Content-Length and Transfer-Encoding is refused and its
connection closed, so nothing after its body can run as a second request (smuggling); a chunk larger than the
body limit is refused as soon as its size line arrives, not waited for.
Time: a request's head must arrive within `header_timeout` of the connection opening (or of the previous answer),
and a body may not stall for longer than that; idle keep-alive connections close after uvicorn's
`timeout_keep_alive`.
Count: at most `max_connections` at once, below the process's file limit, so that accept() does not fail (asyncio
then logs a traceback per attempt). At the cap a new connection takes the place of the one that has waited
longest without a request, so health checks and real clients get in while slow ones hold the rest; when every
connection has a request in progress, the new one is answered 503 and closed.
Every refusal is JSON {"error"} like every other non-200; the log gets at most a line a minute per kind.
"""
from __future__ import annotations

import asyncio
import http
import os
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass

import h11
import orjson
from uvicorn.protocols.http.h11_impl import H11Protocol

HEAD_LIMIT = 64 * 1024   # request line + headers (h11's incomplete-event bound)
SPARE_FILES = 64         # files the rest of the process may open (gRPC clients, weights, logs)


@dataclass(frozen=True)
class Limits:
    max_body: int                # the request size limit: no chunk may claim more
    header_timeout: float        # seconds for a request's head; also the longest pause inside a body
    max_connections: int         # open HTTP connections at once
    accept_batch: int            # connections asyncio accepts per wake-up (its `backlog`)

    @classmethod
    def for_process(cls, max_body: int, header_timeout: float, max_connections: int | None = None) -> Limits:
        """Limits under this process's file limit (RLIMIT_NOFILE): asyncio accepts up to `accept_batch`
        connections per wake-up before any protocol sees them, and about three wake-ups' worth can be open
        before the cap closes the excess, so that many files, the ones open now and SPARE_FILES stay free."""
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY:
            soft = 1 << 20
        batch = max(16, min(128, soft // 16))
        room = max(1, soft - open_files() - 3 * batch - SPARE_FILES)
        return cls(max_body, header_timeout, min(max_connections or room, room), batch)


def open_files() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:  # not Linux: assume a typical process
        return 64


def error_bytes(status: int, message: str, headers: str = "") -> bytes:
    """A whole JSON error response that closes its connection, written below h11 (whose state may not allow one)."""
    body = orjson.dumps({"error": message})
    try:
        reason = http.HTTPStatus(status).phrase
    except ValueError:
        reason = ""
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            f"connection: close\r\n{headers}\r\n").encode("latin-1") + body


class Notices:
    """At most one line per `every` seconds for each kind of refusal, saying how many there were meanwhile: a
    client can cause refusals as fast as it likes, the log grows by a line a minute."""

    def __init__(self, log: Callable[[str], None], every: float = 60.0) -> None:
        self.log = log
        self.every = every
        self._last: dict[str, float] = {}
        self._quiet: dict[str, int] = {}

    def __call__(self, kind: str, line: str) -> None:
        now = time.monotonic()
        if now - self._last.get(kind, -self.every) < self.every:
            self._quiet[kind] = self._quiet.get(kind, 0) + 1
            return
        quiet = self._quiet.pop(kind, 0)
        self._last[kind] = now
        self.log(line + (f" (and {quiet} more in the last {self.every:g} s)" if quiet else ""))


class FramingError(h11.RemoteProtocolError):
    """A request h11 parses but that must not be served (its status is error_status_hint)."""


class StrictConnection(h11.Connection):
    """h11's server connection with effnet's framing rules on top; a refused request goes to `refuse`, which
    answers and closes, and h11 then only ever reports NEED_DATA (so uvicorn neither serves it nor logs it)."""

    def __init__(self, max_incomplete: int, max_body: int, refuse: Callable[[h11.RemoteProtocolError], None]) -> None:
        super().__init__(h11.SERVER, max_incomplete_event_size=max_incomplete)
        self.max_body = max_body
        self.refuse = refuse
        self.refused = False

    def next_event(self):
        if self.refused:
            return h11.NEED_DATA
        try:
            event = super().next_event()
            if isinstance(event, h11.Request):
                names = {name for name, _ in event.headers}
                if b"transfer-encoding" in names and b"content-length" in names:
                    raise FramingError("a request with both Content-Length and Transfer-Encoding has no one "
                                       "meaning (RFC 9112 section 6.1); send one of them", error_status_hint=400)
            # h11 keeps what is left of the chunk it is reading here, and would wait for all of it.
            chunk = getattr(self._reader, "_bytes_in_chunk", 0)
            if isinstance(event, h11.Data) and event.chunk_start:
                chunk += len(event.data)
            if chunk > self.max_body:
                raise FramingError(f"a chunk of {chunk} bytes is over the server's {self.max_body}-byte limit",
                                   error_status_hint=413)
        except h11.RemoteProtocolError as exc:
            self.refused = True
            self.refuse(exc)
            return h11.NEED_DATA
        return event


def http_protocol(limits: Limits, log: Callable[[str], None]) -> type[H11Protocol]:
    """The protocol class for uvicorn's Config(http=...): one per server (the cap and the log are the server's)."""
    notices = Notices(log)
    waiting: dict[H11Protocol, None] = {}  # open connections with no request in progress, oldest first

    class GuardedH11Protocol(H11Protocol):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.conn = StrictConnection(self.config.h11_max_incomplete_event_size or HEAD_LIMIT, limits.max_body,
                                         self._refuse)
            self._phase: str | None = None       # "head" (waiting for one), "body" (reading one), None
            self._timer: asyncio.TimerHandle | None = None
            self._last_data = 0.0
            self._turned_away = False

        # ---- the cap ----
        def connection_made(self, transport) -> None:  # type: ignore[override]
            if len(self.connections) >= limits.max_connections:
                oldest = next(iter(waiting), None)
                if oldest is None:
                    notices("busy", f"effnet serve: {len(self.connections)} HTTP connections, each with a request "
                                    "in progress (the connection cap): new connections are answered 503")
                    self.transport, self._turned_away = transport, True
                    transport.write(error_bytes(503, "the server has as many connections as it can hold; retry "
                                                     "shortly", "retry-after: 1\r\n"))
                    transport.close()
                    return
                notices("cap", f"effnet serve: {len(self.connections)} HTTP connections (the connection cap): "
                               "closing those that waited longest without a request")
                oldest._leave()
                oldest.transport.close()
            super().connection_made(transport)
            self._last_data = self.loop.time()
            self._watch()

        def connection_lost(self, exc: Exception | None) -> None:
            self._leave()
            if not self._turned_away:
                super().connection_lost(exc)

        # ---- time ----
        def data_received(self, data: bytes) -> None:
            self._last_data = self.loop.time()
            super().data_received(data)

        def handle_events(self) -> None:
            super().handle_events()
            self._watch()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._watch()

        def _watch(self) -> None:
            """Start the timer of the phase the connection is in, when it has just entered it."""
            phase = None
            if not self.transport.is_closing():
                state = self.conn.their_state
                phase = "head" if state is h11.IDLE else "body" if state is h11.SEND_BODY else None
            if phase == self._phase:
                return
            self._leave()
            self._phase = phase
            if phase is not None:
                self._timer = self.loop.call_later(limits.header_timeout, self._expire)
            if phase == "head":
                waiting[self] = None

        def _leave(self) -> None:
            self._phase = None
            waiting.pop(self, None)
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _expire(self) -> None:
            self._timer = None
            if self.transport.is_closing():
                return
            if self._phase == "body":
                now = self.loop.time()
                if self.flow.read_paused:  # the app has not taken what came: the pause is ours, not the client's
                    self._last_data = now
                idle = now - self._last_data
                if idle < limits.header_timeout:
                    self._timer = self.loop.call_later(limits.header_timeout - idle, self._expire)
                    return
                message = f"the request's body stalled for {limits.header_timeout:g} s (the server's limit)"
            elif self.conn.trailing_data[0]:
                message = f"the request's head did not arrive within {limits.header_timeout:g} s (the server's limit)"
            else:
                message = ""  # an idle connection: closed without a word, as keep-alive ones are
            if message and not (self.cycle is not None and self.cycle.response_started):
                self.transport.write(error_bytes(408, message))
            self._leave()
            self.transport.close()

        # ---- framing ----
        def send_400_response(self, msg: str) -> None:  # uvicorn's answer to h11's errors, which _refuse gets first
            self.transport.write(error_bytes(400, f"bad HTTP request: {msg}"))
            self.transport.close()

        def _refuse(self, exc: h11.RemoteProtocolError) -> None:
            status = exc.error_status_hint
            message = str(exc) if isinstance(exc, FramingError) else f"bad HTTP request: {exc}"
            notices("http", f"effnet serve: refused an HTTP request ({status}): {message[:200]}")
            if not (self.cycle is not None and self.cycle.response_started):
                self.transport.write(error_bytes(status, message))
            self._leave()
            self.transport.close()

    return GuardedH11Protocol


def quiet_accept_errors(loop: asyncio.AbstractEventLoop, log: Callable[[str], None]) -> Callable[[], None]:
    """asyncio logs a traceback for every accept() that fails for lack of files, once per queued connection
    on each retry; turn those into one line a minute (the cap should keep them from happening at all). Returns
    the function that puts the loop's previous handler back."""
    notices = Notices(log)
    previous = loop.get_exception_handler()

    def handler(loop: asyncio.AbstractEventLoop, context: dict) -> None:
        if context.get("message") == "socket.accept() out of system resource":
            notices("accept", f"effnet serve: accepting a connection failed: {context.get('exception')}")
        elif previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)
    return lambda: loop.set_exception_handler(previous)
