"""Run an ASGI app under a real uvicorn server on 127.0.0.1 in a background thread (tests).

    base_url, stop = start_server(app)
    ...
    stop()

The socket is bound before the thread starts (port 0 -> a free port), so there is no port race.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Callable

import uvicorn


def start_server(app, *, timeout: float = 10.0, log_level: str = "warning") -> tuple[str, Callable[[], None]]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level=log_level, lifespan="on", timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name=f"uvicorn-{port}")
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn test server did not start")
        time.sleep(0.01)

    def stop() -> None:
        server.should_exit = True
        thread.join(timeout)
        sock.close()

    return f"http://127.0.0.1:{port}", stop


def wait_ready(engine, timeout: float = 5.0) -> None:
    """Wait (at most `timeout` s) until the served engine reports is_ready (its loop has started)."""
    deadline = time.monotonic() + timeout
    while not engine.is_ready and time.monotonic() < deadline:
        time.sleep(0.01)
