"""The HTTP side: the Open Inference Protocol's REST routes (plus Triton's config and statistics), the page,
the explain route, /metrics and /docs, as a Starlette app. A thin layer over ServedModel: reading bodies
under a limit, turning errors into JSON, watching for clients that leave.
"""
from __future__ import annotations

import asyncio
import gzip
import hmac
import zlib
from importlib import resources
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from .. import __version__
from . import metrics, openapi
from .codec import (
    HEADER_LENGTH,
    ProtocolError,
    TooLarge,
    decompress,
    http_response,
    parse_http_request,
)
from .model import INPUT, VERSION, ServedModel
from .scheduler import DeadlineExceeded, Draining, EngineFailed, Overloaded

EXTENSIONS = ["classification", "binary_tensor_data", "schedule_policy", "model_configuration", "statistics"]
OFFLOAD_BYTES = 256 << 10  # bodies larger than this are parsed off the event loop
OPEN = {"/v2/health/live", "/v2/health/ready", "/metrics", "/", "/favicon.ico"}  # no token needed


class ServerState:
    """What HTTP and gRPC share: the models, readiness, the limits, the token."""

    def __init__(self, models: list[ServedModel], *, max_request_bytes: int = 64 << 20,
                 token: str | None = None) -> None:
        self.models = {m.name: m for m in models}
        self.max_request_bytes = max_request_bytes
        self.token = token
        self.ready = False
        self.live = True

    def model(self, name: str, version: str | None = None) -> ServedModel:
        m = self.models.get(name)
        if m is None:
            raise ProtocolError(f"unknown model {name[:100]!r}; served: {', '.join(self.models)}", 404, "NOT_FOUND")
        if version not in (None, "", VERSION):
            raise ProtocolError(f"model {name!r} has no version {version[:20]!r} (only {VERSION})", 404, "NOT_FOUND")
        return m

    def authorized(self, header: str | None) -> bool:
        if self.token is None:
            return True
        if not header or not header.startswith("Bearer "):
            return False
        return hmac.compare_digest(header[7:].strip().encode(), self.token.encode())

    def server_metadata(self) -> dict[str, Any]:
        return {"name": "effnet", "version": __version__, "extensions": EXTENSIONS}


def error(message: str, status: int, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps({"error": message}), status, headers, media_type="application/json")


def ok(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status, media_type="application/json")


def failure(exc: BaseException) -> Response:
    """The one place that maps what went wrong to a status: every non-200 answer is JSON {"error"}."""
    if isinstance(exc, ProtocolError):
        return error(str(exc), exc.status)
    if isinstance(exc, Overloaded):
        return error(str(exc), 503, {"Retry-After": "1"})
    if isinstance(exc, Draining):
        return error(str(exc), 503, {"Retry-After": "5"})
    if isinstance(exc, DeadlineExceeded):
        return error(str(exc), 504)
    if isinstance(exc, EngineFailed):
        return error(str(exc), 500)
    return error(f"internal error: {type(exc).__name__}", 500)


async def read_body(request: Request, limit: int, inflate: bool = True) -> bytes:
    """The body, refused with 413 as soon as it passes `limit` bytes (before or after decompression);
    `inflate=False`: as sent (then `inflated` decompresses it)."""
    length = request.headers.get("content-length")
    if length is not None:
        if not length.strip().isdigit():
            raise ProtocolError(f"bad Content-Length {length[:40]!r}")
        if int(length) > limit:
            raise TooLarge(f"request body of {int(length)} bytes is over the {limit}-byte limit (--max-request-bytes)")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"request body is over the {limit}-byte limit (--max-request-bytes)")
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


async def until_disconnect(request: Request, flag: list[bool]) -> None:
    """After the body is read, the next ASGI message is http.disconnect when the client goes away."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            flag[0] = True
            return


def create_app(state: ServerState, *, cors_origins: list[str] | None = None) -> Starlette:
    """The Starlette app over `state` (the models must be started by the caller's event loop)."""

    async def live(request: Request) -> Response:
        return ok({"live": True})

    async def ready(request: Request) -> Response:
        if not state.ready:
            return error("not ready" if state.live else "shutting down", 503)
        return ok({"ready": True})

    async def server_metadata(request: Request) -> Response:
        return ok(state.server_metadata())

    def model_of(request: Request) -> ServedModel:
        p = request.path_params
        return state.model(p["model"], p.get("version"))

    async def model_metadata(request: Request) -> Response:
        return ok(model_of(request).metadata())

    async def model_ready(request: Request) -> Response:
        m = model_of(request)
        if not state.ready:
            return error(f"model {m.name!r} is not ready", 503)
        return ok({"name": m.name, "ready": True})

    async def model_config(request: Request) -> Response:
        return ok(model_of(request).config())

    async def model_stats(request: Request) -> Response:
        if "model" in request.path_params:
            return ok({"model_stats": [model_of(request).statistics()]})
        return ok({"model_stats": [m.statistics() for m in state.models.values()]})

    async def infer(request: Request) -> Response:
        m = model_of(request)
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
        except (ProtocolError, Overloaded, Draining) as exc:
            m.failed(exc)
            raise
        except ClientDisconnect:
            return Response(status_code=499)
        deadline = m.deadline(parsed.timeout_us())
        gone = [False]
        watcher = asyncio.create_task(until_disconnect(request, gone))
        work = asyncio.create_task(m.infer(parsed, deadline, lambda: gone[0]))
        try:
            await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if not work.done():  # the client left: drop its request (the batcher skips it)
                work.cancel()
                await asyncio.gather(work, return_exceptions=True)
                return Response(status_code=499)
            outputs = work.result()
        finally:
            watcher.cancel()
        payload, header_length = http_response(m.name, VERSION, parsed, outputs)
        payload, headers = compress(payload, request)
        if header_length is not None:
            headers[HEADER_LENGTH] = str(header_length)
            return Response(payload, 200, headers, media_type="application/octet-stream")
        return Response(payload, 200, headers, media_type="application/json")

    async def explain(request: Request) -> Response:
        """Grad-CAM of one image (the body, as posted by the page); query `target`: class index or label."""
        m = model_of(request)
        body = await read_body(request, state.max_request_bytes)
        if not body:
            raise ProtocolError(f"input {INPUT!r}: empty body; post the image file as it is")
        target = request.query_params.get("target")
        timeout = request.query_params.get("timeout")
        if timeout is not None and not timeout.isdigit():
            raise ProtocolError("query parameter 'timeout' must be an integer (microseconds)")
        result = await m.explain(body, target, m.deadline(int(timeout) if timeout else None))
        return ok(result)

    async def page(request: Request) -> Response:
        html = resources.files("effnet.serve").joinpath("page.html").read_text("utf-8")
        return HTMLResponse(html, headers={"Cache-Control": "no-store",
                                           "Content-Security-Policy": "default-src 'self' 'unsafe-inline' data: blob:"})

    async def metrics_route(request: Request) -> Response:
        return Response(metrics.render(state.models.values()), media_type=metrics.CONTENT_TYPE)

    async def openapi_json(request: Request) -> Response:
        return ok(openapi.document(list(state.models)))

    async def docs(request: Request) -> Response:
        return HTMLResponse(openapi.html(openapi.document(list(state.models))))

    async def favicon(request: Request) -> Response:
        return Response(status_code=204)

    routes = [
        Route("/", page, methods=["GET"]),
        Route("/favicon.ico", favicon, methods=["GET"]),
        Route("/v2/health/live", live, methods=["GET"]),
        Route("/v2/health/ready", ready, methods=["GET"]),
        Route("/v2", server_metadata, methods=["GET"]),
        Route("/v2/models/stats", model_stats, methods=["GET"]),
        Route("/metrics", metrics_route, methods=["GET"]),
        Route("/openapi.json", openapi_json, methods=["GET"]),
        Route("/docs", docs, methods=["GET"]),
    ]
    for base in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        routes += [
            Route(base, model_metadata, methods=["GET"]),
            Route(base + "/ready", model_ready, methods=["GET"]),
            Route(base + "/config", model_config, methods=["GET"]),
            Route(base + "/stats", model_stats, methods=["GET"]),
            Route(base + "/infer", infer, methods=["POST"]),
            Route(base + "/explain", explain, methods=["POST"]),
        ]

    async def http_error(request: Request, exc: HTTPException) -> Response:
        return error(str(exc.detail), exc.status_code, dict(exc.headers or {}))

    async def any_error(request: Request, exc: Exception) -> Response:
        return failure(exc)

    async def client_left(request: Request, exc: Exception) -> Response:
        return Response(status_code=499)  # nobody reads it: the client closed the connection mid-body

    handlers = {HTTPException: http_error, ClientDisconnect: client_left, ProtocolError: any_error,
                Overloaded: any_error, Draining: any_error,
                DeadlineExceeded: any_error, EngineFailed: any_error, Exception: any_error}
    middleware = [Middleware(GuardMiddleware, state=state)]
    if cors_origins:
        middleware.insert(0, Middleware(CORSMiddleware, allow_origins=cors_origins, allow_methods=["GET", "POST"],
                                        allow_headers=["Authorization", "Content-Type", "Content-Encoding",
                                                       HEADER_LENGTH],
                                        expose_headers=[HEADER_LENGTH, "Retry-After"], max_age=600))
    return Starlette(routes=routes, middleware=middleware, exception_handlers=handlers)


class GuardMiddleware:
    """Token check (every route but health, metrics and the static page) and a JSON 500 for anything that
    escapes, as a plain ASGI middleware (it must not buffer bodies)."""

    def __init__(self, app, state: ServerState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.state.token is not None and scope["path"] not in OPEN and scope["method"] != "OPTIONS":
            auth = None
            for key, value in scope["headers"]:
                if key == b"authorization":
                    auth = value.decode("latin-1")
            if not self.state.authorized(auth):
                response = error("missing or wrong token: send 'Authorization: Bearer <token>'", 401,
                                 {"WWW-Authenticate": "Bearer"})
                return await response(scope, receive, send)
        await self.app(scope, receive, send)
