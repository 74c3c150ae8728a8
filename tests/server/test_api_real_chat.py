"""Real engine over HTTP, chat: basics, chat completions, every reasoning request shape -> the rendered
prompt, thinking budget, tool calls end to end, and a second app instance with `--api-key` and a server
default reasoning effort. The route splits reasoning/content exactly as the output parser does on the raw text.
"""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from real_server import (
    MAX_MODEL_LEN, MODEL, TOOL_TEXT, TOOLS, USER, expect_error, expected_reasoning_tokens, logprob_tokens,
    make_engine, raw_text, serve,
)

from chat.encoder import BOS, REASONING_EFFORT_MAX, encode_messages
from chat.output_parser import parse_completion


# ---- basics --------------------------------------------------------------------------------------
def test_health_version_models(http, real):
    r = http.get("/health")
    assert r.status_code == 200
    assert isinstance(http.get("/version").json()["version"], str)
    models = http.get("/v1/models").json()
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == [MODEL]
    assert models["data"][0]["max_model_len"] == MAX_MODEL_LEN
    assert http.get(f"/v1/models/{MODEL}").json()["id"] == MODEL
    text = http.get("/metrics").text
    assert f'vllm:num_requests_running{{model_name="{MODEL}"}} 0.0' in text


def test_request_id_echo_and_generated(http):
    r = http.get("/v1/models", headers={"X-Request-Id": "my-id-42"})
    assert r.headers["x-request-id"] == "my-id-42"
    a, b = http.get("/v1/models").headers["x-request-id"], http.get("/v1/models").headers["x-request-id"]
    assert a and b and a != b
    assert http.get("/v1/nope", headers={"X-Request-Id": "e-1"}).headers["x-request-id"] == "e-1"
    with http.stream("POST", "/v1/chat/completions", headers={"X-Request-Id": "s-1"},
                     json={"messages": USER, "max_tokens": 2, "stream": True}) as r:
        assert r.status_code == 200 and r.headers["x-request-id"] == "s-1"
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]" and all(line.startswith("data: ") for line in lines)


# ---- chat ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("effort", [None, "none", "max"])
def test_chat_non_stream(client, http, real, effort):
    n_tokens = 12
    kw = dict(messages=USER, max_tokens=n_tokens, temperature=0, logprobs=True, top_logprobs=0,
              extra_body={"ignore_eos": True})
    if effort is not None:
        kw["reasoning_effort"] = effort
    r = client.chat.completions.create(model=MODEL, **kw)
    thinking = effort != "none"
    assert r.id.startswith("chatcmpl-") and r.object == "chat.completion" and r.model == MODEL
    c = r.choices[0]
    assert c.index == 0 and c.finish_reason == "length"
    msg = c.message
    extra = msg.model_extra
    assert extra["reasoning_content"] == extra["reasoning"]
    tokens = logprob_tokens(c)
    assert len(tokens) == n_tokens == r.usage.completion_tokens
    prompt = http.post("/tokenize", json={"messages": USER, "reasoning_effort": effort}).json()
    assert r.usage.prompt_tokens == prompt["count"]
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.usage.completion_tokens_details.reasoning_tokens == expected_reasoning_tokens(tokens, thinking)
    # the route splits exactly what the model generated, as the parser does on the raw text
    raw = raw_text(client, **kw)
    parsed = parse_completion(raw, thinking=thinking, special=real.special)
    assert (extra["reasoning_content"], msg.content or "") == (parsed.reasoning, parsed.content)
    if thinking:
        assert raw.startswith(extra["reasoning_content"])
        if "</think>" in raw:
            assert extra["reasoning_content"] == raw[:raw.index("</think>")].replace("<think>", "")
    else:
        assert extra["reasoning_content"] is None


@pytest.mark.parametrize("effort", ["high", "none"])
def test_chat_stream_matches_non_stream(client, effort):
    kw = dict(messages=USER, max_tokens=10, temperature=0, reasoning_effort=effort, extra_body={"ignore_eos": True})
    full = client.chat.completions.create(model=MODEL, **kw)
    stream = client.chat.completions.create(model=MODEL, stream=True, stream_options={"include_usage": True}, **kw)
    reasoning, content, finish, usage, roles, ids = "", "", None, None, 0, set()
    for chunk in stream:
        ids.add(chunk.id)
        if chunk.usage:
            usage = chunk.usage
        for ch in chunk.choices:
            extra = ch.delta.model_extra or {}
            roles += ch.delta.role == "assistant"
            assert extra.get("reasoning_content") == extra.get("reasoning")
            reasoning += extra.get("reasoning_content") or ""
            content += ch.delta.content or ""
            finish = ch.finish_reason or finish
    msg = full.choices[0].message
    assert len(ids) == 1 and roles == 1 and finish == "length"
    assert reasoning == (msg.model_extra["reasoning_content"] or "")
    assert content == (msg.content or "")
    assert usage.model_dump() == full.usage.model_dump()
    assert usage.completion_tokens == 10


def test_chat_n_and_seed(client):
    kw = dict(model=MODEL, messages=USER, max_tokens=4, n=2, seed=7, temperature=1.0, reasoning_effort="none",
              extra_body={"ignore_eos": True})
    a = client.chat.completions.create(**kw)
    b = client.chat.completions.create(**kw)
    assert [c.index for c in a.choices] == [0, 1]
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]
    assert a.usage.completion_tokens == 8


def test_chat_stop_token_ids_and_max_completion_tokens(client, real):
    first = client.chat.completions.create(model=MODEL, messages=USER, max_completion_tokens=6, temperature=0,
                                           logprobs=True, reasoning_effort="none", extra_body={"ignore_eos": True})
    assert first.usage.completion_tokens == 6
    tok3 = real.tok.token_to_id(first.choices[0].logprobs.content[2].token)
    if tok3 is None:
        pytest.skip("third token has no single-token spelling")
    r = client.chat.completions.create(model=MODEL, messages=USER, max_tokens=6, temperature=0,
                                       reasoning_effort="none",
                                       extra_body={"ignore_eos": True, "stop_token_ids": [tok3]})
    c = r.choices[0]
    assert c.finish_reason == "stop" and c.model_extra["stop_reason"] == tok3
    assert r.usage.completion_tokens <= 3


# ---- reasoning modes -> prompt --------------------------------------------------------------------
NON, HIGH, MAX = (False, None), (True, "high"), (True, "max")
SHAPES = [
    ({}, HIGH),
    ({"reasoning_effort": "none"}, NON), ({"reasoning_effort": "minimal"}, NON),
    ({"reasoning_effort": "low"}, HIGH), ({"reasoning_effort": "medium"}, HIGH), ({"reasoning_effort": "high"}, HIGH),
    ({"reasoning_effort": "max"}, MAX), ({"reasoning_effort": "xhigh"}, MAX),
    ({"thinking": {"type": "enabled"}}, HIGH), ({"thinking": {"type": "disabled"}}, NON),
    ({"thinking": {"type": "enabled", "budget_tokens": 5}}, HIGH),
    ({"chat_template_kwargs": {"thinking": True}}, HIGH), ({"chat_template_kwargs": {"thinking": False}}, NON),
    ({"chat_template_kwargs": {"enable_thinking": False}}, NON),
    ({"chat_template_kwargs": {"reasoning_effort": "max"}}, MAX),
    ({"chat_template_kwargs": {"reasoning_effort": "none"}}, NON),
    ({"chat_template_kwargs": {"thinking": True, "reasoning_effort": "xhigh"}}, MAX),
    ({"thinking": {"type": "enabled"}, "reasoning_effort": "max"}, MAX),
]
# with the server default "max": anything the request says wins; "thinking enabled" keeps the default level
SHAPES_DEFAULT_MAX = [
    ({}, MAX), ({"reasoning_effort": "none"}, NON), ({"reasoning_effort": "high"}, HIGH),
    ({"thinking": {"type": "enabled"}}, MAX), ({"thinking": {"type": "disabled"}}, NON),
    ({"chat_template_kwargs": {"thinking": False}}, NON), ({"chat_template_kwargs": {"reasoning_effort": "low"}}, HIGH),
]
CONVERSATION = [{"role": "system", "content": "You are terse."},
                {"role": "user", "content": "What is 2+2?"},
                {"role": "assistant", "content": "4", "reasoning_content": "add them"},
                {"role": "user", "content": "And 3+3?"}]


def _check_tokenize(http, tok, body: dict, expected: tuple[bool, str | None], headers=None) -> dict:
    thinking, effort = expected
    want = encode_messages(CONVERSATION, thinking=thinking, reasoning_effort=effort, tools=None)
    r = http.post("/tokenize", json={"messages": CONVERSATION, **body}, headers=headers)
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["prompt"] == want
    assert got["tokens"] == tok.encode(want, add_special_tokens=False)
    assert got["count"] == len(got["tokens"]) and got["max_model_len"] == MAX_MODEL_LEN
    # independent spot checks of the layout (architecture.md §6.2)
    assert want.startswith(BOS + (REASONING_EFFORT_MAX if effort == "max" else "") + "You are terse.")
    assert want.endswith("<｜User｜>And 3+3?<｜Assistant｜>" + ("<think>" if thinking else "</think>"))
    return got


@pytest.mark.parametrize("body,expected", SHAPES, ids=[json.dumps(b) for b, _ in SHAPES])
def test_reasoning_shapes_render_prompt(http, client, real, body, expected):
    got = _check_tokenize(http, real.tok, body, expected)
    # the chat route renders the very same prompt
    extra = {k: v for k, v in body.items() if k != "reasoning_effort"}
    r = client.chat.completions.create(model=MODEL, messages=CONVERSATION, max_tokens=1,
                                       reasoning_effort=body.get("reasoning_effort"), extra_body=extra or None)
    assert r.usage.prompt_tokens == got["count"]
    assert (r.choices[0].message.model_extra["reasoning_content"] is None) == (not expected[0])


@pytest.mark.parametrize("body", [
    {"reasoning_effort": "none", "thinking": {"type": "enabled"}},
    {"reasoning_effort": "max", "chat_template_kwargs": {"thinking": False}},
    {"thinking": {"type": "disabled", "budget_tokens": 4}},
    {"thinking": {"type": "enabled", "budget_tokens": 0}},
    {"thinking": {"type": "sometimes"}},
    {"reasoning_effort": "ultra"},
    {"chat_template_kwargs": {"thinking": "yes"}},
    {"chat_template_kwargs": {"unknown_kwarg": 1}},
])
def test_reasoning_conflicts_are_400(http, body):
    expect_error(http.post("/tokenize", json={"messages": USER, **body}), 400)
    expect_error(http.post("/v1/chat/completions", json={"messages": USER, "max_tokens": 1, **body}), 400)


def test_thinking_budget(client, real):
    budget, n_tokens = 3, 20
    kw = dict(messages=USER, max_tokens=n_tokens, temperature=0,
              extra_body={"thinking": {"type": "enabled", "budget_tokens": budget}, "ignore_eos": True})
    r = client.chat.completions.create(model=MODEL, logprobs=True, top_logprobs=0, **kw)
    c = r.choices[0]
    tokens = logprob_tokens(c)
    assert len(tokens) == n_tokens == r.usage.completion_tokens
    if "</think>" in tokens[:budget]:
        pytest.skip("the model closed its reasoning on its own before the budget")
    assert tokens[budget] == "</think>"
    assert r.usage.completion_tokens_details.reasoning_tokens == budget
    reasoning = c.message.model_extra["reasoning_content"]
    raw = raw_text(client, **kw)
    assert raw.index("</think>") == len(reasoning) and raw.startswith(reasoning)
    if "\ufffd" not in "".join(tokens[:budget]):
        assert reasoning == "".join(tokens[:budget])
    assert (c.message.content or "") == parse_completion(raw, thinking=True, special=real.special).content
    # streaming: the same split
    stream = client.chat.completions.create(model=MODEL, stream=True, **kw)
    sr, sc = "", ""
    for chunk in stream:
        for ch in chunk.choices:
            sr += (ch.delta.model_extra or {}).get("reasoning_content") or ""
            sc += ch.delta.content or ""
    assert (sr, sc) == (reasoning, c.message.content or "")


def test_continue_final_message(http, real):
    """vLLM's continue_final_message: the reply continues the trailing assistant message (no EOS after
    it); it needs add_generation_prompt off and an assistant message last."""
    msgs = USER + [{"role": "assistant", "content": "The answer is"}]
    body = {"messages": msgs, "continue_final_message": True, "add_generation_prompt": False,
            "reasoning_effort": "none"}
    got = http.post("/tokenize", json=body).json()["prompt"]
    assert got == encode_messages(msgs, thinking=False, reasoning_effort=None, tools=None, add_generation_prompt=True)
    assert got.endswith("The answer is")
    closed = http.post("/tokenize", json={**body, "continue_final_message": False}).json()["prompt"]
    assert closed == got + real.tok.eos_token
    r = http.post("/v1/chat/completions", json={**body, "max_tokens": 2})
    assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == len(
        http.post("/tokenize", json=body).json()["tokens"])
    expect_error(http.post("/v1/chat/completions", json={**body, "add_generation_prompt": True}), 400,
                 "continue_final_message")
    expect_error(http.post("/v1/chat/completions", json={**body, "messages": USER}), 400, "continue_final_message")


# ---- tool calls end to end (generation forced to a DSML block) ---------------------------------
@pytest.fixture
def forced_output(real, monkeypatch):
    """Make the engine emit a scripted token sequence (then EOS) instead of what it samples."""
    eng = real.engine.engine
    orig = eng._append

    def install(text: str) -> list[int]:
        script = real.tok.encode(text) + [real.tok.eos_token_id]

        def forced(st, s, token):
            return orig(st, s, script[min(len(s.seq.output_token_ids), len(script) - 1)])
        monkeypatch.setattr(eng, "_append", forced)
        return script
    return install


@pytest.mark.parametrize("thinking", [False, True])
def test_tool_calls_end_to_end(client, forced_output, thinking):
    reasoning = "I should call the tool."
    script = forced_output((reasoning + "</think>" if thinking else "") + TOOL_TEXT)
    effort = "high" if thinking else "none"
    r = client.chat.completions.create(model=MODEL, messages=USER, tools=TOOLS, max_tokens=150,
                                       reasoning_effort=effort)
    c = r.choices[0]
    assert c.finish_reason == "tool_calls"
    assert c.message.content in (None, "")
    assert c.message.model_extra["reasoning_content"] == (reasoning if thinking else None)
    (call,) = c.message.tool_calls
    assert call.type == "function" and call.id and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris", "days": 3}
    assert r.usage.completion_tokens == len(script)
    stream = client.chat.completions.create(model=MODEL, messages=USER, tools=TOOLS, max_tokens=150,
                                            reasoning_effort=effort, stream=True)
    calls, content, sreason, finish = [], "", "", None
    for chunk in stream:
        for ch in chunk.choices:
            calls += ch.delta.tool_calls or []
            content += ch.delta.content or ""
            sreason += (ch.delta.model_extra or {}).get("reasoning_content") or ""
            finish = ch.finish_reason or finish
    assert finish == "tool_calls" and content == "" and "DSML" not in sreason
    assert sreason == (reasoning if thinking else "")
    assert calls[0].function.name == "get_weather" and calls[0].id
    args = "".join(c.function.arguments or "" for c in calls)
    assert json.loads(args) == {"city": "Paris", "days": 3}
    if thinking:
        return
    # without tools in the request the markup is not turned into calls
    r = client.chat.completions.create(model=MODEL, messages=USER, max_tokens=150, reasoning_effort=effort)
    assert r.choices[0].finish_reason == "stop" and not r.choices[0].message.tool_calls


# ---- other app instances: --api-key + default reasoning effort; the queue limit ------------------
def test_api_key_and_default_reasoning_effort(demo_dir):
    engine = make_engine(demo_dir, max_num_seqs=4, kv_cache_memory=16 << 20)
    base_url, stop = serve(engine, api_key="sekret", default_reasoning_effort="max")
    try:
        auth = {"Authorization": "Bearer sekret"}
        with httpx.Client(base_url=base_url, timeout=30) as c:
            expect_error(c.get("/v1/models"), 401)
            expect_error(c.get("/v1/models", headers={"Authorization": "Bearer wrong"}), 401)
            expect_error(c.post("/v1/chat/completions", json={"messages": USER}), 401)
            expect_error(c.post("/tokenize", json={"prompt": "x"}), 401)
            assert c.get("/health").status_code == 200 and c.get("/metrics").status_code == 200
            assert c.get("/version").status_code == 200
            assert c.get("/v1/models", headers=auth).status_code == 200
            for body, expected in SHAPES_DEFAULT_MAX:
                _check_tokenize(c, engine.tokenizer, body, expected, headers=auth)
        bad = openai.OpenAI(base_url=base_url + "/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()
        ok = openai.OpenAI(base_url=base_url + "/v1", api_key="sekret", max_retries=0)
        r = ok.chat.completions.create(model=MODEL, messages=USER, max_tokens=2)
        assert r.usage.completion_tokens <= 2 and r.choices[0].message.model_extra["reasoning_content"] is not None
        r = ok.chat.completions.create(model=MODEL, messages=USER, max_tokens=2, reasoning_effort="none")
        assert r.choices[0].message.model_extra["reasoning_content"] is None
        # an engine that dies mid-request: 503 in the envelope (never a 500), and /health says so
        def boom():
            raise RuntimeError("simulated device failure")
        engine.engine.step = boom
        with httpx.Client(base_url=base_url, timeout=30, headers=auth) as c:
            err = expect_error(c.post("/v1/chat/completions", json={"messages": USER, "max_tokens": 2}), 503)
            assert "simulated device failure" in err["message"]
            expect_error(c.post("/v1/completions", json={"prompt": "x", "max_tokens": 2, "stream": True}), 503)
            assert "not running" in expect_error(c.get("/health"), 503)["message"]
    finally:
        stop()
