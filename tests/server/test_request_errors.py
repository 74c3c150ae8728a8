"""Bodies that are not a JSON object get a 400 that says what is wrong (issue 14), the too-long
error names the route's prompt field, and every request that ends in an error is logged with its
request id and reason (server/request_log.py)."""

from __future__ import annotations

import logging
import time

import httpx
import pytest
from fake_engine import FakeAsyncLLM
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from fastapi.testclient import TestClient
from real_server import expect_error
from server_fixture import start_server, wait_ready

from server.app import create_app
from server.errors import APIError, sse_error
from server.request_log import ErrorLogMiddleware

USER = [{"role": "user", "content": "hi"}]
ROUTES = ("/v1/chat/completions", "/v1/completions", "/tokenize", "/detokenize")
DEEP = b"[" * 10_000 + b"]" * 10_000


@pytest.fixture(scope="module")
def http():
    engine = FakeAsyncLLM()
    base_url, stop = start_server(create_app(engine, served_model_name="fake-v4"))
    wait_ready(engine)
    with httpx.Client(base_url=base_url, timeout=30) as c:
        yield c
    stop()


def _post(http, path, body: bytes, content_type: str | None = "application/json", **headers):
    if content_type is not None:
        headers["Content-Type"] = content_type
    return http.post(path, content=body, headers=headers)


@pytest.mark.parametrize("path", ROUTES)
@pytest.mark.parametrize("body, content_type, says", [
    (b'{"messages": []}', "text/plain", "Unsupported Content-Type 'text/plain'"),
    (b'{"messages": []}', "application/x-www-form-urlencoded", "Unsupported Content-Type"),
    (b'{"messages": []}', None, "no Content-Type header"),
    (b"", "application/json", "The request body is empty; expected a JSON object"),
    (b"[]", "application/json", "must be a JSON object, got an array"),
    (b"null", "application/json", "must be a JSON object, got null"),
    (b"42", "application/json", "must be a JSON object, got a number"),
    (b'"hi"', "application/json", "must be a JSON object, got a string"),
    (b"true", "application/json", "must be a JSON object, got a boolean"),
    (DEEP, "application/json", "nested too deeply"),
    (b'{"prompt": "caf\xe9"}', "application/json", "not valid UTF-8: invalid continuation byte (byte 0xe9 at offset"),
    (b'{"prompt": "x",\n "n": }', "application/json", "Malformed JSON body: Expecting value at line 2, column 7"),
])
def test_body_problems_are_named(http, path, body, content_type, says):
    err = expect_error(_post(http, path, body, content_type), 400)
    assert says in err["message"], err
    assert err["param"] is None and err["type"] == "BadRequestError"


def test_json_with_parameters_in_content_type_is_accepted(http):
    r = _post(http, "/tokenize", b'{"prompt": "hi"}', "application/json; charset=utf-8")
    assert r.status_code == 200 and r.json()["count"] > 0


def test_field_errors_keep_their_param(http):
    err = expect_error(_post(http, "/v1/completions", b'{"prompt": "x", "temperature": 9}'), 400, "temperature")
    assert "temperature" in err["message"]


def test_too_long_names_the_prompt_field(http):
    r = http.post("/v1/completions", json={"prompt": "hello " * 3000})
    err = expect_error(r, 400, "prompt")
    assert "maximum context length" in err["message"]
    r = http.post("/v1/completions", json={"prompt": "hello " * 3000, "stream": True})
    expect_error(r, 400, "prompt")
    r = http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hello " * 3000}]})
    expect_error(r, 400, "messages")


def test_failed_requests_are_logged_with_id_and_reason(http, caplog):
    caplog.set_level(logging.INFO, logger="v4serve.requests")
    _post(http, "/v1/chat/completions", b"null", **{"X-Request-Id": "rid-null-body"})
    http.post("/v1/completions", json={"prompt": "x", "temperature": 9}, headers={"X-Request-Id": "rid-temp"})
    http.get("/v1/models/gpt-4", headers={"X-Request-Id": "rid-404"})
    http.post("/v1/completions", json={"prompt": "x", "max_tokens": 1})  # a success: not logged
    deadline = time.monotonic() + 5
    while len([r for r in caplog.records if r.name == "v4serve.requests"]) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    lines = [r.getMessage() for r in caplog.records if r.name == "v4serve.requests"]
    assert len(lines) == 3, lines
    by_id = {rid: next(ln for ln in lines if rid in ln) for rid in ("rid-null-body", "rid-temp", "rid-404")}
    assert "POST /v1/chat/completions -> 400 BadRequestError" in by_id["rid-null-body"]
    assert by_id["rid-null-body"].endswith("The request body must be a JSON object, got null")
    assert "-> 400 BadRequestError (param temperature)" in by_id["rid-temp"]
    assert "GET /v1/models/gpt-4 -> 404 NotFoundError (param model)" in by_id["rid-404"]


def _streaming_app() -> FastAPI:
    app = FastAPI()

    @app.get("/stream")
    async def stream():
        async def body():
            yield 'data: {"choices": []}\n\n'
            yield sse_error(APIError(503, "engine is not running"))
        return StreamingResponse(body(), media_type="text/event-stream")

    @app.get("/boom")
    async def boom():
        raise RuntimeError("bug")

    app.add_middleware(ErrorLogMiddleware)
    return app


def test_mid_stream_error_and_levels_are_logged(caplog):
    caplog.set_level(logging.DEBUG, logger="v4serve.requests")
    with TestClient(_streaming_app(), raise_server_exceptions=False) as c:
        assert c.get("/stream").status_code == 200
        assert c.get("/boom").status_code == 500
    recs = [r for r in caplog.records if r.name == "v4serve.requests"]
    assert len(recs) == 2, [r.getMessage() for r in recs]
    stream, boom = recs
    assert stream.levelno == logging.WARNING
    assert "GET /stream -> 503 ServiceUnavailableError (mid-stream): engine is not running" in stream.getMessage()
    assert boom.levelno == logging.WARNING and "GET /boom -> 500" in boom.getMessage()


def test_whole_object_errors_are_not_called_body_problems():
    from fastapi.exceptions import RequestValidationError

    from server.errors import body_problem

    exc = RequestValidationError([{"type": "value_error", "loc": ("body",), "msg": "Value error, n too big",
                                   "input": {"n": 9}}])
    assert body_problem(exc, "application/json") is None
    exc = RequestValidationError([{"type": "model_attributes_type", "loc": ("body",), "msg": "x", "input": b"{}"}])
    assert "Unsupported Content-Type 'text/plain'" in body_problem(exc, "text/plain")
