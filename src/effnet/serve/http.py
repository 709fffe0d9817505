"""The HTTP side: the Open Inference Protocol's REST routes (plus Triton's config and statistics), the page,
the explain route, /metrics and /docs, as a Starlette app: routes over the server's state (state.py). A thin
layer over ServedModel: reading bodies under a limit, turning errors into JSON, watching for clients that
leave.
"""
from __future__ import annotations

import asyncio
import gzip
import zlib
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any, TypeVar

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from ..contract import INPUT_NAME as INPUT
from . import metrics, openapi
from .codec import HEADER_LENGTH, decompress, http_response, parse_http_request
from .errors import Draining, ProtocolError, ServeError, TooLarge
from .model import VERSION, ServedModel
from .state import ServerState

T = TypeVar("T")
OFFLOAD_BYTES = 256 << 10  # bodies larger than this are parsed off the event loop
OPEN = {"/v2/health/live", "/v2/health/ready", "/metrics", "/", "/favicon.ico"}  # no token needed


def open_route(path: str) -> bool:
    """Health (model readiness included, as over gRPC), metrics and the page need no token."""
    return path in OPEN or (path.startswith("/v2/models/") and path.endswith("/ready"))


def error(message: str, status: int, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps({"error": message}), status, headers, media_type="application/json")


def ok(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status, media_type="application/json")


def failure(exc: BaseException) -> Response:
    """Every non-200 answer is JSON {"error"}; the status and Retry-After come from the error itself."""
    if isinstance(exc, ServeError):
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
        return error(str(exc), exc.http_status, headers)
    return error(f"internal error: {type(exc).__name__}", 500)


async def read_body(request: Request, limit: int, inflate: bool = True) -> bytes:
    """The body, refused with 413 as soon as it passes `limit` bytes (before or after decompression);
    `inflate=False`: as sent (then `inflated` decompresses it)."""
    length = request.headers.get("content-length")
    if length is not None:
        if not length.strip().isdigit():
            raise ProtocolError(f"bad Content-Length {length[:40]!r}")
        if int(length) > limit:
            raise TooLarge(f"request body of {int(length)} bytes is over the server's {limit}-byte limit")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"request body is over the server's {limit}-byte limit")
        chunks.append(chunk)
    body = b"".join(chunks)
    return await inflated(request, body, limit) if inflate else body


def compressed(request: Request) -> bool:
    encoding = request.headers.get("content-encoding")
    return bool(encoding) and encoding.strip().lower() != "identity"


async def inflated(request: Request, body: bytes, limit: int) -> bytes:
    if compressed(request):
        return await asyncio.to_thread(decompress, body, request.headers.get("content-encoding"), limit)
    return body


def compress(body: bytes, request: Request) -> tuple[bytes, dict[str, str]]:
    """Answer gzip or deflate when the client asked for it (tritonclient's response_compression_algorithm)."""
    accept = request.headers.get("accept-encoding", "").lower()
    if len(body) < 1024:
        return body, {}
    if "gzip" in accept:
        return gzip.compress(body, 1), {"Content-Encoding": "gzip"}
    if "deflate" in accept:
        return zlib.compress(body, 1), {"Content-Encoding": "deflate"}
    return body, {}


async def while_connected(request: Request, work: Callable[[Callable[[], bool]], Awaitable[T]]) -> T | None:
    """`work(gone)`'s result, watching the connection meanwhile; None, with `work` cancelled, when the client
    leaves first (`gone()` tells `work` so too, for what it hands on)."""
    gone = [False]
    watcher = asyncio.create_task(until_disconnect(request, gone))
    task = asyncio.create_task(work(lambda: gone[0]))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            return None
        return task.result()
    finally:
        watcher.cancel()


async def until_disconnect(request: Request, flag: list[bool]) -> None:
    """After the body is read, the next ASGI message is http.disconnect when the client goes away."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            flag[0] = True
            return


# ---- routes: each reads the server's state from the app -----------------------------------------

def _state(request: Request) -> ServerState:
    return request.app.state.effnet


def _model(request: Request) -> ServedModel:
    p = request.path_params
    return _state(request).model(p["model"], p.get("version"))


async def live(request: Request) -> Response:
    return ok({"live": True})


async def ready(request: Request) -> Response:
    state = _state(request)
    if not state.ready:
        return error("shutting down" if state.shutting_down else "not ready", 503)
    return ok({"ready": True})


async def server_metadata(request: Request) -> Response:
    return ok(_state(request).server_metadata())


async def model_metadata(request: Request) -> Response:
    return ok(_model(request).metadata())


async def model_ready(request: Request) -> Response:
    m, state = _model(request), _state(request)
    if not state.ready:
        return error(f"model {m.name!r} is not ready" + (": shutting down" if state.shutting_down else ""), 503)
    return ok({"name": m.name, "ready": True})


async def model_config(request: Request) -> Response:
    return ok(_model(request).config())


async def model_stats(request: Request) -> Response:
    if "model" in request.path_params:
        return ok({"model_stats": [_model(request).statistics()]})
    return ok({"model_stats": [m.statistics() for m in _state(request).models.values()]})


async def infer(request: Request) -> Response:
    state, m = _state(request), _model(request)
    try:
        body = await read_body(request, state.max_request_bytes, inflate=False)
        # Inflating and parsing a large or compressed body claims several times its size: it holds a queue
        # place meanwhile, so at most max-queue-size are parsed at once and the rest get 503 unparsed.
        place = m.scheduler if len(body) > OFFLOAD_BYTES or compressed(request) else None
        if place is not None:
            place.admit()
        try:
            body = await inflated(request, body, state.max_request_bytes)
            args = (body, request.headers.get(HEADER_LENGTH), state.max_request_bytes, INPUT)
            # Large bodies (JSON tensors) are parsed in a thread: the loop keeps answering and timing deadlines.
            parsed = (await asyncio.to_thread(parse_http_request, *args) if len(body) > OFFLOAD_BYTES
                      else parse_http_request(*args))
            del body, args
        finally:
            if place is not None:
                place.release()
    except ServeError as exc:
        m.failed(exc)
        raise
    except ClientDisconnect:
        return Response(status_code=499)
    deadline = m.deadline(parsed.timeout_us())
    outputs = await while_connected(request, lambda gone: m.infer(parsed, deadline, gone))
    if outputs is None:  # the client left: its request was dropped (the batcher skips it)
        return Response(status_code=499)
    payload, header_length = http_response(m.name, VERSION, parsed, outputs)
    payload, headers = compress(payload, request)
    if header_length is not None:
        headers[HEADER_LENGTH] = str(header_length)
        return Response(payload, 200, headers, media_type="application/octet-stream")
    return Response(payload, 200, headers, media_type="application/json")


async def explain(request: Request) -> Response:
    """Grad-CAM of one image (the body, as posted by the page); query `target`: class index or label,
    `timeout`: microseconds. A client that leaves ends its explanation (499, which nobody reads)."""
    state, m = _state(request), _model(request)
    body = await read_body(request, state.max_request_bytes)
    if not body:
        raise ProtocolError(f"input {INPUT!r}: empty body; post the image file as it is")
    timeout = request.query_params.get("timeout")
    # ASCII digits only ('²'.isdigit() is true too), and few enough that the deadline is a number, not a hang.
    if timeout is not None and not (timeout.isascii() and timeout.isdigit() and len(timeout) <= 18):
        raise ProtocolError("query parameter 'timeout' must be an integer of microseconds (at most 18 digits)")
    target = request.query_params.get("target")
    m.explain_target(target)  # a bad target is a 400 before anything is admitted
    deadline = m.deadline(int(timeout) if timeout else None)
    result = await while_connected(request, lambda gone: m.explain(body, target, deadline))
    if result is None:  # the client left: the explanation stops at its next step
        return Response(status_code=499)
    return ok(result)


async def page(request: Request) -> Response:
    html = resources.files("effnet.serve").joinpath("page.html").read_text("utf-8")
    return HTMLResponse(html, headers={"Cache-Control": "no-store",
                                       "Content-Security-Policy": "default-src 'self' 'unsafe-inline' data: blob:"})


async def metrics_route(request: Request) -> Response:
    return Response(metrics.render(_state(request).models.values()), media_type=metrics.CONTENT_TYPE)


async def openapi_json(request: Request) -> Response:
    return ok(openapi.document(list(_state(request).models)))


async def docs(request: Request) -> Response:
    return HTMLResponse(openapi.html(openapi.document(list(_state(request).models))))


async def favicon(request: Request) -> Response:
    return Response(status_code=204)


ROUTES = [
    Route("/", page, methods=["GET"]),
    Route("/favicon.ico", favicon, methods=["GET"]),
    Route("/v2/health/live", live, methods=["GET"]),
    Route("/v2/health/ready", ready, methods=["GET"]),
    Route("/v2", server_metadata, methods=["GET"]),
    Route("/v2/models/stats", model_stats, methods=["GET"]),
    Route("/metrics", metrics_route, methods=["GET"]),
    Route("/openapi.json", openapi_json, methods=["GET"]),
    Route("/docs", docs, methods=["GET"]),
    *(route for base in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}") for route in (
        Route(base, model_metadata, methods=["GET"]),
        Route(base + "/ready", model_ready, methods=["GET"]),
        Route(base + "/config", model_config, methods=["GET"]),
        Route(base + "/stats", model_stats, methods=["GET"]),
        Route(base + "/infer", infer, methods=["POST"]),
        Route(base + "/explain", explain, methods=["POST"]),
    )),
]


async def _http_error(request: Request, exc: HTTPException) -> Response:
    return error(str(exc.detail), exc.status_code, dict(exc.headers or {}))


async def _any_error(request: Request, exc: Exception) -> Response:
    return failure(exc)


async def _client_left(request: Request, exc: Exception) -> Response:
    return Response(status_code=499)  # nobody reads it: the client closed the connection mid-body


def create_app(state: ServerState, *, cors_origins: list[str] | None = None) -> Starlette:
    """The Starlette app: ROUTES over `state` (the models must be started by the caller's event loop)."""
    handlers = {HTTPException: _http_error, ClientDisconnect: _client_left, ServeError: _any_error,
                Exception: _any_error}
    middleware = [Middleware(GuardMiddleware, state=state)]
    if cors_origins:
        middleware.insert(0, Middleware(JSONCORSMiddleware, allow_origins=cors_origins, allow_methods=["GET", "POST"],
                                        allow_headers=["Authorization", "Content-Type", "Content-Encoding",
                                                       HEADER_LENGTH],
                                        expose_headers=[HEADER_LENGTH, "Retry-After"], max_age=600))
    app = Starlette(routes=ROUTES, middleware=middleware, exception_handlers=handlers)
    app.state.effnet = state
    return app


class JSONCORSMiddleware(CORSMiddleware):
    """Starlette's CORS, its refusals (a preflight from an origin, method or header not allowed) in JSON like
    every other non-200."""

    def preflight_response(self, request_headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code == 200:
            return response
        refused = bytes(response.body).decode().removeprefix("Disallowed CORS ")
        headers = {k: v for k, v in response.headers.items() if k not in ("content-type", "content-length")}
        return error(f"CORS preflight refused: {refused} not allowed", response.status_code, headers)


class GuardMiddleware:
    """Token check (every route but health, metrics and the static page), and a JSON 503 for a request that
    the server's shutdown cancels before it has an answer, as a plain ASGI middleware (it must not buffer
    bodies)."""

    def __init__(self, app, state: ServerState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.state.token is not None and not open_route(scope["path"]) and scope["method"] != "OPTIONS":
            auth = None
            for key, value in scope["headers"]:
                if key == b"authorization":
                    auth = value.decode("latin-1")
            if not self.state.authorized(auth):
                response = error("missing or wrong token: send 'Authorization: Bearer <token>'", 401,
                                 {"WWW-Authenticate": "Bearer"})
                return await response(scope, receive, send)
        started = False

        async def watched_send(message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watched_send)
        except asyncio.CancelledError:
            # uvicorn cancels what is still running CLOSE_GRACE after the drain: answered here (uvicorn's own
            # answer is a text/plain 500 and a traceback), and the task ends as it would have.
            if started or not self.state.shutting_down:
                raise
            await failure(Draining("the server is shutting down: this request had no answer when it "
                                   "closed"))(scope, receive, send)
