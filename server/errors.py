"""OpenAI error envelope and the exception handlers that map every failure onto it.

Body shape (vLLM's): `{"error": {"message", "type", "param", "code"}}` where `type` is a class-like
name ("BadRequestError", "NotFoundError", ...) and `code` the HTTP status as an int. Anything a
client can send maps to a 4xx; only genuine server bugs become a logged 500.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from engine.errors import EmptyPromptError, EngineDeadError, InvalidParameter, QueueFullError, RequestTooLongError

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


def prompt_param(path: str | None) -> str:
    """The request field that holds the prompt on this route: `prompt` on the legacy completions
    route, `messages` elsewhere (chat)."""
    return "prompt" if path is not None and path.rstrip("/").endswith("/completions") \
        and not path.rstrip("/").endswith("/chat/completions") else "messages"


def to_api_error(exc: BaseException, path: str | None = None) -> APIError:
    """Classify any exception raised while serving a request (`path`: the route, when known)."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, (RequestTooLongError, EmptyPromptError)):
        return APIError(400, str(exc), param=prompt_param(path))
    if isinstance(exc, QueueFullError):
        return APIError(429, str(exc) or "server is overloaded: request queue is full, retry later",
                        headers={"Retry-After": str(RETRY_AFTER_S)})
    if isinstance(exc, EngineDeadError):
        return APIError(503, str(exc) or "engine is not running")
    if isinstance(exc, InvalidParameter):  # engine-side (admission); the request models name it themselves
        return APIError(400, str(exc), param=exc.param)
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


def _is_json_type(content_type: str | None) -> bool:
    """What FastAPI parses as JSON: application/json or application/*+json, any parameters."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


_JSON_KINDS = {list: "an array", type(None): "null", bool: "a boolean", int: "a number", float: "a number",
               str: "a string"}


def body_problem(exc: RequestValidationError, content_type: str | None) -> str | None:
    """The message for a body that is not a JSON object at all (wrong or missing Content-Type,
    empty body, a top-level array / null / scalar), or None when the problem is inside the object."""
    top = [e for e in exc.errors() if tuple(e.get("loc", ())) == ("body",)]
    if not top:
        return None
    err = top[0]
    if err.get("type") == "missing":
        return "The request body is empty; expected a JSON object (Content-Type: application/json)"
    got = err.get("input")
    if isinstance(got, dict):  # an object after all: a whole-model validation error, reported as such
        return None
    if isinstance(got, (bytes, bytearray)) or not _is_json_type(content_type):
        if not content_type:
            return ("The request has no Content-Type header; send the body as a JSON object with "
                    "'Content-Type: application/json'")
        return (f"Unsupported Content-Type {content_type!r}; send the body as a JSON object with "
                "'Content-Type: application/json'")
    kind = _JSON_KINDS.get(type(got), type(got).__name__)
    return f"The request body must be a JSON object, got {kind}"


def _position(doc: Any, pos: Any) -> str:
    """' at line L, column C (char N)' for a JSON decode error position, when known."""
    if not isinstance(pos, int):
        return ""
    if isinstance(doc, (bytes, bytearray)):
        doc = doc.decode("utf-8", "replace")
    if not isinstance(doc, str):
        return f" (char {pos})"
    line = doc.count("\n", 0, pos) + 1
    col = pos - (doc.rfind("\n", 0, pos) + 1) + 1
    return f" at line {line}, column {col} (char {pos})"


def parse_failure_message(cause: BaseException | None) -> str:
    """Why the body could not be decoded (FastAPI's 'There was an error parsing the body')."""
    if isinstance(cause, UnicodeDecodeError):
        bad = cause.object[cause.start:cause.start + 1]
        return (f"The request body is not valid UTF-8: {cause.reason} (byte 0x{bad.hex()} at offset "
                f"{cause.start}); JSON bodies must be UTF-8")
    if isinstance(cause, RecursionError):
        return ("Malformed JSON body: arrays/objects are nested too deeply (the parser stops at about "
                f"{sys.getrecursionlimit()} levels)")
    if cause is not None:
        return f"Could not read the request body: {type(cause).__name__}: {cause}"
    return "Could not read the request body"


def validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    for e in errors:
        if e.get("type") == "json_invalid":
            detail = (e.get("ctx") or {}).get("error", "invalid JSON")
            loc = tuple(e.get("loc", ()))
            where = _position(getattr(exc, "body", None), loc[1] if len(loc) > 1 else None)
            return f"Malformed JSON body: {detail}{where}", None
    msgs = []
    for e in errors[:5]:
        loc = _loc(tuple(e.get("loc", ())))
        msgs.append(f"{loc}: {e.get('msg')}" if loc else str(e.get("msg")))
    first = _loc(tuple(errors[0].get("loc", ()))) if errors else None
    return "Invalid request: " + "; ".join(msgs), (first or None)


def install_exception_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        problem = body_problem(exc, request.headers.get("content-type"))
        message, param = (problem, None) if problem else validation_message(exc)
        return error_response(APIError(400, message, param=param))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "error"
        if exc.status_code == 404 and message == "Not Found":
            message = f"route {request.method} {request.url.path} not found"
        if exc.status_code == 400 and message == "There was an error parsing the body":  # FastAPI's words
            message = parse_failure_message(exc.__cause__)
        err = APIError(exc.status_code, message, headers=getattr(exc, "headers", None))
        return error_response(err)

    @app.exception_handler(APIError)
    async def _api(_: Request, exc: APIError) -> JSONResponse:
        return error_response(exc)

    for cls in (RequestTooLongError, QueueFullError, EngineDeadError, ValueError, Exception):
        @app.exception_handler(cls)
        async def _other(request: Request, exc: Exception) -> JSONResponse:
            return error_response(to_api_error(exc, request.url.path))
