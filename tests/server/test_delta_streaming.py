"""Streams are built from the engine's delta outputs: for the same seeded request (n>1, logprobs, a
stop string) the concatenated SSE pieces equal the non-streamed response, choice by choice: text (or
reasoning + content), tokens, logprobs, finish and stop reasons, and usage."""

from __future__ import annotations

import json
import os
import time

import httpx
import pytest
from server_fixture import start_server

from engine.async_engine import AsyncLLM
from engine.config import EngineArgs
from server.app import create_app

MODEL = "v4-demo"
MESSAGES = [{"role": "user", "content": "Tell me about 你好 and 😀"}]


@pytest.fixture(scope="module")
def http(tmp_path_factory):
    from models.demo import ensure_demo_model

    old = os.environ.get("V4SERVE_CACHE_DIR")
    os.environ["V4SERVE_CACHE_DIR"] = str(tmp_path_factory.getbasetemp() / "v4serve-cache")
    try:
        demo_dir = ensure_demo_model()
    finally:
        if old is None:
            os.environ.pop("V4SERVE_CACHE_DIR", None)
        else:
            os.environ["V4SERVE_CACHE_DIR"] = old
    engine = AsyncLLM.from_engine_args(EngineArgs(model=str(demo_dir), device="cpu", max_model_len=1024,
                                                  kv_cache_memory=48 << 20, max_num_seqs=16))
    base_url, stop = start_server(create_app(engine, served_model_name=MODEL))
    with httpx.Client(base_url=base_url, timeout=60) as c:
        deadline = time.monotonic() + 30
        while c.get("/health").status_code != 200:
            assert time.monotonic() < deadline, "engine never became ready"
            time.sleep(0.02)
        yield c
    stop()


def _events(r: httpx.Response) -> list[dict]:
    assert r.status_code == 200, r.text
    frames = [f for f in r.text.split("\n\n") if f]
    assert frames[-1] == "data: [DONE]"
    return [json.loads(f[len("data: "):]) for f in frames[:-1]]


def _stop_from(text: str) -> str:
    """A 3-character piece of a seeded text (no U+FFFD) that the same request will stop at."""
    return next(text[i:i + 3] for i in range(4, len(text) - 3) if "\ufffd" not in text[i:i + 3])


def test_completions_stream_concatenates_to_the_response(http):
    body = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 32, "n": 3, "seed": 11,
            "temperature": 1.0, "logprobs": 2, "ignore_eos": True}
    probe = http.post("/v1/completions", json=body).json()
    body["stop"] = [_stop_from(probe["choices"][1]["text"])]
    full = http.post("/v1/completions", json=body).json()
    events = _events(http.post("/v1/completions", json=dict(body, stream=True,
                                                            stream_options={"include_usage": True})))
    assert any(c["finish_reason"] == "stop" for c in full["choices"])
    assert any(c["finish_reason"] == "length" for c in full["choices"])
    for want in full["choices"]:
        pieces = [c for e in events for c in e["choices"] if c["index"] == want["index"]]
        assert "".join(c["text"] for c in pieces) == want["text"]
        for key in ("tokens", "token_logprobs", "top_logprobs"):
            assert [x for c in pieces for x in c["logprobs"][key]] == want["logprobs"][key]
        assert [c["finish_reason"] for c in pieces].count(None) == len(pieces) - 1
        assert (pieces[-1]["finish_reason"], pieces[-1]["stop_reason"]) == \
            (want["finish_reason"], want["stop_reason"])
    assert events[-1]["choices"] == [] and events[-1]["usage"] == full["usage"]


@pytest.mark.parametrize("mode", ["raw", "parsed"])
def test_chat_stream_concatenates_to_the_response(http, mode):
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 40, "n": 2, "seed": 5, "temperature": 1.0,
            "logprobs": True, "top_logprobs": 2, "ignore_eos": True,
            "thinking": {"type": "enabled", "budget_tokens": 6}}  # </think> forced: reasoning and content
    if mode == "raw":
        body["skip_special_tokens"] = False
    probe = http.post("/v1/chat/completions", json=body).json()
    body["stop"] = [_stop_from(probe["choices"][1]["message"]["content"])]
    full = http.post("/v1/chat/completions", json=body).json()
    events = _events(http.post("/v1/chat/completions", json=dict(body, stream=True, stream_options={
        "include_usage": True, "continuous_usage_stats": True})))
    assert any(c["finish_reason"] == "stop" for c in full["choices"])
    assert full["usage"]["completion_tokens_details"]["reasoning_tokens"] > 0
    for want in full["choices"]:
        pieces = [c for e in events for c in e["choices"] if c["index"] == want["index"]]
        fields = ["content"] if mode == "raw" else ["content", "reasoning_content", "reasoning"]
        for f in fields:
            assert "".join(c["delta"].get(f) or "" for c in pieces) == (want["message"][f] or "")
        streamed_lps = [x for c in pieces if c["logprobs"] for x in c["logprobs"]["content"]]
        assert streamed_lps == want["logprobs"]["content"]
        assert (pieces[-1]["finish_reason"], pieces[-1]["stop_reason"]) == \
            (want["finish_reason"], want["stop_reason"])
    assert events[-1]["choices"] == [] and events[-1]["usage"] == full["usage"]
    usages = [e["usage"]["completion_tokens"] for e in events[1:]]  # continuous usage: growing counts
    assert usages == sorted(usages) and usages[-1] == full["usage"]["completion_tokens"]
