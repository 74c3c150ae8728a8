"""/openapi.json publishes the real request and response models: run-time bounds (served model,
vocabulary, context), per-role message shapes, and response schemas that real answers validate
against."""

from __future__ import annotations

import jsonschema
from real_server import MODEL, TOOLS, USER


def _validator(spec: dict, name: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator({"$ref": f"#/components/schemas/{name}", **spec})


def _response_schema(spec: dict, path: str, method: str = "post") -> str:
    ref = spec["paths"][path][method]["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    return ref.rsplit("/", 1)[1]


def test_openapi_bounds_and_shapes(real, http):
    spec = http.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    assert schemas["ChatCompletionRequest"]["properties"]["model"]["enum"] == [MODEL, "", None]
    assert schemas["DetokenizeRequest"]["properties"]["tokens"]["items"]["maximum"] == real.tok.vocab_size - 1
    assert schemas["CompletionRequest"]["properties"]["max_tokens"]["maximum"] == real.engine.max_model_len - 1
    param = spec["paths"]["/v1/models/{model}"]["get"]["parameters"][0]
    assert param["schema"]["enum"] == [MODEL]
    message = _validator(spec, "ChatMessage")
    assert message.is_valid({"role": "tool", "tool_call_id": "c1", "content": "r"})
    assert not message.is_valid({"role": "tool", "content": "r"})  # the server needs tool_call_id
    assert not message.is_valid({"role": "developer", "content": ""})
    tokenize = _validator(spec, "TokenizeRequest")
    assert tokenize.is_valid({"prompt": "x"}) and tokenize.is_valid({"messages": USER})
    assert not tokenize.is_valid({"prompt": "x", "messages": USER}) and not tokenize.is_valid({})
    for path in ("/v1/chat/completions", "/v1/completions"):
        assert "text/event-stream" in spec["paths"][path]["post"]["responses"]["200"]["content"]
        assert spec["paths"][path]["post"]["responses"]["400"]["content"]["application/json"]["schema"]["$ref"] \
            .endswith("/ErrorResponse")


def test_real_answers_match_the_published_response_models(real, http):
    spec = http.get("/openapi.json").json()
    cases = [
        ("/v1/chat/completions", {"model": MODEL, "messages": USER, "max_tokens": 3, "n": 2, "logprobs": True}),
        ("/v1/chat/completions", {"model": MODEL, "messages": USER, "max_tokens": 40, "tools": TOOLS,
                                  "tool_choice": "required", "reasoning_effort": "none"}),
        ("/v1/completions", {"model": MODEL, "prompt": ["a", "b"], "max_tokens": 2, "logprobs": 1, "echo": True}),
        ("/tokenize", {"model": MODEL, "messages": USER}),
        ("/detokenize", {"model": MODEL, "tokens": [5, 6]}),
    ]
    for path, body in cases:
        r = http.post(path, json=body)
        assert r.status_code == 200, r.text
        _validator(spec, _response_schema(spec, path)).validate(r.json())
    for path in ("/v1/models", f"/v1/models/{MODEL}", "/version"):
        r = http.get(path)
        key = "/v1/models/{model}" if path.count("/") == 3 else path
        _validator(spec, _response_schema(spec, key, "get")).validate(r.json())
    r = http.post("/v1/chat/completions", json={"model": "nope", "messages": USER})
    _validator(spec, "ErrorResponse").validate(r.json())
