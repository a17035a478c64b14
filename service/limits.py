"""Bounds every request has before a route sees it: a body of at most BODY_MAX bytes (uploads, which stream to disk
under TTM_MAX_UPLOAD_BYTES, excepted), and no NUL character in the path (PostgreSQL cannot store one,
and no id, cursor or name of ours holds one)."""
from __future__ import annotations

import json
from urllib.parse import unquote_to_bytes

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import error_body

BODY_MAX = 1024 * 1024  # a job spec is a few kB
UPLOAD_PREFIXES = ("/v1/artifacts", "/v1/datasets")  # streamed uploads: their routes hold them to their own limits


class BodyTooLarge(HTTPException):
    """Raised from the body's receive: FastAPI passes an HTTPException from body reading on as it is, so the
    answer is this 413 in the API's error format (service/errors.py)."""

    def __init__(self, limit: int):
        super().__init__(413, f"a request body may hold {limit} bytes at most")
        self.field = "body"


async def _refuse(send: Send, status: int, code: str, message: str, field: str | None = None) -> None:
    body = json.dumps(error_body(code, message, field)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, limit: int = BODY_MAX):
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw_path = scope.get("raw_path") or scope["path"].encode()
        if b"\x00" in unquote_to_bytes(raw_path):  # (query parameters are each validated by their route)
            await _refuse(send, 400, "bad_request", "the URL's path holds a NUL character; no id or name does")
            return
        if scope["path"].startswith(UPLOAD_PREFIXES) and scope["method"] == "POST":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        too_large = f"a request body may hold {self.limit} bytes at most"
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await _refuse(send, 413, "payload_too_large", too_large, "body")
            return
        seen = 0
        started = False

        async def counted() -> Message:  # a chunked body has no length to check first
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except BodyTooLarge:
            if not started:
                await _refuse(send, 413, "payload_too_large", too_large, "body")
