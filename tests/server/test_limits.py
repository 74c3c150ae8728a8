"""Request-body cap (413, OpenAI envelope; refused before the body is read when Content-Length says
so, while streaming it otherwise) and a 10 MB prompt that does not stall the event loop."""

from __future__ import annotations

import json
import socket
import threading
import time
from urllib.parse import urlparse

import httpx
import pytest
from fake_engine import FakeAsyncLLM
from real_server import MODEL, expect_error
from server_fixture import start_server, wait_ready

from server.app import create_app
from server.limits import DEFAULT_MAX_REQUEST_BODY_BYTES

LIMIT = 4096


@pytest.fixture(scope="module")
def small():
    engine = FakeAsyncLLM()
    base_url, stop = start_server(create_app(engine, served_model_name="fake-v4", max_request_body_bytes=LIMIT))
    wait_ready(engine)
    yield base_url
    stop()


def _chat_body(size: int) -> bytes:
    msg = {"role": "user", "content": "hello " * (size // 6)}
    return json.dumps({"model": "fake-v4", "max_tokens": 2, "messages": [msg]}).encode()


def test_under_the_limit_is_served(small):
    r = httpx.post(small + "/v1/chat/completions", content=_chat_body(LIMIT // 4),
                   headers={"content-type": "application/json"}, timeout=10)
    assert r.status_code == 200, r.text


def test_content_length_over_the_limit_is_refused_before_the_body(small):
    url = urlparse(small)
    with socket.create_connection((url.hostname, url.port), timeout=10) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 1000000000\r\n\r\n")  # a gigabyte announced, not one byte sent
        reply = b""
        while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
            chunk = s.recv(65536)
            if not chunk:
                break
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), head
    err = json.loads(body)["error"]
    assert err["code"] == 413 and str(LIMIT) in err["message"]
    assert b"x-request-id" in head.lower()


def test_chunked_body_over_the_limit_is_refused_while_streaming(small):
    sent = []

    def chunks():
        for _ in range(64):  # 64 KiB offered, the server stops reading past 4 KiB
            sent.append(1)
            yield b" " * 1024

    r = httpx.post(small + "/v1/chat/completions", content=chunks(), headers={"content-type": "application/json"},
                   timeout=10)
    expect_error(r, 413)
    r = httpx.post(small + "/v1/completions", content=_chat_body(LIMIT * 2), timeout=10,
                   headers={"content-type": "application/json"})
    expect_error(r, 413)


def test_default_limit_admits_a_10mb_prompt():
    assert DEFAULT_MAX_REQUEST_BODY_BYTES > 10 * 1024 * 1024 + 1024


@pytest.mark.parametrize("route,size", [("/v1/chat/completions", 10_000_000), ("/v1/completions", 2_000_000)])
def test_health_answers_while_a_big_prompt_is_tokenized(real, route, size):
    """The body is decoded, the prompt rendered and tokenized off the event loop (GIL released):
    /health keeps answering; its slowest answer is a small fraction of the big request's time."""
    text = "lorem ipsum dolor sit amet " * (size // 27)
    body = {"model": MODEL, "max_tokens": 1}
    body.update({"messages": [{"role": "user", "content": text}]} if "chat" in route else {"prompt": text})
    result: dict = {}

    def big() -> None:
        t0 = time.monotonic()
        result["response"] = httpx.post(real.base_url + route, json=body, timeout=300)
        result["seconds"] = time.monotonic() - t0

    worker = threading.Thread(target=big)
    latencies = []
    with httpx.Client(base_url=real.base_url, timeout=60) as c:
        worker.start()
        while worker.is_alive():
            t0 = time.monotonic()
            assert c.get("/health").status_code == 200
            latencies.append(time.monotonic() - t0)
            time.sleep(0.02)
    worker.join()
    expect_error(result["response"], 400)  # millions of tokens: longer than the context
    assert "context length" in result["response"].json()["error"]["message"] or \
        "maximum" in result["response"].json()["error"]["message"]
    assert len(latencies) >= 5, (latencies, result["seconds"])
    assert max(latencies) < result["seconds"] / 5, (max(latencies), result["seconds"])
