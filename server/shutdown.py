"""Bounded shutdown (`--shutdown-timeout`).

On SIGTERM/SIGINT the server keeps listening but answers every new request 503 (OpenAI envelope;
/metrics still answers), lets the requests in flight finish for `timeout` seconds, then aborts the
rest in the engine: a stream ends with a final chunk (finish_reason "abort") and `[DONE]`, a
non-streaming request gets a 503 envelope. Only then is uvicorn told to exit, so it finds no open
response to cancel (no CancelledError traceback); the lifespan hook stops the engine and the
process exits 0 within about timeout + 1 s. A second signal exits at once.
"""

from __future__ import annotations

import asyncio
import logging
import time

import uvicorn
from fastapi.responses import JSONResponse

from server.errors import error_body

logger = logging.getLogger("v4serve.server")

DEFAULT_SHUTDOWN_TIMEOUT_S = 20.0
_FLUSH_S = 1.0  # after the abort: time for handlers to write their final chunk / envelope
_OPEN_DURING_DRAIN = ("/metrics",)
_NOT_COUNTED = ("/health", "/metrics", "/version")


class Drain:
    """Shutdown state shared by the app (admission, in-flight count) and the server (signals)."""

    def __init__(self, engine, timeout: float) -> None:
        self.engine, self.timeout = engine, timeout
        self.draining = False  # no new requests
        self.aborted = False  # what was still in flight has been aborted
        self.in_flight = 0  # HTTP requests being answered (health and metrics not counted)

    async def run(self) -> None:
        """Wait for the requests in flight (at most `timeout`), then abort what is left."""
        self.draining = True
        n = self.in_flight
        logger.info("shutting down: %d request(s) in flight, waiting up to %.1fs", n, self.timeout)
        deadline = time.monotonic() + self.timeout
        while self.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        if self.in_flight:
            logger.warning("shutdown timeout: aborting %d request(s) still in flight", self.in_flight)
            self.aborted = True
            abort_all = getattr(self.engine, "abort_all", None)
            if abort_all is not None:
                await abort_all()
            deadline = time.monotonic() + _FLUSH_S
            while self.in_flight and time.monotonic() < deadline:
                await asyncio.sleep(0.01)


class DrainMiddleware:
    """Counts requests in flight; while draining, answers new ones 503."""

    def __init__(self, app, drain: Drain) -> None:
        self.app, self.drain = app, drain

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        if self.drain.draining and not path.startswith(_OPEN_DURING_DRAIN):
            resp = JSONResponse(error_body(503, "the server is shutting down"), status_code=503,
                                headers={"Connection": "close"})
            await resp(scope, receive, send)
            return
        counted = not path.startswith(_NOT_COUNTED)
        self.drain.in_flight += counted
        try:
            await self.app(scope, receive, send)
        finally:
            self.drain.in_flight -= counted


class GracefulServer(uvicorn.Server):
    """uvicorn.Server whose first stop signal drains (`Drain.run`) before the normal exit."""

    def __init__(self, config: uvicorn.Config, drain: Drain) -> None:
        super().__init__(config)
        self.drain = drain
        self._drain_task: bool | None = None  # set by the first stop signal
        self._loop: asyncio.AbstractEventLoop | None = None

    def handle_exit(self, sig, frame) -> None:
        self._captured_signals.append(sig)
        if self._drain_task is not None or not self.started:  # second signal, or not serving yet
            self.should_exit = True
            self.force_exit = self._drain_task is not None
            return
        self._drain_task = True  # a signal handler runs between bytecodes: schedule, wake the loop
        self._loop.call_soon_threadsafe(lambda: self._loop.create_task(self._drain_then_exit()))

    async def serve(self, sockets=None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    async def _drain_then_exit(self) -> None:
        try:
            await self.drain.run()
        finally:
            self.should_exit = True
