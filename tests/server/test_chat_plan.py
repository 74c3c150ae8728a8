"""The chat plan (server/chat_plan.py): a chat request is resolved once into a frozen ChatPlan, and its
sampling params come from the plan (the structured-output parameter is read once per request)."""

from __future__ import annotations

import dataclasses

import pytest
from fake_engine import FakeAsyncLLM

import server.guided_request as guided_request
from chat.encoder import SpecialTokens
from server.chat_plan import plan_chat, tokenize_chat
from server.errors import InvalidRequest
from server.protocol import ChatCompletionRequest
from server.serving_common import ServerState

USER = [{"role": "user", "content": "hi"}]
TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]


@pytest.fixture(scope="module")
def state():
    engine = FakeAsyncLLM()
    return ServerState(engine=engine, served_model_name="fake-v4", metrics=None,  # type: ignore[arg-type]  (not used by the plan)
                       special=SpecialTokens.from_tokenizer(engine.tokenizer))


def test_the_plan_is_frozen_and_read_once(state, monkeypatch):
    calls = []
    real = guided_request.guided_param
    monkeypatch.setattr(guided_request, "guided_param", lambda req: calls.append(1) or real(req))
    req = ChatCompletionRequest(messages=USER, response_format={"type": "json_object"}, max_tokens=5)
    plan = plan_chat(state, req)
    params = plan.sampling_params(req)
    assert len(calls) == 1  # the guide was resolved once, the params were built from the plan
    assert plan.guide.param == "response_format" and params.guided_json_object
    assert params.guided_start_token_id == state.special.think_end_id  # thinking on: grammar after </think>
    assert params.max_tokens == 5 and params.skip_special_tokens is False
    assert plan.prompt_ids == tokenize_chat(state, req)[1]
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.guide = None
    with pytest.raises(TypeError):
        plan.extra["temperature"] = 0.0


def test_forced_tool_choice_is_the_plans_guide(state):
    req = ChatCompletionRequest(messages=USER, tools=TOOLS, tool_choice="required", reasoning_effort="none")
    plan = plan_chat(state, req)
    assert plan.forced and plan.guide.param == "tool_choice" and [t["function"]["name"] for t in plan.tools] == ["f"]
    params = plan.sampling_params(req)
    assert params.guided_tool_calls["functions"][0]["name"] == "f" and params.guided_start_token_id is None
    auto = plan_chat(state, ChatCompletionRequest(messages=USER, tools=TOOLS))
    assert not auto.forced and auto.guide.param is None and auto.tools is not None


def test_guide_and_tools_do_not_mix(state):
    with pytest.raises(InvalidRequest) as e:
        plan_chat(state, ChatCompletionRequest(messages=USER, tools=TOOLS, guided_regex="a+"))
    assert e.value.param == "guided_regex"
    with pytest.raises(InvalidRequest) as e:  # guided_choice needs thinking off
        plan_chat(state, ChatCompletionRequest(messages=USER, guided_choice=["a", "b"]))
    assert e.value.param == "guided_choice"
