"""Who may call what: bearer tokens in two scopes, checked before a request body is read.

* ``read``: every ``GET`` under ``/v1`` and ``/metrics``; the read token (the one KEDA's
  TriggerAuthentication sends) or the write token.
* ``write``: the ``PUT`` routes; the write token only. Their bodies are limited to
  :data:`MAX_BODY_BYTES`.

``/healthz``, ``/openapi.json`` and the documentation pages stay open (probes, first contact).

The check runs in the route (:class:`ReadRoute`, :class:`WriteRoute`), after routing (so an
unknown path is 404 and a wrong method 405) and before FastAPI reads and validates the body, so
an unauthenticated request learns nothing about what a valid body looks like.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute

from core.settings import Settings
from serving.schemas import ErrorMessage

AccessScope = Literal["read", "write"]
MAX_BODY_BYTES = 2 * 1024 * 1024  # a 10,080-step schedule with forecasts is about 1.3 MB
SECURITY_SCHEMES = {
    "readToken": {
        "type": "http",
        "scheme": "bearer",
        "description": "Read scope: FORESCALE_API_READ_TOKEN (or the write token)",
    },
    "writeToken": {
        "type": "http",
        "scheme": "bearer",
        "description": "Write scope: FORESCALE_API_TOKEN",
    },
}
_CHALLENGE = {"WWW-Authenticate": "Bearer"}


@dataclass(frozen=True)
class AccessTokens:
    """The two tokens of a running API, as bytes for constant-time comparison."""

    read: bytes
    write: bytes

    @classmethod
    def of(cls, settings: Settings) -> AccessTokens:
        """The tokens of the settings."""
        return cls(
            read=settings.api_read_token.get_secret_value().encode(),
            write=settings.api_token.get_secret_value().encode(),
        )


def authorize(request: Request, scope: AccessScope) -> None:
    """Refuse the request unless its bearer token grants ``scope``.

    Args:
        request: The request.
        scope: ``read`` or ``write``.

    Raises:
        HTTPException: 401 without a (valid) bearer token, 403 for the read token on a write
            route.
    """
    tokens: AccessTokens = request.app.state.tokens
    header = next(
        (value for name, value in request.scope["headers"] if name == b"authorization"), b""
    )
    scheme, _, credentials = header.partition(b" ")
    given = credentials.strip()
    if scheme.lower() != b"bearer" or not given:
        raise HTTPException(401, "missing bearer token", headers=_CHALLENGE)
    if secrets.compare_digest(given, tokens.write):
        return
    if secrets.compare_digest(given, tokens.read):
        if scope == "read":
            return
        raise HTTPException(
            403,
            "the read token cannot write: use the write token (FORESCALE_API_TOKEN)",
            headers={"WWW-Authenticate": 'Bearer error="insufficient_scope"'},
        )
    raise HTTPException(
        401, "invalid bearer token", headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}
    )


async def read_body(request: Request, limit: int = MAX_BODY_BYTES) -> None:
    """Read the request body up to ``limit`` bytes (FastAPI then parses the kept copy).

    Args:
        request: The request.
        limit: Most bytes accepted.

    Raises:
        HTTPException: 400 for a malformed ``Content-Length``, 413 past the limit (checked on the
            header first, then while the body streams in).
    """
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise HTTPException(400, f"malformed Content-Length {declared!r}")
        if int(declared) > limit:
            raise HTTPException(413, f"request body over {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"request body over {limit} bytes")
        chunks.append(chunk)
    request._body = b"".join(chunks)  # Starlette's cache of the body: request.body() returns it


class ScopedRoute(APIRoute):
    """A route that checks the bearer token's scope before anything else runs."""

    access_scope: ClassVar[AccessScope]

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        """The route's handler, behind the token check (and the body limit for writes)."""
        handler = super().get_route_handler()
        scope = self.access_scope

        async def guarded(request: Request) -> Response:
            authorize(request, scope)
            if scope == "write":
                await read_body(request)
            return await handler(request)

        return guarded


class ReadRoute(ScopedRoute):
    """A route of the read scope."""

    access_scope = "read"


class WriteRoute(ScopedRoute):
    """A route of the write scope (body limited to :data:`MAX_BODY_BYTES`)."""

    access_scope = "write"


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorMessage, "description": description}


READ_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: _error("Missing or invalid bearer token (read or write token)"),
}
WRITE_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _error("Malformed Content-Length"),
    401: _error("Missing or invalid bearer token"),
    403: _error("The read token cannot write"),
    413: _error(f"Body over {MAX_BODY_BYTES} bytes"),
}
UNKNOWN_SERVICE: dict[int | str, dict[str, Any]] = {404: _error("Unknown service or version")}
STORE_DOWN: dict[int | str, dict[str, Any]] = {503: _error("The schedule store is unavailable")}


def document_access(app: FastAPI) -> None:
    """Make ``/openapi.json`` name the bearer scheme each scoped route needs.

    Args:
        app: The app; its ``openapi`` method is replaced by one adding the security schemes.
    """

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
        )
        schema.setdefault("components", {})["securitySchemes"] = SECURITY_SCHEMES
        for route in app.routes:
            if not isinstance(route, ScopedRoute) or not route.include_in_schema:
                continue
            requirement: list[dict[str, list[str]]] = (
                [{"readToken": []}, {"writeToken": []}]
                if route.access_scope == "read"
                else [{"writeToken": []}]
            )
            operations = schema["paths"].get(route.path_format, {})
            for method in route.methods or ():
                if method.lower() in operations:
                    operations[method.lower()]["security"] = requirement
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
