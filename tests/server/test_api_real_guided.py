"""Real engine over HTTP: structured outputs. OpenAI's response_format (json_schema, json_object,
through the OpenAI client's `parse` too) and vLLM's guided_json / guided_regex; random weights, so
validity comes from the grammar alone. With thinking on, the grammar shapes the content after
`</think>`; the schema is also shown to the model in the prompt, as the official encoder does."""

from __future__ import annotations

import json
import re

import jsonschema
import pydantic
from real_server import MODEL, TOOLS, USER, expect_error

from chat.encoder import encode_messages

SCHEMA = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 8},
                                           "days": {"type": "integer"},
                                           "unit": {"enum": ["C", "F"]}},
          "required": ["city", "days"], "additionalProperties": False}
FORMAT = {"type": "json_schema", "json_schema": {"name": "weather", "schema": SCHEMA, "strict": True}}


def test_chat_json_schema(http):
    body = {"messages": USER, "max_tokens": 300, "temperature": 1.0, "seed": 4, "n": 3,
            "reasoning_effort": "none", "response_format": FORMAT}
    r = http.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    for ch in r.json()["choices"]:
        assert ch["finish_reason"] == "stop"
        jsonschema.validate(json.loads(ch["message"]["content"]), SCHEMA)
    # the schema is in the prompt (the official encoder's response-format block)
    want = encode_messages(USER, thinking=False, reasoning_effort=None, tools=None, response_format=FORMAT)
    assert '"name": "weather"' in want
    shown = http.post("/tokenize", json={"messages": USER, "reasoning_effort": "none", "response_format": FORMAT})
    assert shown.json()["prompt"] == want and r.json()["usage"]["prompt_tokens"] == shown.json()["count"]
    # streamed: the concatenated content is valid too
    with http.stream("POST", "/v1/chat/completions", json={**body, "n": 1, "stream": True}) as s:
        events = [json.loads(line[6:]) for line in s.iter_lines() if line.startswith("data: {")]
    text = "".join(ch["delta"].get("content") or "" for ev in events for ch in ev["choices"])
    jsonschema.validate(json.loads(text), SCHEMA)


def test_chat_json_schema_after_thinking(http, real):
    """Thinking on: free reasoning (ended by the thinking budget here), then schema-valid content."""
    r = http.post("/v1/chat/completions", json={
        "messages": USER, "max_tokens": 300, "temperature": 1.0, "seed": 2, "response_format": FORMAT,
        "thinking": {"type": "enabled", "budget_tokens": 4},
        "logit_bias": {str(real.tok.eos_token_id): -100}})  # the reasoning cannot end the reply early
    assert r.status_code == 200, r.text
    msg = r.json()["choices"][0]["message"]
    assert msg["reasoning_content"] is not None
    jsonschema.validate(json.loads(msg["content"]), SCHEMA)


def test_openai_client_parse(client):
    class Weather(pydantic.BaseModel):
        city: str = pydantic.Field(max_length=8)
        days: int

    r = client.chat.completions.parse(model=MODEL, messages=USER, max_tokens=300, temperature=1.0, seed=1,
                                      response_format=Weather, reasoning_effort="none")
    parsed = r.choices[0].message.parsed
    assert isinstance(parsed, Weather) and len(parsed.city) <= 8


def test_json_object_and_regex(http, real):
    # random weights rarely close a free object: with only "{", "[", "1", "}" and EOS allowed, the grammar
    # leaves a single path, "{}" (a key would need a quote)
    few = [real.tok.encode(c)[0] for c in "{[1}"] + [real.tok.eos_token_id]
    r = http.post("/v1/chat/completions", json={
        "messages": USER, "max_tokens": 50, "reasoning_effort": "none", "response_format": {"type": "json_object"},
        "allowed_token_ids": few, "temperature": 1.0, "n": 3})
    assert [c["message"]["content"] for c in r.json()["choices"]] == ["{}"] * 3
    pattern = r"[a-c]{3}-\d{1,4}"
    r = http.post("/v1/completions", json={"prompt": "id:", "max_tokens": 30, "temperature": 1.0, "n": 4,
                                           "seed": 9, "guided_regex": pattern})
    assert all(re.fullmatch(pattern, c["text"]) and c["finish_reason"] == "stop" for c in r.json()["choices"])
    r = http.post("/v1/completions", json={"prompt": "x", "max_tokens": 300, "temperature": 1.0,
                                           "guided_json": json.dumps(SCHEMA)})  # the schema as a string
    jsonschema.validate(json.loads(r.json()["choices"][0]["text"]), SCHEMA)


FORCED_TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string", "maxLength": 6},
                                         "days": {"type": "integer", "minimum": 1, "maximum": 14},
                                         "unit": {"enum": ["C", "F"]}},
        "required": ["city", "days"]}}},
    {"type": "function", "function": {"name": "noop", "parameters": {"type": "object", "properties": {}}}}]


def test_forced_tool_calls(http, real):
    """tool_choice "required" / a named function: the reply is a well-formed DSML call whose
    arguments satisfy the function's schema (random weights: only the grammar makes it so)."""
    no_eos = {str(real.tok.eos_token_id): -100}  # free text could not end the reply early anyway
    cases = [({"tool_choice": {"type": "function", "function": {"name": "get_weather"}}, "reasoning_effort": "none"},
              {"get_weather"}),
             ({"tool_choice": "required", "parallel_tool_calls": False, "thinking": {"type": "enabled",
                                                                                    "budget_tokens": 3}},
              {"get_weather", "noop"})]
    for extra, names in cases:
        r = http.post("/v1/chat/completions", json={"messages": USER, "tools": FORCED_TOOLS, "max_tokens": 300,
                                                    "temperature": 1.0, "seed": 3, "n": 3, "logit_bias": no_eos,
                                                    **extra})
        assert r.status_code == 200, r.text
        for ch in r.json()["choices"]:
            calls = ch["message"]["tool_calls"]
            assert ch["finish_reason"] == "tool_calls" and len(calls) == 1 and not ch["message"]["content"]
            fn = calls[0]["function"]
            assert fn["name"] in names
            schema = next(t["function"]["parameters"] for t in FORCED_TOOLS if t["function"]["name"] == fn["name"])
            jsonschema.validate(json.loads(fn["arguments"]), schema)
    # streamed: the same call arrives as tool-call deltas
    with http.stream("POST", "/v1/chat/completions", json={"messages": USER, "tools": FORCED_TOOLS, "stream": True,
                                                           "max_tokens": 300, "seed": 1, "reasoning_effort": "none",
                                                           "tool_choice": cases[0][0]["tool_choice"]}) as s:
        events = [json.loads(line[6:]) for line in s.iter_lines() if line.startswith("data: {")]
    deltas = [tc for ev in events for ch in ev["choices"] for tc in (ch["delta"].get("tool_calls") or [])]
    assert deltas and deltas[0]["function"]["name"] == "get_weather"
    jsonschema.validate(json.loads("".join(d["function"]["arguments"] for d in deltas)), FORCED_TOOLS[0][
        "function"]["parameters"])


def test_vllm_structured_outputs(http):
    """vLLM >= 0.10's `structured_outputs` object: json / regex / choice / json_object."""
    base = {"prompt": "x", "max_tokens": 300, "temperature": 1.0, "seed": 3}
    r = http.post("/v1/completions", json=base | {"structured_outputs": {"json": SCHEMA}})
    jsonschema.validate(json.loads(r.json()["choices"][0]["text"]), SCHEMA)
    r = http.post("/v1/completions", json=base | {"structured_outputs": {"regex": "[xy]{4}"}, "n": 2})
    assert all(re.fullmatch("[xy]{4}", c["text"]) for c in r.json()["choices"])
    r = http.post("/v1/chat/completions", json={"messages": USER, "max_tokens": 20, "reasoning_effort": "none",
                                                "structured_outputs": {"choice": ["yes", "no"]}})
    assert r.json()["choices"][0]["message"]["content"] in ("yes", "no")
    for so, what in (({"grammar": "root ::= x"}, "grammar"), ({}, "exactly one"),
                     ({"json": {}, "regex": "a"}, "exactly one"), ({"whitespace_pattern": " "}, "whitespace")):
        err = expect_error(http.post("/v1/completions", json=base | {"structured_outputs": so}), 400,
                           "structured_outputs")
        assert what in err["message"]
    expect_error(http.post("/v1/chat/completions", json={"messages": USER, "reasoning_effort": "high",
                                                         "structured_outputs": {"choice": ["a"]}}),
                 400, "structured_outputs")


def test_guided_errors(http):
    expect_error(http.post("/v1/chat/completions", json={"messages": USER, "response_format": FORMAT,
                                                         "tools": TOOLS}), 400, "response_format")
    err = expect_error(http.post("/v1/completions", json={"prompt": "x", "guided_json": {
        "type": "object", "properties": {"a": {"type": "string", "format": "email"}}}}), 400, "guided_json")
    assert "/properties/a" in err["message"] and "email" in err["message"]
    expect_error(http.post("/v1/chat/completions", json={"messages": USER, "response_format": {
        "type": "json_schema", "json_schema": {"name": "x", "schema": False}}}), 400, "response_format")
    expect_error(http.post("/v1/completions", json={"prompt": "x", "guided_regex": "a", "ignore_eos": True}), 400)
    expect_error(http.post("/v1/chat/completions", json={"messages": USER, "response_format": FORMAT,
                                                         "guided_choice": ["a"]}), 400, "guided_choice")
