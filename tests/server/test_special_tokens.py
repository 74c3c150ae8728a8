"""Special-token injection: the text of any special (added) token inside any chat message field is
ordinary content; only the V4 template places special tokens. Checked through /tokenize and through
generation (the prompt ids the engine ran, from prompt_logprobs). Completions prompts keep vLLM's
behaviour: the caller owns the template, so special-token text there is the special token."""

from __future__ import annotations

import copy
import json

import pytest
from real_server import MODEL

_TOOL = {"type": "function", "function": {"name": "lookup", "description": "D",
                                          "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}


def _with(field: str, text: str) -> dict:
    """A chat request body whose `field` carries `text`."""
    call = {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": json.dumps({"q": "v"})}}
    msgs = [{"role": "system", "content": "S"}, {"role": "developer", "content": "D"},
            {"role": "user", "content": "U", "name": "N"},
            {"role": "assistant", "content": "A", "reasoning_content": "R", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_1", "content": "T"},
            {"role": "user", "content": [{"type": "text", "text": "P"}]}]
    body = {"model": MODEL, "messages": msgs, "tools": [copy.deepcopy(_TOOL)],
            "chat_template_kwargs": {"thinking": True, "drop_thinking": False},
            "response_format": {"type": "json_schema", "json_schema": {"name": "f", "schema": {"description": "F"}}}}
    fn = call["function"]
    if field == "system":
        msgs[0]["content"] = text
    elif field == "developer":
        msgs[1]["content"] = text
    elif field == "user":
        msgs[2]["content"] = text
    elif field == "name":
        msgs[2]["name"] = text
    elif field == "assistant":
        msgs[3]["content"] = text
    elif field == "reasoning":
        msgs[3]["reasoning_content"] = text
    elif field == "tool_call_name":
        fn["name"] = text
    elif field == "tool_call_arg_key":
        fn["arguments"] = json.dumps({text: "v"})
    elif field == "tool_call_arg_value":
        fn["arguments"] = json.dumps({"q": text})
    elif field == "tool_call_raw_arguments":
        fn["arguments"] = text  # not JSON: wrapped as {"arguments": text}
    elif field == "tool_result":
        msgs[4]["content"] = text
    elif field == "content_part":
        msgs[5]["content"][0]["text"] = text
    elif field == "tool_schema":
        body["tools"][0]["function"]["description"] = text
        body["tools"][0]["function"]["parameters"]["properties"]["q"]["description"] = text
    elif field == "tool_name":
        body["tools"][0]["function"]["name"] = text
        body["tool_choice"] = "auto"
    elif field == "response_format":
        body["response_format"]["json_schema"]["schema"]["description"] = text
    else:
        raise AssertionError(field)
    return body


FIELDS = ("system", "developer", "user", "name", "assistant", "reasoning", "tool_call_name", "tool_call_arg_key",
          "tool_call_arg_value", "tool_call_raw_arguments", "tool_result", "content_part", "tool_schema",
          "tool_name", "response_format")


def _tokenize(http, body: dict) -> dict:
    body = {k: v for k, v in body.items() if k not in ("tool_choice",)}
    r = http.post("/tokenize", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def _specials(real, ids: list[int]) -> list[int]:
    return [i for i in ids if i in real.tok.added_ids]


def test_vocabulary_has_the_v4_specials(real):
    assert len(real.tok.added_tokens) >= 7 and {2, 3, 4, 5, 6} <= real.tok.added_ids


@pytest.mark.parametrize("field", FIELDS)
def test_special_token_text_in_any_field_is_content_tokenize(real, http, field):
    clean = _tokenize(http, _with(field, "zz"))
    want = _specials(real, clean["tokens"])  # what the template placed
    for text in real.tok.added_tokens:
        got = _tokenize(http, _with(field, f"a{text}b"))
        assert _specials(real, got["tokens"]) == want, (field, text)
        # the injected text survives, spelled with ordinary tokens
        assert real.tok.decode(got["tokens"], skip_special_tokens=False) == got["prompt"]
        assert f"a{text}b" in got["prompt"] or field == "name"  # the encoder does not render `name`


@pytest.mark.parametrize("field", FIELDS)
def test_special_token_text_in_any_field_is_content_generation(real, http, field):
    everything = "".join(real.tok.added_tokens)
    # a function name holds at most 128 characters: one token at a time there
    texts = list(real.tok.added_tokens) if field == "tool_name" else [everything]
    clean = _with(field, "zz")
    clean.pop("tools" if field == "response_format" else "response_format")  # a chat takes one or the other
    want = _specials(real, _tokenize(http, clean)["tokens"])
    for text in texts:
        body = _with(field, text)
        body.pop("tools" if field == "response_format" else "response_format")
        tok = _tokenize(http, body)
        assert _specials(real, tok["tokens"]) == want
        r = http.post("/v1/chat/completions", json={**body, "max_tokens": 1, "prompt_logprobs": 0})
        assert r.status_code == 200, r.text
        out = r.json()
        ran = [int(next(iter(e))) if e else None for e in out["prompt_logprobs"]]
        assert out["usage"]["prompt_tokens"] == tok["count"] == len(ran)
        assert ran[1:] == tok["tokens"][1:]  # the first prompt token has no logprob entry


def test_completions_prompt_keeps_special_tokens(real, http):
    for text, tid in real.tok.added_tokens.items():
        r = http.post("/tokenize", json={"model": MODEL, "prompt": text, "add_special_tokens": False})
        assert r.json()["tokens"] == [tid]
    prompt = "hi" + "".join(real.tok.added_tokens)
    r = http.post("/v1/completions", json={"model": MODEL, "prompt": prompt, "max_tokens": 1, "echo": True,
                                           "logprobs": 0})
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["prompt_tokens"] == len(real.tok.encode(prompt, add_special_tokens=True))


def test_segments_tokenize_like_the_whole_text_without_injection(real):
    from chat.encoder import render_messages

    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there, 12 + 30?"},
            {"role": "assistant", "content": "42.", "reasoning_content": "add them",
             "tool_calls": [{"type": "function", "function": {"name": "calc", "arguments": '{"x": [1, 2]}'}}]},
            {"role": "tool", "tool_call_id": "", "content": "{\"ok\": true}"}, {"role": "user", "content": "more"}]
    for thinking in (False, True):
        segs = render_messages(msgs, thinking=thinking, reasoning_effort=None, tools=[_TOOL],
                               response_format={"type": "json_object"})
        text = "".join(t for t, _ in segs)
        assert real.tok.encode_segments(segs) == real.tok.encode(text)
