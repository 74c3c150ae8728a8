"""HTTP API against a fake engine, through a real uvicorn server and the official openai client."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest
from fake_engine import ANSWER, REASONING, FakeAsyncLLM
from server_fixture import start_server, wait_ready

from server.app import create_app
from tests.server.disconnect import post_then_disconnect
from tests.server.metric_names import VLLM_METRICS

TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "weather",
                                           "parameters": {"type": "object",
                                                          "properties": {"city": {"type": "string"}}}}}]
USER = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def served():
    engine = FakeAsyncLLM()
    base_url, stop = start_server(create_app(engine, served_model_name="fake-v4"))
    wait_ready(engine)
    yield engine, base_url
    stop()
    assert engine.shut_down


@pytest.fixture(scope="module")
def client(served):
    return openai.OpenAI(base_url=served[1] + "/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def http(served):
    with httpx.Client(base_url=served[1], timeout=10) as c:
        yield c


def test_chat_non_stream_thinking(client):
    r = client.chat.completions.create(model="fake-v4", messages=USER, max_tokens=60)
    assert r.id.startswith("chatcmpl-")
    msg = r.choices[0].message
    assert msg.content == ANSWER
    assert msg.model_extra["reasoning_content"] == REASONING == msg.model_extra["reasoning"]
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens_details.reasoning_tokens > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_chat_non_think_and_n(client):
    r = client.chat.completions.create(model="fake-v4", messages=USER, max_tokens=60, n=2,
                                       reasoning_effort="none")
    assert [c.index for c in r.choices] == [0, 1]
    assert all(c.message.content == ANSWER and c.message.model_extra["reasoning"] is None for c in r.choices)
    assert r.usage.completion_tokens_details.reasoning_tokens == 0


def test_chat_length_and_logprobs(client):
    r = client.chat.completions.create(model="fake-v4", messages=USER, max_tokens=3, logprobs=True,
                                       top_logprobs=2, extra_body={"thinking": {"type": "disabled"}})
    c = r.choices[0]
    assert c.finish_reason == "length" and r.usage.completion_tokens == 3
    assert len(c.logprobs.content) == 3 and len(c.logprobs.content[0].top_logprobs) == 2


def test_chat_stream(client):
    stream = client.chat.completions.create(model="fake-v4", messages=USER, max_tokens=60, stream=True,
                                            stream_options={"include_usage": True})
    reasoning, content, finish, usage, roles = "", "", None, None, 0
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for ch in chunk.choices:
            extra = ch.delta.model_extra or {}
            roles += ch.delta.role == "assistant"
            reasoning += extra.get("reasoning_content") or ""
            assert extra.get("reasoning_content") == extra.get("reasoning")
            content += ch.delta.content or ""
            finish = ch.finish_reason or finish
    assert (reasoning, content, finish, roles) == (REASONING, ANSWER, "stop", 1)
    assert usage.completion_tokens_details.reasoning_tokens > 0


def test_tool_calls(client):
    r = client.chat.completions.create(model="fake-v4", messages=USER, tools=TOOLS, max_tokens=100,
                                       reasoning_effort="none")
    c = r.choices[0]
    assert c.finish_reason == "tool_calls"
    assert c.message.tool_calls[0].function.name == "get_weather"
    assert json.loads(c.message.tool_calls[0].function.arguments) == {"city": "Paris"}
    stream = client.chat.completions.create(model="fake-v4", messages=USER, tools=TOOLS, max_tokens=100,
                                            stream=True)
    calls, finish = [], None
    for chunk in stream:
        for ch in chunk.choices:
            calls += ch.delta.tool_calls or []
            finish = ch.finish_reason or finish
    assert finish == "tool_calls" and calls[0].function.name == "get_weather"


def test_sse_framing_and_request_id(http):
    with http.stream("POST", "/v1/chat/completions", headers={"X-Request-Id": "abc-123"},
                     json={"messages": USER, "max_tokens": 5, "stream": True}) as r:
        assert r.status_code == 200 and r.headers["x-request-id"] == "abc-123"
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]" and all(line.startswith("data: ") for line in lines)
    assert http.get("/v1/models").headers["x-request-id"]


def test_completions(client):
    r = client.completions.create(model="fake-v4", prompt="The quick", max_tokens=4)
    assert r.id.startswith("cmpl-") and r.choices[0].text == "Hello world from the"
    assert r.usage.completion_tokens == 4
    r = client.completions.create(model="fake-v4", prompt=["a", "b"], max_tokens=2, n=2)
    assert sorted(c.index for c in r.choices) == [0, 1, 2, 3]
    r = client.completions.create(model="fake-v4", prompt=[5, 6, 7], max_tokens=2, echo=True, logprobs=1)
    lp = r.choices[0].logprobs
    assert lp.token_logprobs[0] is None and len(lp.tokens) == 5
    chunks = list(client.completions.create(model="fake-v4", prompt="x", max_tokens=3, stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "Hello world from"


def test_models_tokenize_detokenize_version(served, http):
    engine, _ = served
    models = http.get("/v1/models").json()
    assert models["data"][0]["id"] == "fake-v4"
    t = http.post("/tokenize", json={"prompt": "hello world"}).json()
    assert t["count"] == len(t["tokens"]) and t["max_model_len"] == engine.max_model_len
    assert http.post("/detokenize", json={"tokens": t["tokens"]}).json()["prompt"] == "hello world"
    t = http.post("/tokenize", json={"messages": USER, "reasoning_effort": "none"}).json()
    assert t["prompt"].endswith("<｜Assistant｜></think>") and t["count"] == len(t["tokens"])
    assert "version" in http.get("/version").json()


def test_metrics(http):
    http.post("/v1/completions", json={"prompt": "x", "max_tokens": 2})
    text = http.get("/metrics").text
    for name in VLLM_METRICS:
        assert f"\n{name}{{" in text, name
    assert 'model_name="fake-v4"' in text and 'handler="/v1/completions"' in text


def _err(r: httpx.Response, status: int, param: str | None = None) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == status and err["type"] and err["message"]
    if param is not None:
        assert err["param"] == param, err
    return err


@pytest.mark.parametrize("body,param", [
    ({"messages": USER, "temperature": 5}, "temperature"),
    ({"messages": []}, "messages"),
    ({}, "messages"),
    ({"messages": USER, "logit_bias": {"5": 500.0}}, "logit_bias"),
    ({"messages": USER, "logit_bias": {"five": 1.0}}, "logit_bias"),
    ({"messages": USER, "allowed_token_ids": []}, "allowed_token_ids"),
    ({"messages": USER, "bad_words": ["ok", "  "]}, "bad_words"),
    ({"messages": USER, "stop": ["a", ""]}, "stop"),
    ({"messages": USER, "min_tokens": 5000}, "min_tokens"),  # more than the context leaves (admission)
    ({"messages": USER, "functions": [{"name": "f"}]}, "functions"),
    ({"messages": USER, "response_format": {"type": "xml"}}, "response_format.type"),
    ({"messages": USER, "response_format": {"type": "json_schema"}}, "response_format"),
    ({"messages": USER, "guided_grammar": "root ::= x"}, "guided_grammar"),
    ({"messages": USER, "tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "tool_choice"),
    ({"messages": USER, "top_logprobs": 3}, "top_logprobs"),
    ({"messages": USER, "reasoning_effort": "ultra-mega"}, None),
    ({"messages": USER, "top_k": -5}, None),
    ({"messages": [{"role": "robot", "content": "x"}]}, None),
])
def test_chat_bad_requests(http, body, param):
    _err(http.post("/v1/chat/completions", json=body), 400, param)


def test_completion_bad_requests(http):
    _err(http.post("/v1/completions", json={"prompt": "x", "suffix": "y"}), 400, "suffix")
    _err(http.post("/v1/completions", json={"prompt": "x", "best_of": 3}), 400, "best_of")
    _err(http.post("/v1/completions", json={"prompt": [10**9]}), 400, "prompt")
    _err(http.post("/v1/completions", json={"prompt": []}), 400, "prompt")
    _err(http.post("/v1/completions", json={"prompt": [[1], []]}), 400, "prompt")  # empty: admission says so


def test_malformed_json_and_routes(http):
    r = http.post("/v1/chat/completions", content=b'{"messages": [', headers={"Content-Type": "application/json"})
    assert "Malformed JSON" in _err(r, 400)["message"]
    _err(http.post("/v1/chat/completions", content=b"[1, 2]", headers={"Content-Type": "application/json"}), 400)
    _err(http.get("/v1/nope"), 404)
    _err(http.post("/v1/chat/completions", json={"model": "gpt-4", "messages": USER}), 404, "model")


def test_too_long(http, served):
    engine, _ = served
    r = http.post("/v1/chat/completions", json={"messages": USER, "max_tokens": engine.max_model_len})
    assert "maximum context length" in _err(r, 400)["message"]
    r = http.post("/v1/completions", json={"prompt": "hello " * 3000, "max_tokens": None})
    assert "maximum context length" in _err(r, 400)["message"]


def test_queue_full_429(http, served):
    engine, _ = served
    engine.queue_full = True
    try:
        r = http.post("/v1/chat/completions", json={"messages": USER, "stream": True})
        _err(r, 429)
        assert r.headers["retry-after"]
    finally:
        engine.queue_full = False


def test_disconnect_aborts(served):
    engine, base_url = served
    engine.step_delay = 0.01
    try:
        with httpx.Client(base_url=base_url) as c:
            with c.stream("POST", "/v1/completions", json={"prompt": "x", "max_tokens": 200, "ignore_eos": True,
                                                           "stream": True}) as r:
                rid = json.loads(next(line for line in r.iter_lines() if line)[6:])["id"]
        _wait(lambda: f"{rid}-0" in engine.aborted)
        # a non-streaming request: the client goes away while the engine generates (2000 steps x 10 ms).
        # The set of earlier aborts is taken before the request: the server may see the disconnect (and
        # abort) before this thread runs again after the client closes.
        before = {a for a in engine.aborted if a.startswith("chatcmpl-")}
        post_then_disconnect(base_url, "/v1/chat/completions",
                             {"messages": USER, "max_tokens": 2000, "ignore_eos": True},
                             lambda: _wait(lambda: engine.stats().num_running > 0))
        _wait(lambda: any(a.startswith("chatcmpl-") and a not in before for a in engine.aborted), timeout=15.0)
    finally:
        engine.step_delay = 0.001


def _wait(cond, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def test_auth_and_health_gating():
    engine = FakeAsyncLLM(ready=False)
    base_url, stop = start_server(create_app(engine, served_model_name="fake-v4", api_key="sekret"))
    try:
        with httpx.Client(base_url=base_url, timeout=10) as c:
            _err(c.get("/health"), 503)
            engine.release.set()
            _wait(lambda: c.get("/health").status_code == 200)
            _err(c.get("/v1/models"), 401)
            _err(c.post("/tokenize", json={"prompt": "x"}), 401)
            _err(c.get("/v1/models", headers={"Authorization": "Bearer wrong"}), 401)
            assert c.get("/v1/models", headers={"Authorization": "Bearer sekret"}).status_code == 200
            assert c.get("/metrics").status_code == 200 and c.get("/version").status_code == 200
        ok = openai.OpenAI(base_url=base_url + "/v1", api_key="sekret", max_retries=0)
        assert ok.chat.completions.create(model="fake-v4", messages=USER, max_tokens=60).choices[0].message.content
    finally:
        stop()
