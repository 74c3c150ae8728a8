"""Request models: unsupported parameters are refused by name, lengths fit the context."""

from __future__ import annotations

import pytest

from engine.errors import InvalidParameter, RequestTooLongError
from engine.admission import admit
from server.errors import InvalidRequest
from server.protocol import ChatCompletionRequest, CompletionRequest

USER = [{"role": "user", "content": "hi"}]


def test_unknown_fields_ignored_known_unsupported_rejected():
    ChatCompletionRequest(messages=USER, some_future_field=1, store=False).check_supported()
    for extra in ({"audio": {"voice": "x"}}, {"modalities": ["text", "audio"]}, {"guided_grammar": "root ::= x"},
                  {"use_beam_search": True}, {"function_call": "auto"}):
        with pytest.raises(InvalidRequest) as e:
            ChatCompletionRequest(messages=USER, **extra).check_supported()
        assert e.value.param == next(iter(extra))
    ChatCompletionRequest(messages=USER, use_beam_search=False, modalities=["text"]).check_supported()
    with pytest.raises(InvalidRequest):
        ChatCompletionRequest(messages=USER, stream_options={"include_usage": True}).check_supported()


def test_sampling_params_mapping():
    req = ChatCompletionRequest(messages=USER, max_completion_tokens=7, temperature=0.5, stop="END", top_k=5,
                                logprobs=True, top_logprobs=3, n=2)
    sp = req.to_sampling_params()
    assert (sp.max_tokens, sp.temperature, sp.stop, sp.top_k, sp.logprobs, sp.n) == (7, 0.5, ["END"], 5, 3, 2)
    assert ChatCompletionRequest(messages=USER).to_sampling_params().max_tokens is None  # admission fills the context
    sp = CompletionRequest(prompt="x", logprobs=2, echo=True).to_sampling_params()
    assert (sp.max_tokens, sp.logprobs, sp.prompt_logprobs) == (16, 2, 2)
    with pytest.raises(InvalidRequest) as e:  # SamplingParams checks the value, the 400 names the field
        ChatCompletionRequest(messages=USER, min_tokens=50, max_tokens=5).to_sampling_params()
    assert e.value.param == "min_tokens"
    with pytest.raises(InvalidRequest) as e:
        CompletionRequest(prompt="x", stop=["a", ""]).to_sampling_params()
    assert e.value.param == "stop"
    with pytest.raises(InvalidRequest) as e:  # a value the server derived names no field
        ChatCompletionRequest(messages=USER).to_sampling_params(thinking_budget=3)
    assert e.value.param is None


def test_admission_resolves_max_tokens_with_the_vllm_wording():
    """The server leaves max_tokens to admission (engine/admission.py): None fills the context."""
    kw = dict(max_model_len=100, kv_capacity=None, num_waiting=0, max_queued=None)
    assert admit(10, None, 1, **kw) == 90
    with pytest.raises(RequestTooLongError, match="maximum context length is 100 tokens.*60 in the messages, 50"):
        admit(60, 50, 1, **kw)
    with pytest.raises(RequestTooLongError, match="maximum context length"):
        admit(100, None, 1, **kw)
    with pytest.raises(InvalidParameter, match="min_tokens") as e:  # against the resolved max_tokens
        admit(10, None, 1, min_tokens=91, **kw)
    assert e.value.param == "min_tokens" and admit(10, None, 1, min_tokens=90, **kw) == 90


def test_tool_choice_rules():
    tools = [{"type": "function", "function": {"name": "f"}}, {"type": "function", "function": {"name": "g"}}]
    named = ChatCompletionRequest(messages=USER, tools=tools, tool_choice={"type": "function", "function": {"name": "g"}})
    named.check_supported()
    assert [t["function"]["name"] for t in named.active_tools()] == ["g"]
    assert ChatCompletionRequest(messages=USER, tools=tools, tool_choice="none").active_tools() is None
    with pytest.raises(InvalidRequest):
        ChatCompletionRequest(messages=USER, tools=tools,
                              tool_choice={"type": "function", "function": {"name": "h"}}).check_supported()
    with pytest.raises(InvalidRequest):
        ChatCompletionRequest(messages=USER, tool_choice="required").check_supported()


def test_content_parts():
    req = ChatCompletionRequest(messages=[{"role": "user", "content": [{"type": "text", "text": "a"},
                                                                      {"type": "text", "text": "b"}]}])
    assert req.message_dicts()[0]["content"] == "ab"
    req = ChatCompletionRequest(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}])
    with pytest.raises(InvalidRequest):
        req.message_dicts()
