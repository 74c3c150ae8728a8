"""The plan of one chat request, resolved once: prompt ids, reasoning mode, active tools, structured
output and the engine-side sampling fields (`ChatPlan`, built by `plan_chat`). Everything downstream
(sampling params, the grammar, the output parser, usage) reads the plan; nothing re-derives it from
the request. Also the chat prompt renderer shared with /tokenize (`tokenize_chat`)."""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Mapping

from chat.encoder import Segment, render_messages
from chat.reasoning import ReasoningConfig, resolve_reasoning
from engine.sampling_params import SamplingParams
from server.errors import APIError, InvalidRequest, check_text
from server.guided_request import GuideSpec, resolve_guide
from server.prompt_length import encode_within_limit
from server.protocol import ChatCompletionRequest, NamedToolChoice, check_continue_final
from server.serving_common import ServerState

_TEMPLATE_KWARGS = {"thinking", "enable_thinking", "reasoning_effort", "drop_thinking"}
_UNRESOLVED = object()  # tokenize_chat: the caller did not resolve the request's tools


def _tools(req: Any) -> list[dict] | None:
    """The tools a chat (or /tokenize) request offers the model; None: no tool use."""
    if isinstance(req, ChatCompletionRequest):
        return req.active_tools()
    return [t.model_dump(exclude_none=True) for t in req.tools] if req.tools else None


def render_chat_prompt(state: ServerState, req: Any, tools: list[dict] | None) -> tuple[list[Segment], ReasoningConfig]:
    """Prompt segments (`chat.encoder.render_messages`) and reasoning mode for a chat request."""
    kwargs = req.chat_template_kwargs or {}
    unknown = sorted(set(kwargs) - _TEMPLATE_KWARGS)
    if unknown:
        raise InvalidRequest(f"unsupported chat_template_kwargs: {', '.join(unknown)}", param="chat_template_kwargs")
    reasoning = resolve_reasoning(req.reasoning_effort, req.thinking, kwargs, state.default_reasoning_effort)
    drop = kwargs.get("drop_thinking", True)
    if not isinstance(drop, bool):
        raise InvalidRequest("chat_template_kwargs.drop_thinking must be a boolean", param="chat_template_kwargs")
    messages = [m.to_dict(i) for i, m in enumerate(req.messages)]
    rf = req.response_format  # shown to the model as the official encoder does
    rf = rf.model_dump(by_alias=True, exclude_none=True) if rf is not None else None
    check_continue_final(req)
    # the encoder continues a trailing assistant message when asked for a generation prompt
    generation_prompt = req.add_generation_prompt or req.continue_final_message
    segments = render_messages(messages, thinking=reasoning.thinking, reasoning_effort=reasoning.encoder_effort,
                               tools=tools, response_format=rf, add_generation_prompt=generation_prompt,
                               drop_thinking=drop)
    for text, _ in segments:
        check_text(text, "messages")
    return segments, reasoning


def tokenize_chat(state: ServerState, req: Any, limit: int | None = None,
                  tools: Any = _UNRESOLVED) -> tuple[str, list[int], ReasoningConfig]:
    """Prompt text, prompt token ids and reasoning mode of a chat request (also used by /tokenize;
    `tools`: the request's active tools when the caller resolved them, else resolved here).
    Message content is never tokenized into special tokens: only the template places them. A prompt
    of more than `limit` tokens raises `TooManyTokens` (its ids are never built)."""
    segments, reasoning = render_chat_prompt(state, req, _tools(req) if tools is _UNRESOLVED else tools)
    ids = state.engine.tokenizer.encode_segments(segments, limit)
    return "".join(text for text, _ in segments), ids, reasoning


def special_tokens(state: ServerState):
    """The tokenizer's chat special tokens; a 400 when this model's tokenizer cannot do chat."""
    if isinstance(state.special, Exception):
        raise APIError(400, f"this model's tokenizer cannot do chat ({state.special}); use /v1/completions")
    return state.special


def _forced_tool_calls(req: ChatCompletionRequest, tools: list[dict] | None) -> dict[str, Any] | None:
    """The tool-call grammar spec for tool_choice "required" (one or more calls, one if
    parallel_tool_calls is false) or a named function (exactly one call of it); None otherwise."""
    if tools is None or req.tool_choice in (None, "none", "auto"):
        return None
    one_call = isinstance(req.tool_choice, NamedToolChoice) or req.parallel_tool_calls is False
    return {"functions": [t["function"] for t in tools], "one_call": one_call}


@dataclass(frozen=True)
class ChatPlan:
    """One chat request, resolved once (`plan_chat`)."""

    prompt_ids: list[int]  # the rendered, tokenized (and truncated) prompt
    reasoning: ReasoningConfig  # the thinking mode of the reply
    tools: list[dict[str, Any]] | None  # the tools offered to the model (None: no tool use)
    guide: GuideSpec  # structured output; tool_choice "required" / named = the tool-call grammar
    forced: bool  # the reply is only tool-call markup (tool_choice "required" or named): never content
    extra: Mapping[str, Any]  # engine-side SamplingParams fields (special tokens kept, grammar start, budget)

    def sampling_params(self, req: ChatCompletionRequest) -> SamplingParams:
        """The request's sampling fields plus the plan's guide and extras (grammar not compiled yet)."""
        return req.to_sampling_params(self.guide, **self.extra)


def plan_chat(state: ServerState, req: ChatCompletionRequest) -> ChatPlan:
    """Render and tokenize the prompt and resolve tools, reasoning and structured output once; the
    combinations that cannot work are a 400 here."""
    special = special_tokens(state)
    engine = state.engine
    tools = req.active_tools()  # None: no tool use
    _, prompt_ids, reasoning = encode_within_limit(
        req, engine.max_model_len, req.max_completion_tokens or req.max_tokens,
        lambda limit: tokenize_chat(state, req, limit, tools))
    prompt_ids = req.truncate_prompt(prompt_ids, engine.max_model_len)
    guide = resolve_guide(req)
    if guide.is_choice and (reasoning.thinking or tools is not None):
        raise InvalidRequest("guided_choice constrains the whole reply: use it with thinking off "
                             "(reasoning_effort 'none') and without tools", param=guide.param)
    if guide.param is not None and tools is not None:
        raise InvalidRequest(f"{guide.param} decides the reply's text: it cannot be combined with tools "
                             "(set tool_choice 'none' or drop the tools)", param=guide.param)
    extra: dict[str, Any] = {"skip_special_tokens": False}
    forced = _forced_tool_calls(req, tools)
    if forced is not None:  # the reply is exactly a DSML block calling the allowed function(s)
        guide = GuideSpec("tool_choice", MappingProxyType({"guided_tool_calls": forced}))
    if guide.param is not None and not guide.is_choice and reasoning.thinking:
        extra["guided_start_token_id"] = special.think_end_id  # the grammar shapes the content
    extra.update(reasoning.budget_params(special.think_end_id))
    return ChatPlan(prompt_ids, reasoning, tools, guide, forced is not None, MappingProxyType(extra))
