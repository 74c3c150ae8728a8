"""OpenAI error envelope and the exception handlers that map every failure onto it.

Body shape (vLLM's): `{"error": {"message", "type", "param", "code"}}` where `type` is a class-like
name ("BadRequestError", "NotFoundError", ...) and `code` the HTTP status as an int. Anything a
client can send maps to a 4xx; only genuine server bugs become a logged 500.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from engine.errors import EngineDeadError, QueueFullError, RequestTooLongError

logger = logging.getLogger("v4serve.server")

RETRY_AFTER_S = 1
_TYPES = {400: "BadRequestError", 401: "AuthenticationError", 403: "PermissionDeniedError",
          404: "NotFoundError", 405: "MethodNotAllowedError", 413: "RequestTooLargeError",
          415: "UnsupportedMediaTypeError", 422: "UnprocessableEntityError", 429: "RateLimitError",
          500: "InternalServerError", 503: "ServiceUnavailableError"}


class APIError(Exception):
    """An error with a known HTTP status, raised anywhere in the server layer."""

    def __init__(self, status: int, message: str, *, param: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.headers = status, message, param, headers


class InvalidRequest(APIError, ValueError):
    """400: the request is well-formed JSON but asks for something invalid or unsupported."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(400, message, param=param)


def check_text(text: str, param: str | None) -> str:
    """400 for text that is not valid Unicode: JSON allows lone surrogates ("\\ud800"), which the
    tokenizer cannot encode (it would fail with a TypeError, i.e. a 500)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InvalidRequest(f"invalid text: {e.reason} (a lone UTF-16 surrogate such as "
                             f"{text[e.start]!r} at position {e.start})", param=param) from None
    return text


def error_body(status: int, message: str, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": _TYPES.get(status, "APIError"), "param": param, "code": status}}


def to_api_error(exc: BaseException) -> APIError:
    """Classify any exception raised while serving a request."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, RequestTooLongError):
        return APIError(400, str(exc), param="messages")
    if isinstance(exc, QueueFullError):
        return APIError(429, str(exc) or "server is overloaded: request queue is full, retry later",
                        headers={"Retry-After": str(RETRY_AFTER_S)})
    if isinstance(exc, EngineDeadError):
        return APIError(503, str(exc) or "engine is not running")
    if isinstance(exc, ValueError):
        return APIError(400, str(exc))
    logger.error("unexpected error while serving a request", exc_info=exc)
    return APIError(500, "internal server error")


def error_response(err: APIError) -> JSONResponse:
    return JSONResponse(error_body(err.status, err.message, err.param), status_code=err.status, headers=err.headers)


def sse_error(exc: BaseException) -> str:
    """A mid-stream failure as one SSE data line (the status line has already been sent)."""
    err = to_api_error(exc)
    return f"data: {json.dumps(error_body(err.status, err.message, err.param))}\n\n"


def _loc(loc: tuple[Any, ...]) -> str:
    parts = [p for p in loc if p != "body"]
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    for e in errors:
        if e.get("type") == "json_invalid":
            detail = (e.get("ctx") or {}).get("error", "invalid JSON")
            return f"Malformed JSON body: {detail}", None
    msgs = []
    for e in errors[:5]:
        loc = _loc(tuple(e.get("loc", ())))
        msgs.append(f"{loc}: {e.get('msg')}" if loc else str(e.get("msg")))
    first = _loc(tuple(errors[0].get("loc", ()))) if errors else None
    return "Invalid request: " + "; ".join(msgs), (first or None)


def install_exception_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = validation_message(exc)
        return error_response(APIError(400, message, param=param))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "error"
        if exc.status_code == 404 and message == "Not Found":
            message = f"route {request.method} {request.url.path} not found"
        err = APIError(exc.status_code, message, headers=getattr(exc, "headers", None))
        return error_response(err)

    @app.exception_handler(APIError)
    async def _api(_: Request, exc: APIError) -> JSONResponse:
        return error_response(exc)

    for cls in (RequestTooLongError, QueueFullError, EngineDeadError, ValueError, Exception):
        @app.exception_handler(cls)
        async def _other(_: Request, exc: Exception) -> JSONResponse:
            return error_response(to_api_error(exc))
