"""Real engine over HTTP: completions, token-level parameters, tokenize/detokenize, and error envelopes
(400 / 404 / 500 with the request id), never a bare 500.
"""

from __future__ import annotations

import json

import pytest
from real_server import MAX_MODEL_LEN, MODEL, TOOLS, USER, expect_error


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
    expect_error(http.post("/v1/chat/completions", json={"messages": USER, "guided_choice": choices,
                                                  "reasoning_effort": "high"}), 400, "guided_choice")
    expect_error(http.post("/v1/completions", json={"prompt": "x", "guided_choice": choices, "ignore_eos": True}), 400,
         "guided_choice")


def test_tokenize_detokenize(http, real):
    t = http.post("/tokenize", json={"prompt": "hello world"}).json()
    assert t["tokens"] == real.tok.encode("hello world", add_special_tokens=True) and t["count"] == len(t["tokens"])
    assert http.post("/detokenize", json={"tokens": t["tokens"]}).json()["prompt"] == \
        real.tok.decode(t["tokens"], skip_special_tokens=False)
    expect_error(http.post("/detokenize", json={"tokens": [10**9]}), 400, "tokens")


def test_prompt_logprobs(http, real):
    """vLLM's prompt_logprobs: per prompt token (None first) the token with its true rank and the top-k,
    equal to the echo logprobs of the same prompt; chat puts them beside the choices."""
    ids = real.tok.encode("The quick brown fox jumps", add_special_tokens=True)
    base = {"prompt": ids, "max_tokens": 1, "temperature": 0}
    r = http.post("/v1/completions", json=base | {"prompt_logprobs": 3, "n": 2}).json()
    echo = http.post("/v1/completions", json=base | {"echo": True, "logprobs": 3}).json()["choices"][0]["logprobs"]
    for choice in r["choices"]:
        plp = choice["prompt_logprobs"]
        assert len(plp) == len(ids) and plp[0] is None
        for i in range(1, len(ids)):
            entry = plp[i]
            mine = entry[str(ids[i])]
            assert mine["logprob"] == pytest.approx(echo["token_logprobs"][i], abs=1e-5)
            assert mine["decoded_token"] == real.tok.decode([ids[i]], skip_special_tokens=False)
            tops = sorted((v for k, v in entry.items() if k != str(ids[i]) or v["rank"] <= 3),
                          key=lambda v: v["rank"])
            assert [v["rank"] for v in tops][:3] == [1, 2, 3] and len(entry) <= 4
            assert all(a["logprob"] >= b["logprob"] for a, b in zip(tops, tops[1:]))
            better = sum(v["logprob"] > mine["logprob"] for v in entry.values())
            assert mine["rank"] >= better + 1 and (mine["rank"] <= 3) == (len(entry) == 3)
    r = http.post("/v1/chat/completions", json={"messages": USER, "max_tokens": 1, "prompt_logprobs": 0}).json()
    assert len(r["prompt_logprobs"]) == r["usage"]["prompt_tokens"] and r["prompt_logprobs"][0] is None
    assert all(len(e) == 1 and next(iter(e.values()))["rank"] >= 1 for e in r["prompt_logprobs"][1:])
    expect_error(http.post("/v1/completions", json=base | {"prompt_logprobs": 2, "stream": True}), 400,
                 "prompt_logprobs")
    expect_error(http.post("/v1/completions", json=base | {"prompt_logprobs": 21}), 400, "prompt_logprobs")


def test_return_tokens_as_token_ids(http, real):
    """vLLM's return_tokens_as_token_ids: every logprob token is named "token_id:{id}" (legacy lists, top
    alternatives, chat entries and their bytes); the ids are the tokens the plain request names by text."""
    ids = real.tok.encode("The quick brown fox", add_special_tokens=True)
    base = {"prompt": ids, "max_tokens": 4, "temperature": 0, "ignore_eos": True, "logprobs": 2, "echo": True}
    plain = http.post("/v1/completions", json=base).json()["choices"][0]
    named = http.post("/v1/completions", json=base | {"return_tokens_as_token_ids": True}).json()["choices"][0]
    assert named["text"] == plain["text"]
    as_ids = [int(t.removeprefix("token_id:")) for t in named["logprobs"]["tokens"]]
    assert all(t.startswith("token_id:") for t in named["logprobs"]["tokens"])
    assert as_ids[:len(ids)] == ids
    assert [real.tok.decode([t], skip_special_tokens=False) for t in as_ids] == plain["logprobs"]["tokens"]
    assert named["logprobs"]["text_offset"] == plain["logprobs"]["text_offset"]  # offsets count the text
    assert named["logprobs"]["token_logprobs"] == plain["logprobs"]["token_logprobs"]
    for top in named["logprobs"]["top_logprobs"][1:]:
        assert top and all(k.startswith("token_id:") for k in top)
    chat = {"messages": USER, "max_tokens": 3, "logprobs": True, "top_logprobs": 2, "return_tokens_as_token_ids": True}
    for body in (chat, chat | {"stream": True}):
        if body.get("stream"):
            with http.stream("POST", "/v1/chat/completions", json=body) as r:
                events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
            entries = [e for ev in events for ch in ev["choices"] for e in (ch.get("logprobs") or {}).get("content", [])]
        else:
            entries = http.post("/v1/chat/completions", json=body).json()["choices"][0]["logprobs"]["content"]
        assert len(entries) == 3
        for e in entries + [t for e in entries for t in e["top_logprobs"]]:
            assert e["token"].startswith("token_id:") and bytes(e["bytes"]).decode() == e["token"]


def test_truncate_prompt_tokens(http, real):
    """vLLM's truncate_prompt_tokens keeps the last k prompt tokens: the same greedy output and usage as
    sending those k tokens; echo shows the truncated prompt."""
    ids = real.tok.encode("one two three four five six seven eight", add_special_tokens=True)
    body = {"max_tokens": 4, "temperature": 0, "ignore_eos": True}
    short = http.post("/v1/completions", json=body | {"prompt": ids[-3:]}).json()
    for prompt in (ids, real.tok.decode(ids, skip_special_tokens=True)):
        r = http.post("/v1/completions", json=body | {"prompt": prompt, "truncate_prompt_tokens": 3,
                                                       "echo": True}).json()
        assert r["usage"]["prompt_tokens"] == 3
        tail = real.tok.encode(prompt, add_special_tokens=True)[-3:] if isinstance(prompt, str) else ids[-3:]
        assert r["choices"][0]["text"].startswith(real.tok.decode(tail, skip_special_tokens=False))
    r = http.post("/v1/completions", json=body | {"prompt": ids, "truncate_prompt_tokens": 3}).json()
    assert r["choices"][0]["text"] == short["choices"][0]["text"]
    r = http.post("/v1/completions", json=body | {"prompt": ids, "truncate_prompt_tokens": 100}).json()
    assert r["usage"]["prompt_tokens"] == len(ids)  # shorter than k: unchanged
    r = http.post("/v1/chat/completions", json={"messages": USER, "max_tokens": 2, "truncate_prompt_tokens": 2})
    assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == 2
    r = http.post("/v1/completions", json=body | {"prompt": ids, "truncate_prompt_tokens": -1})  # -1: max_model_len
    assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == len(ids)


# ---- errors --------------------------------------------------------------------------------------
def test_malformed_json(http):
    r = http.post("/v1/chat/completions", content=b'{"messages": [', headers={"Content-Type": "application/json"})
    assert "Malformed JSON" in expect_error(r, 400)["message"]
    r = http.post("/v1/completions", content=b"not json at all", headers={"Content-Type": "application/json"})
    expect_error(r, 400)


@pytest.mark.parametrize("route,body,param", [
    ("/v1/chat/completions", {"messages": USER, "temperature": "hot"}, "temperature"),
    ("/v1/chat/completions", {"messages": USER, "top_p": 2}, "top_p"),
    ("/v1/chat/completions", {"messages": USER, "max_tokens": 0}, "max_tokens"),
    ("/v1/chat/completions", {"messages": USER, "n": 0}, "n"),
    ("/v1/chat/completions", {"messages": USER, "logit_bias": {"5": 101}}, "logit_bias"),
    ("/v1/completions", {"prompt": "x", "logit_bias": {"-3": 1}}, "logit_bias"),
    ("/v1/completions", {"prompt": "x", "logit_bias": {"999999999": 1}}, None),
    ("/v1/completions", {"prompt": "x", "allowed_token_ids": [999999999]}, None),
    ("/v1/chat/completions", {"messages": USER, "response_format": {"type": "json_schema"}}, "response_format"),
    ("/v1/chat/completions", {"messages": USER, "response_format": {"type": "yaml"}}, "response_format.type"),
    ("/v1/chat/completions", {"messages": USER, "guided_json": {"type": "integer", "multipleOf": 2}}, "guided_json"),
    ("/v1/completions", {"prompt": "x", "guided_regex": "(a"}, "guided_regex"),
    ("/v1/completions", {"prompt": "x", "guided_regex": "a", "guided_json": {}}, "guided_regex"),
    ("/v1/chat/completions", {"messages": USER, "guided_grammar": "root ::= x"}, "guided_grammar"),
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
    ("/v1/completions", {"prompt": "x", "truncate_prompt_tokens": 0}, "truncate_prompt_tokens"),
    ("/v1/completions", {"prompt": "x", "truncate_prompt_tokens": -2}, "truncate_prompt_tokens"),
    ("/v1/completions", {"prompt": "x", "truncate_prompt_tokens": MAX_MODEL_LEN + 1}, "truncate_prompt_tokens"),
    ("/v1/chat/completions", {"messages": USER, "truncate_prompt_tokens": 0}, "truncate_prompt_tokens"),
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
    expect_error(http.post(route, json=body), 400, param)


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
                expect_error(r, r.status_code)
    r = http.post("/v1/chat/completions", content=b"x=1", headers={"Content-Type": "text/plain"})
    assert 400 <= r.status_code < 500
    expect_error(http.get("/v1/chat/completions"), 405)


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
    expect_error(http.post(route, content=raw, headers={"Content-Type": "application/json"}), 400, param)


def test_internal_error_is_enveloped_500_with_request_id(http, real, monkeypatch):
    orig = real.tok.encode

    def encode(text, *a, **kw):
        if "BOOM" in text:
            raise TypeError("simulated bug")
        return orig(text, *a, **kw)
    monkeypatch.setattr(real.tok, "encode", encode)
    r = http.post("/tokenize", json={"prompt": "BOOM"}, headers={"X-Request-Id": "boom-1"})
    assert expect_error(r, 500)["message"] == "internal server error" and r.headers["x-request-id"] == "boom-1"
    expect_error(http.post("/v1/completions", json={"prompt": "BOOM", "max_tokens": 1}), 500)
    # the keep-alive connection survived: the same client goes on working
    assert http.post("/tokenize", json={"prompt": "fine"}).status_code == 200
    assert 'status="500"' in http.get("/metrics").text


def test_too_long(http, real):
    r = http.post("/v1/chat/completions", json={"messages": USER, "max_tokens": MAX_MODEL_LEN})
    err = expect_error(r, 400)
    assert "maximum context length" in err["message"] and str(MAX_MODEL_LEN) in err["message"]
    ids = real.tok.encode("hello world " * 1000)
    assert len(ids) > MAX_MODEL_LEN
    r = http.post("/v1/completions", json={"prompt": ids, "max_tokens": 1})
    assert "maximum context length" in expect_error(r, 400)["message"]
    r = http.post("/v1/completions", json={"prompt": "hello", "max_tokens": MAX_MODEL_LEN, "stream": True})
    assert "maximum context length" in expect_error(r, 400)["message"]
    long = [{"role": "user", "content": "hello world " * 1000}]
    r = http.post("/v1/chat/completions", json={"messages": long, "stream": True})
    assert "maximum context length" in expect_error(r, 400)["message"]


def test_not_found(http):
    expect_error(http.post("/v1/chat/completions", json={"model": "gpt-4", "messages": USER}), 404, "model")
    expect_error(http.post("/v1/completions", json={"model": "gpt-4", "prompt": "x"}), 404, "model")
    expect_error(http.get("/v1/models/gpt-4"), 404)
    expect_error(http.get("/v1/nope"), 404)
    expect_error(http.post("/v2/chat/completions", json={}), 404)
