"""One error shape for every failure: {"error": {"code", "message", "field"?, "errors"?}}."""
from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.states import IllegalTransition
from ttm.spec import SpecError

_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
          409: "conflict", 413: "payload_too_large", 415: "unsupported_media_type", 422: "invalid",
          503: "unavailable"}


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, code: str | None = None, field: str | None = None,
                 errors: list[dict[str, str]] | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.field, self.errors, self.headers = status, message, field, errors, headers
        self.code = code or _CODES.get(status, "error")


def not_found(what: str, ident: str) -> ApiError:
    return ApiError(404, f"no {what} {ident}", code="not_found")


def error_body(code: str, message: str, field: str | None = None,
               errors: list[dict[str, str]] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "message": message}
    if field is not None:
        body["field"] = field
    if errors:
        body["errors"] = errors
    return {"error": body}


def spec_error(err: SpecError) -> ApiError:
    problems = [{"field": f, "message": m} for f, m in err.problems]
    first = problems[0] if problems else {"field": "", "message": str(err)}
    return ApiError(422, f"{first['field'] or 'spec'}: {first['message']}", code="invalid_spec",
                    field=first["field"] or None, errors=problems)


def _dotted(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = list(loc)
    if parts and parts[0] in ("query", "path", "header", "cookie"):
        parts = parts[1:2]  # the parameter's name (a repeated one's index means nothing to the caller)
    elif parts and parts[0] == "body":
        parts = parts[1:]
    return ".".join(str(p) for p in parts)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(error_body(exc.code, exc.message, exc.field, exc.errors), status_code=exc.status,
                            headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(error_body(_CODES.get(exc.status_code, "error"), str(exc.detail),
                                       getattr(exc, "field", None)),
                            status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return JSONResponse(error_body("invalid_json", "the body is not valid JSON"), status_code=400)
        problems = [{"field": _dotted(e.get("loc", ())) or "body", "message": str(e.get("msg", "invalid"))}
                    for e in errors]
        first = problems[0] if problems else {"field": "body", "message": "invalid request"}
        return JSONResponse(error_body("invalid", f"{first['field']}: {first['message']}", first["field"],
                                       problems), status_code=422)

    @app.exception_handler(SpecError)
    async def _spec_error(_: Request, exc: SpecError) -> JSONResponse:
        err = spec_error(exc)
        return JSONResponse(error_body(err.code, err.message, err.field, err.errors), status_code=422)

    @app.exception_handler(IllegalTransition)
    async def _illegal(_: Request, exc: IllegalTransition) -> JSONResponse:
        return JSONResponse(error_body("illegal_transition", str(exc)), status_code=409)
