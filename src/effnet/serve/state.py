"""What HTTP and gRPC share: the served models, readiness, the request size limit and the token."""
from __future__ import annotations

import hmac
from typing import Any

from .. import __version__
from .errors import NotFound
from .model import VERSION, ServedModel

EXTENSIONS = ["classification", "binary_tensor_data", "schedule_policy", "model_configuration", "statistics"]


class ServerState:
    def __init__(self, models: list[ServedModel], *, max_request_bytes: int = 64 << 20,
                 token: str | None = None) -> None:
        self.models = {m.name: m for m in models}
        self.max_request_bytes = max_request_bytes
        self.token = token
        self.ready = False
        self.shutting_down = False  # from the first SIGTERM (Server.stop) on

    def model(self, name: str, version: str | None = None) -> ServedModel:
        m = self.models.get(name)
        if m is None:
            raise NotFound(f"unknown model {name[:100]!r}; served: {', '.join(self.models)}")
        if version not in (None, "", VERSION):
            raise NotFound(f"model {name!r} has no version {version[:20]!r} (only {VERSION})")
        return m

    def authorized(self, header: str | None) -> bool:
        """`Bearer <token>`, the scheme in any case (RFC 7235 section 2.1)."""
        if self.token is None:
            return True
        scheme, _, credentials = (header or "").strip().partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(credentials.strip().encode(), self.token.encode())

    def server_metadata(self) -> dict[str, Any]:
        return {"name": "effnet", "version": __version__, "extensions": EXTENSIONS}
