"""With `TTM_AUTH=off` every request acts as the admin `local`, so the server must answer only the machine's own
user, never a web page that user happens to open. Four rules, checked on every request before any route runs:

1. the connection arrived on a loopback address (the server also refuses to listen elsewhere);
2. the Host header names the loopback: `localhost`, `127.0.0.1` or `[::1]`, any port. A page on evil.example whose
   name is re-pointed at 127.0.0.1 (DNS rebinding) sends `Host: evil.example` and is refused, so it cannot read
   the API as if it were the same origin;
3. a write (POST, PUT, PATCH, DELETE) that a browser marks as coming from another origin is refused: an `Origin`
   other than this server's own (`http://` + the Host header), or `Sec-Fetch-Site: cross-site`/`same-site` (a
   page on another local port is same-site). Browsers send Origin on every cross-origin write; curl and the ttm
   client send neither header and pass;
4. no state change from a content type that a browser may send cross-origin without asking first (a "simple
   request": `text/plain`, `application/x-www-form-urlencoded`, `multipart/form-data`): the first two are 415
   (no route takes them; JSON goes as `application/json`); multipart is taken only by the upload route, and only
   from a request without an Origin header or from this server's own origin (rule 3 has checked which).

A refusal is the API's JSON error (403 `forbidden`, 415 `unsupported_media_type`) naming what was refused. With
tokens the rules do not apply: a bearer token is never sent by a browser on its own, so no other page can use it.
"""
from __future__ import annotations

import ipaddress
import json
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from service.errors import ApiError, error_body

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "[::1]"})
WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
SIMPLE_TYPES = frozenset({"text/plain", "application/x-www-form-urlencoded", "multipart/form-data"})
MULTIPART_ROUTES = frozenset({"/v1/artifacts"})  # the upload: `curl -F file=@teacher.pt`


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


def _host_name(host: str) -> str:
    """`localhost:8000` → `localhost`, `[::1]:8000` → `[::1]`."""
    if host.startswith("["):
        return host[:host.find("]") + 1] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def is_loopback(host: str | None) -> bool:
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def is_loopback_peer(scope: Scope) -> bool:
    """The connection arrived on a loopback address (the server's side of it: where it was accepted)."""
    server = scope.get("server")
    if not server:
        return False
    return is_loopback(server[0])


def refusal(scope: Scope) -> ApiError | None:
    """Why this request may not act as the local admin, or None when it may (the rules in the module's doc)."""
    if not is_loopback_peer(scope):
        return ApiError(403, "auth is off on this server: it answers only on a loopback address", code="forbidden")
    host = (_header(scope, b"host") or "").strip()
    if _host_name(host.lower()) not in LOOPBACK_NAMES:
        return ApiError(403, f"auth is off on this server: it answers only to Host localhost, 127.0.0.1 or [::1], "
                             f"not {host!r}", code="forbidden", field="Host")
    if scope.get("method") not in WRITES:
        return None
    origin = _header(scope, b"origin")
    own = f"{scope.get('scheme', 'http')}://{host}".lower()
    if origin is not None and origin.strip().lower() != own:
        return ApiError(403, f"auth is off on this server: a write from another origin ({origin!r}) is refused; "
                             f"only {own} may write", code="forbidden", field="Origin")
    site = (_header(scope, b"sec-fetch-site") or "").strip().lower()
    if site in ("cross-site", "same-site"):
        return ApiError(403, f"auth is off on this server: a {site} write is refused", code="forbidden",
                        field="Origin")
    media = (_header(scope, b"content-type") or "").split(";", 1)[0].strip().lower()
    if media in SIMPLE_TYPES and not (media == "multipart/form-data" and scope.get("path") in MULTIPART_ROUTES):
        return ApiError(415, f"auth is off on this server: {media} may not change anything (a browser sends it "
                             "from any page); send application/json", field="Content-Type")
    return None


class LocalOnlyMiddleware:
    """Pure ASGI: refuses, before routing, what `refusal` refuses; HTTP and WebSocket alike."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            err = refusal(scope)
            if err is not None:
                await _refuse(scope, send, err)
                return
        await self.app(scope, receive, send)


async def _refuse(scope: Scope, send: Send, err: ApiError) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008})
        return
    body = json.dumps(error_body(err.code, err.message, err.field)).encode()
    headers: list[tuple[bytes, bytes]] = [(b"content-type", b"application/json"),
                                          (b"content-length", str(len(body)).encode())]
    start: dict[str, Any] = {"type": "http.response.start", "status": err.status, "headers": headers}
    await send(start)
    await send({"type": "http.response.body", "body": body})
