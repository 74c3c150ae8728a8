"""One log line for every request that ends in an error, with its request id and the reason.

`ErrorLogMiddleware` (pure ASGI, outside `RequestIdAuthMiddleware`, so it sees 401s and the JSON 500s
that middleware writes) watches the responses: a 4xx/5xx status, or an SSE stream that carries an
error event after its 200 status line. The reason is the OpenAI envelope's `error.message` (error
bodies are small JSON documents). 4xx are logged at INFO, 5xx at WARNING; `/health` answering 503
while the model loads is DEBUG (orchestrators poll it).

    request 3f2a... POST /v1/chat/completions -> 400 BadRequestError (param temperature): ...
"""

from __future__ import annotations

import json
import logging

logger = logging.getLogger("v4serve.requests")

_MAX_ERROR_BODY = 64 << 10  # bytes of an error body kept to read its message
_SSE_ERROR = b'data: {"error"'


def _reason(body: bytes) -> tuple[str, str | None, str]:
    """(message, param, type) of an OpenAI error envelope, or the raw text when it is not one."""
    try:
        err = json.loads(body.decode("utf-8", "replace"))["error"]
        return str(err.get("message")), err.get("param"), str(err.get("type") or "")
    except (ValueError, KeyError, TypeError, AttributeError):
        text = body.decode("utf-8", "replace").strip()
        return (text[:500] or "(no body)"), None, ""


def log_failure(request_id: str, method: str, path: str, status: int, body: bytes, streamed: bool = False) -> None:
    message, param, kind = _reason(body)
    level = logging.WARNING if status >= 500 else logging.INFO
    if path == "/health":
        level = logging.DEBUG
    where = " (mid-stream)" if streamed else ""
    extra = f" (param {param})" if param else ""
    logger.log(level, "request %s %s %s -> %d %s%s%s: %s", request_id or "-", method, path, status, kind, extra,
               where, message)


class ErrorLogMiddleware:
    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        seen = {"status": 0, "rid": "", "body": b"", "logged": False}

        async def _send(message) -> None:
            kind = message["type"]
            if kind == "http.response.start":
                seen["status"] = message["status"]
                for key, value in message.get("headers") or []:
                    if key.lower() == b"x-request-id":
                        seen["rid"] = value.decode("latin-1")
            elif kind == "http.response.body":
                chunk = message.get("body", b"")
                if seen["status"] >= 400:
                    if len(seen["body"]) < _MAX_ERROR_BODY:
                        seen["body"] += chunk[:_MAX_ERROR_BODY]
                    if not message.get("more_body", False):
                        self._log(scope, seen, seen["status"], seen["body"])
                elif chunk.startswith(_SSE_ERROR) and not seen["logged"]:
                    # the status line (200) is gone: the stream's error event is the answer
                    event = chunk[len(b"data: "):].split(b"\n\n", 1)[0]
                    err_status = 500
                    try:
                        err_status = int(json.loads(event)["error"]["code"])
                    except (ValueError, KeyError, TypeError):
                        pass
                    self._log(scope, seen, err_status, event, streamed=True)
            await send(message)

        try:
            await self.app(scope, receive, _send)
        except Exception as exc:  # no answer written here: the server's outermost handler sends a 500
            if not seen["status"]:
                self._log(scope, seen, 500, f"unhandled {type(exc).__name__}: {exc}".encode())
            raise

    @staticmethod
    def _log(scope, seen: dict, status: int, body: bytes, streamed: bool = False) -> None:
        if seen["logged"]:
            return
        seen["logged"] = True
        rid = seen["rid"] or (scope.get("state") or {}).get("request_id", "")
        log_failure(rid, scope.get("method", ""), scope.get("path", ""), status, body, streamed)
