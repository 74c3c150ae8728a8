"""Large request bodies: the size cap (`--max-request-body-bytes`) and JSON decoding off the event loop.

A request whose `Content-Length` exceeds the cap is answered 413 (OpenAI error envelope) before any
of its body is read; a body without a length (chunked) or longer than it claimed is counted while
the application reads it and fails with the same 413 as soon as it passes the cap, so at most the
cap plus one chunk is ever buffered. Bodies above `_THREAD_JSON_BYTES` are decoded in a worker
thread (`OffLoopJSONRoute`), so a 10 MB prompt does not hold the event loop while it is parsed, and
the process heap is trimmed after such a request, so its memory goes back to the OS.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Callable

from fastapi import Request
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException

from engine.tokenizer import trim_heap
from server.errors import error_body

DEFAULT_MAX_REQUEST_BODY_BYTES = 16 << 20  # 16 MiB: a 1M-token prompt is ~4 MB of text
_THREAD_JSON_BYTES = 1 << 20
_TRIM_BYTES = 1 << 20


class _OffLoopJSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            self._json = await asyncio.to_thread(json.loads, body) if len(body) > _THREAD_JSON_BYTES \
                else json.loads(body)
        return self._json


class OffLoopJSONRoute(APIRoute):
    """FastAPI's custom-route hook: handlers see a Request whose large JSON body decodes in a thread
    (errors are the same `json.JSONDecodeError` FastAPI reports)."""

    def get_route_handler(self) -> Callable:
        handler = super().get_route_handler()

        async def route_handler(request: Request):
            return await handler(_OffLoopJSONRequest(request.scope, request.receive))
        return route_handler


class BodyTooLarge(HTTPException):
    """Raised from `receive` while the body streams in; FastAPI re-raises HTTPExceptions from body
    parsing, and the app's HTTPException handler renders the envelope."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, _message(limit))


def _message(limit: int) -> str:
    return f"request body too large: the limit is {limit} bytes (--max-request-body-bytes)"


class BodySizeLimitMiddleware:
    def __init__(self, app, max_bytes: int | None) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send) -> None:
        limit = self.max_bytes
        if scope["type"] != "http" or limit is None:
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > limit:
            await JSONResponse(error_body(413, _message(limit)), status_code=413,
                               headers={"Connection": "close"})(scope, receive, send)
            return
        seen = 0
        started = False

        async def counted_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        async def tracked_send(message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except BodyTooLarge as exc:  # read outside FastAPI's body parsing (no handler saw it)
            if started:
                raise
            await JSONResponse(error_body(413, exc.detail), status_code=413,
                               headers={"Connection": "close"})(scope, receive, send)
        finally:
            if seen >= _TRIM_BYTES:  # its copies (body, JSON, prompt) are gone: return the heap to the OS
                await asyncio.to_thread(trim_heap)
