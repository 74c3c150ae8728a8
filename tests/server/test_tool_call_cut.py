"""A tool call cut by max_tokens, auto (scripted fake engine) or forced (real engine, the tool-call
grammar), streamed or not: no markup in content, the cut call never reported, finish_reason "length"."""

from __future__ import annotations

import json

import httpx
import pytest
from fake_engine import FakeAsyncLLM
from real_server import MODEL, TOOLS
from server_fixture import start_server, wait_ready

from server.app import create_app

_MARKUP = ("DSML", "tool_calls", "invoke", "parameter", "</", "<｜")


@pytest.fixture(scope="module")
def fake_http():
    engine = FakeAsyncLLM()
    base_url, stop = start_server(create_app(engine, served_model_name="fake-v4"))
    wait_ready(engine)
    with httpx.Client(base_url=base_url, timeout=30) as c:
        yield engine, c
    stop()


def _chat(http, body: dict, stream: bool) -> tuple[str, list[dict], str]:
    """(content, tool calls, finish_reason) of one choice, assembled from the stream if streaming."""
    if not stream:
        r = http.post("/v1/chat/completions", json=body)
        assert r.status_code == 200, r.text
        choice = r.json()["choices"][0]
        msg = choice["message"]
        calls = [{"name": t["function"]["name"], "arguments": t["function"]["arguments"]}
                 for t in msg.get("tool_calls") or []]
        return msg["content"] or "", calls, choice["finish_reason"]
    content, calls, finish = "", {}, None
    with http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
        assert r.status_code == 200
        lines = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    for line in lines[:-1]:
        chunk = json.loads(line[6:])
        assert "error" not in chunk, chunk
        for c in chunk["choices"]:
            content += c["delta"].get("content") or ""
            for t in c["delta"].get("tool_calls") or []:
                entry = calls.setdefault(t["index"], {"name": None, "arguments": ""})
                entry["name"] = entry["name"] or t["function"].get("name")
                entry["arguments"] += t["function"]["arguments"]
            finish = c["finish_reason"] or finish
    return content, [calls[k] for k in sorted(calls)], finish


@pytest.mark.parametrize("stream", [False, True])
def test_auto_tool_call_cut_by_max_tokens(fake_http, stream):
    engine, http = fake_http
    body = {"model": "fake-v4", "messages": [{"role": "user", "content": "weather?"}], "tools": TOOLS,
            "reasoning_effort": "none"}
    full_content, full_calls, finish = _chat(http, {**body, "max_tokens": 200}, stream)
    assert finish == "tool_calls" and full_calls and full_calls[0]["name"] == "get_weather"
    n_tokens = http.post("/v1/chat/completions", json={**body, "max_tokens": 200}).json()["usage"]["completion_tokens"]
    for max_tokens in range(1, n_tokens - 1):  # every cut before the EOS
        content, calls, finish = _chat(http, {**body, "max_tokens": max_tokens}, stream)
        assert finish == "length", (max_tokens, finish)
        assert not any(m in content for m in _MARKUP), (max_tokens, content)
        assert calls in ([], full_calls), (max_tokens, calls)  # only a complete call is reported
        for c in calls:
            json.loads(c["arguments"])


@pytest.mark.parametrize("stream", [False, True])
def test_forced_tool_call_cut_by_max_tokens(real, http, stream):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "weather?"}], "tools": TOOLS,
            "tool_choice": "required", "reasoning_effort": "none", "temperature": 0}
    for max_tokens in (1, 2, 3, 5, 8, 13):
        content, calls, finish = _chat(http, {**body, "max_tokens": max_tokens}, stream)
        assert finish == "length", (max_tokens, finish, calls)
        assert content == "", (max_tokens, content)
        assert calls == [], (max_tokens, calls)
