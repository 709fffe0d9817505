"""What can go wrong with a request, as one error type that carries every protocol's word for it: the HTTP
status, the gRPC status code, Triton's failure reason (for /metrics and statistics) and, where a retry
helps, the Retry-After seconds. HTTP, gRPC and the statistics read these fields; none of them maps errors
on its own."""
from __future__ import annotations


class ServeError(Exception):
    """A request that ends without an answer; subclasses set the fields."""

    http_status = 500
    grpc_code = "INTERNAL"  # a grpc.StatusCode name
    reason = "OTHER"  # Triton's nv_inference_request_failure reason: REJECTED, CANCELED, BACKEND, OTHER
    retry_after: int | None = None  # seconds, for HTTP's Retry-After


class ProtocolError(ServeError):
    """A request the protocol does not allow (a client's mistake)."""

    http_status, grpc_code = 400, "INVALID_ARGUMENT"


class NotFound(ProtocolError):
    """A model or version that is not served."""

    http_status, grpc_code = 404, "NOT_FOUND"


class UnsupportedEncoding(ProtocolError):
    """A Content-Encoding other than gzip or deflate."""

    http_status = 415


class TooLarge(ProtocolError):
    """A body, a decompressed body or a shape over the server's request size limit."""

    http_status, grpc_code = 413, "RESOURCE_EXHAUSTED"


class Overloaded(ServeError):
    """The queue is full."""

    http_status, grpc_code, reason, retry_after = 503, "UNAVAILABLE", "REJECTED", 1


class Draining(ServeError):
    """The server is shutting down and accepts no new work."""

    http_status, grpc_code, reason, retry_after = 503, "UNAVAILABLE", "REJECTED", 5


class DeadlineExceeded(ServeError):
    """The request's deadline passed before its answer."""

    http_status, grpc_code, reason = 504, "DEADLINE_EXCEEDED", "REJECTED"


class EngineFailed(ServeError):
    """The engine raised; the message says what."""

    http_status, grpc_code, reason = 500, "INTERNAL", "BACKEND"


def failure_reason(exc: BaseException) -> str:
    """Triton's reason for any exception that ended a request (a cancelled one included)."""
    import asyncio

    if isinstance(exc, ServeError):
        return exc.reason
    return "CANCELED" if isinstance(exc, asyncio.CancelledError) else "OTHER"
