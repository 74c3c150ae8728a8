"""HTTP API against the REAL engine (tiny demo model, random weights) under a real uvicorn server.

One module-scoped server (`real`) serves most tests; two more app instances cover `--api-key` with a
server default reasoning effort, and the 429 queue limit. With random weights the generated text is
gibberish, so the tests assert structure: token counts, where `</think>` falls, that the chat route
splits reasoning/content exactly as the output parser does on the raw text, that every reasoning
request shape renders the prompt the chat encoder produces, error envelopes, and that aborted
requests free their cache (`/metrics`).
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time

import httpx
import openai
import pytest
from server_fixture import start_server

from engine.async_engine import AsyncLLM
from engine.config import EngineArgs
from server.app import create_app
from server.chat_format import BOS, REASONING_EFFORT_MAX, SpecialTokens, encode_messages
from server.output_parser import parse_completion
from tests.server.metric_names import VLLM_METRICS

MODEL = "v4-demo"
USER = [{"role": "user", "content": "hi"}]
MAX_MODEL_LEN = 1024
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}}}}]
TOOL_TEXT = ('\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name="get_weather">\n'
             '<｜DSML｜parameter name="city" string="true">Paris</｜DSML｜parameter>\n'
             '<｜DSML｜parameter name="days" string="false">3</｜DSML｜parameter>\n'
             '</｜DSML｜invoke>\n</｜DSML｜tool_calls>')


# ---- fixtures ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    """The embedded demo checkpoint, written once per session into a temp cache dir."""
    import os

    from models.demo import ensure_demo_model

    cache = tmp_path_factory.getbasetemp() / "v4serve-cache"
    old = os.environ.get("V4SERVE_CACHE_DIR")
    os.environ["V4SERVE_CACHE_DIR"] = str(cache)
    try:
        return ensure_demo_model()
    finally:
        if old is None:
            os.environ.pop("V4SERVE_CACHE_DIR", None)
        else:
            os.environ["V4SERVE_CACHE_DIR"] = old


def _engine(demo_dir, **kw) -> AsyncLLM:
    args = dict(model=str(demo_dir), device="cpu", max_model_len=MAX_MODEL_LEN, kv_cache_memory=48 << 20,
                max_num_seqs=64)
    args.update(kw)
    return AsyncLLM.from_engine_args(EngineArgs(**args))


def _serve(engine: AsyncLLM, **kw):
    base_url, stop = start_server(create_app(engine, served_model_name=MODEL, **kw))
    deadline = time.monotonic() + 30
    with httpx.Client(base_url=base_url, timeout=5) as c:
        while c.get("/health").status_code != 200:
            assert time.monotonic() < deadline, "engine never became ready"
            time.sleep(0.02)
    return base_url, stop


class Served:
    def __init__(self, engine: AsyncLLM, base_url: str) -> None:
        self.engine, self.base_url = engine, base_url
        self.tok = engine.tokenizer
        self.special = SpecialTokens.from_tokenizer(engine.tokenizer)


@pytest.fixture(scope="module")
def real(demo_dir):
    engine = _engine(demo_dir)
    base_url, stop = _serve(engine)
    yield Served(engine, base_url)
    stop()


@pytest.fixture(scope="module")
def client(real):
    return openai.OpenAI(base_url=real.base_url + "/v1", api_key="unused", max_retries=0, timeout=30)


@pytest.fixture(scope="module")
def http(real):
    with httpx.Client(base_url=real.base_url, timeout=30) as c:
        yield c


# ---- helpers -------------------------------------------------------------------------------------
def _metrics(http: httpx.Client) -> dict[str, float]:
    text = http.get("/metrics").text
    out = {}
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc"):
        m = re.search(rf"^{re.escape(name)}\{{[^}}]*\}} (\S+)$", text, re.M)
        assert m, name
        out[name] = float(m.group(1))
    return out


def _wait_idle(http: httpx.Client, timeout: float = 5.0) -> None:
    """Poll /metrics until nothing runs or waits and the KV cache is empty."""
    deadline = time.monotonic() + timeout
    while True:
        m = _metrics(http)
        if m["vllm:num_requests_running"] == 0 and m["vllm:num_requests_waiting"] == 0 \
                and m["vllm:kv_cache_usage_perc"] == 0:
            return
        assert time.monotonic() < deadline, f"engine not idle after {timeout}s: {m}"
        time.sleep(0.05)


def _wait_metric(http: httpx.Client, cond, timeout: float = 10.0) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    while True:
        m = _metrics(http)
        if cond(m):
            return m
        assert time.monotonic() < deadline, f"metric condition not reached: {m}"
        time.sleep(0.02)


def _err(r: httpx.Response, status: int, param: str | None = None) -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert err["code"] == status and isinstance(err["type"], str) and err["type"] and err["message"]
    if param is not None:
        assert err["param"] == param, err
    return err


def _raw_text(client, **kw) -> str:
    """The same request in raw mode (no parsing, special tokens kept): what the model generated."""
    extra = dict(kw.pop("extra_body", {}) or {})
    extra["skip_special_tokens"] = False
    r = client.chat.completions.create(model=MODEL, extra_body=extra, **kw)
    return r.choices[0].message.content


def _tokens(choice) -> list[str]:
    return [t.token for t in choice.logprobs.content]


def _expected_reasoning_tokens(tokens: list[str], thinking: bool) -> int:
    if not thinking:
        return 0
    return tokens.index("</think>") if "</think>" in tokens else len(tokens)


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
    tokens = _tokens(c)
    assert len(tokens) == n_tokens == r.usage.completion_tokens
    prompt = http.post("/tokenize", json={"messages": USER, "reasoning_effort": effort}).json()
    assert r.usage.prompt_tokens == prompt["count"]
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.usage.completion_tokens_details.reasoning_tokens == _expected_reasoning_tokens(tokens, thinking)
    # the route splits exactly what the model generated, as the parser does on the raw text
    raw = _raw_text(client, **kw)
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
    _err(http.post("/tokenize", json={"messages": USER, **body}), 400)
    _err(http.post("/v1/chat/completions", json={"messages": USER, "max_tokens": 1, **body}), 400)


def test_thinking_budget(client, real):
    budget, n_tokens = 3, 20
    kw = dict(messages=USER, max_tokens=n_tokens, temperature=0,
              extra_body={"thinking": {"type": "enabled", "budget_tokens": budget}, "ignore_eos": True})
    r = client.chat.completions.create(model=MODEL, logprobs=True, top_logprobs=0, **kw)
    c = r.choices[0]
    tokens = _tokens(c)
    assert len(tokens) == n_tokens == r.usage.completion_tokens
    if "</think>" in tokens[:budget]:
        pytest.skip("the model closed its reasoning on its own before the budget")
    assert tokens[budget] == "</think>"
    assert r.usage.completion_tokens_details.reasoning_tokens == budget
    reasoning = c.message.model_extra["reasoning_content"]
    raw = _raw_text(client, **kw)
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


# ---- completions ---------------------------------------------------------------------------------
def test_completions_token_prompt_echo_logprobs(client, real):
    ids = real.tok.encode("The quick brown fox", add_special_tokens=True)
    r = client.completions.create(model=MODEL, prompt=ids, max_tokens=4, temperature=0, echo=True, logprobs=2,
                                  extra_body={"ignore_eos": True})
    assert r.id.startswith("cmpl-") and r.object == "text_completion"
    c = r.choices[0]
    prompt_text = real.tok.decode(ids, skip_special_tokens=False)
    assert c.text.startswith(prompt_text)
    lp = c.logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == len(ids) + 4
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert all(x <= 0 for x in lp.token_logprobs[1:])
    assert all(1 <= len(t) <= 3 for t in lp.top_logprobs[1:])  # top-2 plus possibly the chosen token
    assert lp.text_offset == sorted(lp.text_offset)
    assert r.usage.prompt_tokens == len(ids) and r.usage.completion_tokens == 4
    # without echo, the generated text alone; same greedy continuation
    r2 = client.completions.create(model=MODEL, prompt=ids, max_tokens=4, temperature=0,
                                   extra_body={"ignore_eos": True})
    assert prompt_text + r2.choices[0].text == c.text


def test_completions_text_batch_and_stream(client, real):
    r = client.completions.create(model=MODEL, prompt=["Hello", "The server"], max_tokens=3, n=2, temperature=0,
                                  extra_body={"ignore_eos": True})
    assert sorted(c.index for c in r.choices) == [0, 1, 2, 3]
    n_prompt = sum(len(real.tok.encode(p, add_special_tokens=True)) for p in ["Hello", "The server"])
    assert r.usage.prompt_tokens == n_prompt and r.usage.completion_tokens == 12
    full = client.completions.create(model=MODEL, prompt="Hello", max_tokens=5, temperature=0,
                                     extra_body={"ignore_eos": True})
    chunks = list(client.completions.create(model=MODEL, prompt="Hello", max_tokens=5, temperature=0, stream=True,
                                            stream_options={"include_usage": True}, extra_body={"ignore_eos": True}))
    assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == full.choices[0].text
    assert chunks[-1].usage.completion_tokens == 5


def test_logit_bias_and_allowed_token_ids(http, real):
    """logit_bias (OpenAI: string token-id keys) and allowed_token_ids steer real sampling; the returned
    logprobs stay those of the raw model."""
    ids = real.tok.encode("The quick brown fox", add_special_tokens=True)
    base = {"prompt": ids, "max_tokens": 6, "temperature": 0, "ignore_eos": True, "logprobs": 1}
    plain = http.post("/v1/completions", json=base).json()["choices"][0]["text"]
    target = next(t for t in range(100, 400)
                  if real.tok.decode([t] * 6, skip_special_tokens=True) not in ("", plain))
    forced = real.tok.decode([target] * 6, skip_special_tokens=True)
    r = http.post("/v1/completions", json=base | {"logit_bias": {str(target): 100}}).json()["choices"][0]
    assert r["text"] == forced
    assert max(r["logprobs"]["token_logprobs"]) < 0  # raw logprobs, not the biased distribution
    r = http.post("/v1/completions", json=base | {"allowed_token_ids": [target], "temperature": 1.0,
                                                  "seed": 3}).json()["choices"][0]
    assert r["text"] == forced  # sampling at temperature 1, but only one token may be drawn


def test_guided_choice(http):
    choices = ["positive", "negative", "neutral"]
    r = http.post("/v1/completions", json={"prompt": "The review was", "max_tokens": 20, "temperature": 1.0,
                                           "seed": 5, "guided_choice": choices, "n": 3}).json()
    assert all(c["text"] in choices and c["finish_reason"] == "stop" for c in r["choices"]), r
    r = http.post("/v1/chat/completions", json={"messages": USER, "max_tokens": 20, "guided_choice": choices,
                                                "reasoning_effort": "none"}).json()
    assert r["choices"][0]["message"]["content"] in choices, r
    _err(http.post("/v1/chat/completions", json={"messages": USER, "guided_choice": choices,
                                                  "reasoning_effort": "high"}), 400, "guided_choice")
    _err(http.post("/v1/completions", json={"prompt": "x", "guided_choice": choices, "ignore_eos": True}), 400,
         "guided_choice")


def test_tokenize_detokenize(http, real):
    t = http.post("/tokenize", json={"prompt": "hello world"}).json()
    assert t["tokens"] == real.tok.encode("hello world", add_special_tokens=True) and t["count"] == len(t["tokens"])
    assert http.post("/detokenize", json={"tokens": t["tokens"]}).json()["prompt"] == \
        real.tok.decode(t["tokens"], skip_special_tokens=False)
    _err(http.post("/detokenize", json={"tokens": [10**9]}), 400, "tokens")


# ---- errors --------------------------------------------------------------------------------------
def test_malformed_json(http):
    r = http.post("/v1/chat/completions", content=b'{"messages": [', headers={"Content-Type": "application/json"})
    assert "Malformed JSON" in _err(r, 400)["message"]
    r = http.post("/v1/completions", content=b"not json at all", headers={"Content-Type": "application/json"})
    _err(r, 400)


@pytest.mark.parametrize("route,body,param", [
    ("/v1/chat/completions", {"messages": USER, "temperature": "hot"}, "temperature"),
    ("/v1/chat/completions", {"messages": USER, "top_p": 2}, "top_p"),
    ("/v1/chat/completions", {"messages": USER, "max_tokens": 0}, "max_tokens"),
    ("/v1/chat/completions", {"messages": USER, "n": 0}, "n"),
    ("/v1/chat/completions", {"messages": USER, "logit_bias": {"5": 101}}, "logit_bias"),
    ("/v1/completions", {"prompt": "x", "logit_bias": {"-3": 1}}, "logit_bias"),
    ("/v1/completions", {"prompt": "x", "logit_bias": {"999999999": 1}}, None),
    ("/v1/completions", {"prompt": "x", "allowed_token_ids": [999999999]}, None),
    ("/v1/chat/completions", {"messages": USER, "response_format": {"type": "json_schema",
                                                                     "json_schema": {"name": "x"}}}, "response_format"),
    ("/v1/chat/completions", {"messages": USER, "guided_json": {"type": "object"}}, "guided_json"),
    ("/v1/chat/completions", {"messages": []}, "messages"),
    ("/v1/chat/completions", {}, "messages"),
    ("/v1/chat/completions", {"messages": "hello"}, "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "robot", "content": "x"}]}, None),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, None),
    ("/v1/chat/completions", {"messages": USER, "stop": [""]}, "stop"),
    ("/v1/chat/completions", {"messages": USER, "top_k": -5}, None),
    ("/v1/chat/completions", {"messages": USER, "seed": 2**70}, "seed"),
    ("/v1/chat/completions", {"messages": USER, "stream_options": {"include_usage": True}}, "stream_options"),
    ("/v1/chat/completions", {"messages": USER, "tools": TOOLS, "tool_choice": {
        "type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ("/v1/chat/completions", {"messages": [{"role": "tool", "content": "x"}]}, None),
    ("/v1/completions", {"prompt": "x", "suffix": "y"}, "suffix"),
    ("/v1/completions", {"prompt": "x", "top_p": 2}, "top_p"),
    ("/v1/completions", {"prompt": [10**9]}, "prompt"),
    ("/v1/completions", {"prompt": []}, "prompt"),
    ("/v1/completions", {"prompt": [[]]}, None),
    ("/v1/completions", {"prompt": ""}, None),
    ("/v1/completions", {"prompt": "x", "logprobs": 50}, "logprobs"),
    ("/v1/completions", {"prompt": "x", "best_of": 3}, "best_of"),
    ("/tokenize", {"prompt": "x", "messages": USER}, None),
    ("/detokenize", {"tokens": "abc"}, "tokens"),
])
def test_bad_requests_are_400(http, route, body, param):
    _err(http.post(route, json=body), 400, param)


def test_never_500_on_odd_bodies(http):
    odd = [None, [], [1, 2], "str", 5, {"messages": None}, {"messages": [None]}, {"messages": [{}]},
           {"messages": [{"role": "user", "content": None}]}, {"messages": USER, "n": 10**6},
           {"messages": USER, "max_tokens": 10**12}, {"messages": USER, "tools": [{}]},
           {"messages": USER, "stream": "maybe"}, {"messages": USER, "thinking": 3},
           {"messages": [{"role": "assistant", "content": "x", "tool_calls": [{"function": 5}]}]},
           {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": None,
                                                            "tool_calls": [{"id": "a", "type": "function",
                                                                            "function": {"name": "f",
                                                                                         "arguments": "[1]"}}]}]}]
    for body in odd:
        if isinstance(body, dict):
            body = {"max_tokens": 1, **body}
        for route in ("/v1/chat/completions", "/v1/completions", "/tokenize"):
            r = http.post(route, content=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
            assert r.status_code < 500, (route, body, r.status_code, r.text)
            if r.status_code >= 400:
                _err(r, r.status_code)
    r = http.post("/v1/chat/completions", content=b"x=1", headers={"Content-Type": "text/plain"})
    assert 400 <= r.status_code < 500
    _err(http.get("/v1/chat/completions"), 405)


@pytest.mark.parametrize("route,raw,param", [
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "a\\ud800b"}], "max_tokens": 1}', "messages"),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": 1, "tools": [{"type": '
                             b'"function", "function": {"name": "f", "description": "\\udfff"}}]}', "messages"),
    ("/v1/completions", b'{"prompt": "\\udc00abc", "max_tokens": 1}', "prompt"),
    ("/v1/completions", b'{"prompt": ["ok", "\\ud83d"], "max_tokens": 1}', "prompt"),
    ("/tokenize", b'{"prompt": "\\ud800"}', "prompt"),
    ("/tokenize", b'{"messages": [{"role": "user", "content": "\\ud800"}]}', "messages"),
], ids=["chat", "chat-tools", "completion", "completion-batch", "tokenize", "tokenize-messages"])
def test_lone_surrogates_are_400(http, route, raw, param):
    """Valid JSON, invalid Unicode: the tokenizer cannot take it; must be a 400, not a 500."""
    _err(http.post(route, content=raw, headers={"Content-Type": "application/json"}), 400, param)


def test_internal_error_is_enveloped_500_with_request_id(http, real, monkeypatch):
    orig = real.tok.encode

    def encode(text, *a, **kw):
        if "BOOM" in text:
            raise TypeError("simulated bug")
        return orig(text, *a, **kw)
    monkeypatch.setattr(real.tok, "encode", encode)
    r = http.post("/tokenize", json={"prompt": "BOOM"}, headers={"X-Request-Id": "boom-1"})
    assert _err(r, 500)["message"] == "internal server error" and r.headers["x-request-id"] == "boom-1"
    _err(http.post("/v1/completions", json={"prompt": "BOOM", "max_tokens": 1}), 500)
    # the keep-alive connection survived: the same client goes on working
    assert http.post("/tokenize", json={"prompt": "fine"}).status_code == 200
    assert 'status="500"' in http.get("/metrics").text


def test_too_long(http, real):
    r = http.post("/v1/chat/completions", json={"messages": USER, "max_tokens": MAX_MODEL_LEN})
    err = _err(r, 400)
    assert "maximum context length" in err["message"] and str(MAX_MODEL_LEN) in err["message"]
    ids = real.tok.encode("hello world " * 1000)
    assert len(ids) > MAX_MODEL_LEN
    r = http.post("/v1/completions", json={"prompt": ids, "max_tokens": 1})
    assert "maximum context length" in _err(r, 400)["message"]
    r = http.post("/v1/completions", json={"prompt": "hello", "max_tokens": MAX_MODEL_LEN, "stream": True})
    assert "maximum context length" in _err(r, 400)["message"]
    long = [{"role": "user", "content": "hello world " * 1000}]
    r = http.post("/v1/chat/completions", json={"messages": long, "stream": True})
    assert "maximum context length" in _err(r, 400)["message"]


def test_not_found(http):
    _err(http.post("/v1/chat/completions", json={"model": "gpt-4", "messages": USER}), 404, "model")
    _err(http.post("/v1/completions", json={"model": "gpt-4", "prompt": "x"}), 404, "model")
    _err(http.get("/v1/models/gpt-4"), 404)
    _err(http.get("/v1/nope"), 404)
    _err(http.post("/v2/chat/completions", json={}), 404)


# ---- disconnects free the cache ------------------------------------------------------------------
def _aborted(http: httpx.Client) -> float:
    m = re.search(r'^vllm:request_success_total\{finished_reason="abort"[^}]*\} (\S+)$', http.get("/metrics").text, re.M)
    return float(m.group(1)) if m else 0.0


def test_stream_disconnect_frees_cache(real, http):
    _wait_idle(http)
    aborted = _aborted(http)
    for route, body in (("/v1/chat/completions", {"messages": USER}), ("/v1/completions", {"prompt": "hi"})):
        with httpx.Client(base_url=real.base_url, timeout=30) as c:
            with c.stream("POST", route, json={**body, "max_tokens": 400, "ignore_eos": True, "stream": True}) as r:
                assert r.status_code == 200
                lines = r.iter_lines()
                got = [line for line in (next(lines) for _ in range(6)) if line]
                assert got
                m = _metrics(http)
                assert m["vllm:num_requests_running"] == 1 and m["vllm:kv_cache_usage_perc"] > 0
        _wait_idle(http)
    assert _aborted(http) == aborted + 2  # counted as vLLM does: request_success_total{finished_reason="abort"}


def test_non_stream_cancel_frees_cache(real, http):
    _wait_idle(http)
    aborted = _aborted(http)
    for route, body in (("/v1/chat/completions", {"messages": USER}), ("/v1/completions", {"prompt": "hi"})):
        with pytest.raises(httpx.ReadTimeout), httpx.Client(base_url=real.base_url, timeout=0.5) as c:
            c.post(route, json={**body, "max_tokens": 400, "ignore_eos": True})
        _wait_idle(http)
    assert _aborted(http) == aborted + 2
    # the server still works afterwards
    r = http.post("/v1/completions", json={"prompt": "hi", "max_tokens": 2, "ignore_eos": True})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2


# ---- load ----------------------------------------------------------------------------------------
def test_50_concurrent_streams(real, http):
    n_clients, n_tokens = 50, 6

    async def one(aclient: openai.AsyncOpenAI, i: int) -> tuple[str, int, str | None, int]:
        stream = await aclient.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": f"client {i} says hello"}], max_tokens=n_tokens,
            stream=True, stream_options={"include_usage": True}, reasoning_effort="none" if i % 2 else "high",
            extra_body={"ignore_eos": True})
        rid, usage, finish, chunks = None, None, None, 0
        async for chunk in stream:
            rid = chunk.id
            chunks += 1
            if chunk.usage:
                usage = chunk.usage
            for ch in chunk.choices:
                finish = ch.finish_reason or finish
        return rid, usage.completion_tokens, finish, usage.prompt_tokens

    async def main():
        async with openai.AsyncOpenAI(base_url=real.base_url + "/v1", api_key="x", max_retries=0,
                                      timeout=60) as aclient:
            return await asyncio.gather(*(one(aclient, i) for i in range(n_clients)))

    results = asyncio.run(main())
    assert len({r[0] for r in results}) == n_clients
    assert all(r[1] == n_tokens and r[2] == "length" and r[3] > 0 for r in results), results
    _wait_idle(http)


# ---- metrics -------------------------------------------------------------------------------------
def test_metrics_names_and_counts(http):
    before = http.get("/metrics").text

    def total(text: str, name: str) -> float:
        m = re.search(rf"^{re.escape(name)}\{{[^}}]*\}} (\S+)$", text, re.M)
        return float(m.group(1)) if m else 0.0
    r = http.post("/v1/completions", json={"prompt": "hi", "max_tokens": 3, "ignore_eos": True})
    assert r.status_code == 200
    text = http.get("/metrics").text
    for name in VLLM_METRICS:
        assert f"\n{name}{{" in text, name
    assert total(text, "vllm:generation_tokens_total") - total(before, "vllm:generation_tokens_total") == 3
    assert total(text, "vllm:prompt_tokens_total") - total(before, "vllm:prompt_tokens_total") == \
        r.json()["usage"]["prompt_tokens"]
    assert f'model_name="{MODEL}"' in text and 'handler="/v1/completions"' in text


# ---- other app instances: --api-key + default reasoning effort; the queue limit ------------------
def test_api_key_and_default_reasoning_effort(demo_dir):
    engine = _engine(demo_dir, max_num_seqs=4, kv_cache_memory=16 << 20)
    base_url, stop = _serve(engine, api_key="sekret", default_reasoning_effort="max")
    try:
        auth = {"Authorization": "Bearer sekret"}
        with httpx.Client(base_url=base_url, timeout=30) as c:
            _err(c.get("/v1/models"), 401)
            _err(c.get("/v1/models", headers={"Authorization": "Bearer wrong"}), 401)
            _err(c.post("/v1/chat/completions", json={"messages": USER}), 401)
            _err(c.post("/tokenize", json={"prompt": "x"}), 401)
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
            err = _err(c.post("/v1/chat/completions", json={"messages": USER, "max_tokens": 2}), 503)
            assert "simulated device failure" in err["message"]
            _err(c.post("/v1/completions", json={"prompt": "x", "max_tokens": 2, "stream": True}), 503)
            assert "not running" in _err(c.get("/health"), 503)["message"]
    finally:
        stop()


def test_queue_full_429(demo_dir):
    engine = _engine(demo_dir, max_num_seqs=1, max_queued_requests=1, kv_cache_memory=16 << 20)
    base_url, stop = _serve(engine, max_queued_requests=1)
    long = {"max_tokens": 300, "ignore_eos": True, "stream": True}
    release, second = threading.Event(), []

    def hold_second() -> None:  # admitted but waiting (max_num_seqs=1): headers come once it runs
        with httpx.Client(base_url=base_url, timeout=30) as c2, \
                c2.stream("POST", "/v1/completions", json={"prompt": "x", **long}) as r2:
            second.append(r2.status_code)
            release.wait(30)

    try:
        with httpx.Client(base_url=base_url, timeout=30) as c, httpx.Client(base_url=base_url, timeout=30) as c1:
            with c1.stream("POST", "/v1/chat/completions", json={"messages": USER, **long}) as r1:
                assert r1.status_code == 200
                t = threading.Thread(target=hold_second, daemon=True)
                t.start()
                _wait_metric(c, lambda m: m["vllm:num_requests_waiting"] == 1)
                for route, body in (("/v1/chat/completions", {"messages": USER, "max_tokens": 2}),
                                    ("/v1/chat/completions", {"messages": USER, "max_tokens": 2, "stream": True}),
                                    ("/v1/completions", {"prompt": "y", "max_tokens": 2})):
                    r = c.post(route, json=body)
                    _err(r, 429)
                    assert int(r.headers["retry-after"]) >= 1
                release.set()
            t.join(30)
            assert second == [200]
            _wait_idle(c)
            r = c.post("/v1/completions", json={"prompt": "y", "max_tokens": 2})
            assert r.status_code == 200
    finally:
        release.set()
        stop()
