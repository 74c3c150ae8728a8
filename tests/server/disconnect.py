"""A client that sends a request and goes away once the server is running it: disconnect tests that do
not depend on how fast the machine generates (no short client timeouts)."""

from __future__ import annotations

import json
import socket

import httpx


def post_then_disconnect(base_url: str, route: str, body: dict, running) -> None:
    """POST `body` to `route` on a raw connection, wait until `running()` is true (the server works on
    the request), then close the connection without reading the response."""
    url = httpx.URL(base_url)
    data = json.dumps(body).encode()
    head = (f"POST {route} HTTP/1.1\r\nHost: {url.host}:{url.port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n").encode()
    with socket.create_connection((url.host, url.port), timeout=30) as s:
        s.sendall(head + data)
        running()
