"""POST /v1/chat/completions: render the V4 prompt, run the engine, parse reasoning / content /
tool calls, and answer as one JSON response (from the engine's final-only output) or as SSE chunks
(from its delta outputs: each step's new tokens, text and logprobs).

Reasoning is emitted under both `reasoning_content` and `reasoning` (serving.md §4.2). The engine
always decodes with special tokens kept so the parser can find `</think>` and the DSML markup;
`skip_special_tokens=false` from the client means "raw": no parsing, the text exactly as decoded.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import suppress
from typing import Any, AsyncIterator

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from engine.errors import RequestTooLongError
from engine.outputs import OutputKind
from engine.tokenizer import TooManyTokens
from chat.encoder import Segment, render_messages
from server.errors import APIError, InvalidRequest, check_text, sse_error
from server.guided_request import attach_guide, guided_kwargs, guided_param
from chat.output_parser import StreamingParser, parse_completion
from server.protocol import (ChatCompletionRequest, NamedToolChoice, check_continue_final,
                             warn_unknown_fields)
from chat.reasoning import ReasoningConfig, resolve_reasoning
from server.serving_common import (SSE_DONE, ServerState, chat_logprobs, collect, first_output, log_request,
                                   new_id, prompt_logprobs_json, sse)

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


def _special(state: ServerState):
    if isinstance(state.special, Exception):
        raise APIError(400, f"this model's tokenizer cannot do chat ({state.special}); use /v1/completions")
    return state.special


def _reasoning_tokens(token_ids: list[int], thinking: bool, think_end_id: int) -> int:
    if not thinking:
        return 0
    try:
        return token_ids.index(think_end_id)
    except ValueError:
        return len(token_ids)


class _ReasoningCount:
    """Reasoning tokens of one streamed choice, from its deltas: the tokens before the first `</think>`
    (all of them while it has not come), as `_reasoning_tokens` counts them on the whole list."""

    def __init__(self, thinking: bool, think_end_id: int) -> None:
        self.num, self.done, self.think_end_id = 0, not thinking, think_end_id

    def add(self, token_ids: list[int]) -> None:
        if self.done or not token_ids:
            return
        try:
            self.num += token_ids.index(self.think_end_id)
            self.done = True
        except ValueError:
            self.num += len(token_ids)


def _forced_tool_calls(req: ChatCompletionRequest, tools: list[dict] | None) -> dict[str, Any] | None:
    """The tool-call grammar spec for tool_choice "required" (one or more calls, one if
    parallel_tool_calls is false) or a named function (exactly one call of it); None otherwise."""
    if tools is None or req.tool_choice in (None, "none", "auto"):
        return None
    one_call = isinstance(req.tool_choice, NamedToolChoice) or req.parallel_tool_calls is False
    return {"functions": [t["function"] for t in tools], "one_call": one_call}


def _finish_reason(reason: str | None, has_tool_calls: bool) -> str | None:
    return "tool_calls" if reason == "stop" and has_tool_calls else reason


class _Ctx:
    """The plan of one chat request, resolved once (prompt ids, reasoning mode, tools, guide, sampling
    params) and shared by the streaming and non-streaming paths."""

    def __init__(self, state: ServerState, req: ChatCompletionRequest, raw_request: Request) -> None:
        req.check_supported()
        warn_unknown_fields(req, "/v1/chat/completions")
        self.state, self.req, self.raw_request = state, req, raw_request
        self.special = _special(state)
        engine = state.engine
        self.tools = tools = req.active_tools()  # None: no tool use
        try:  # without truncation a prompt must leave room for one generated token
            limit = None if req.truncate_prompt_tokens is not None else engine.max_model_len - 1
            _, prompt_ids, self.reasoning = tokenize_chat(state, req, limit, tools)
        except TooManyTokens as e:
            raise RequestTooLongError.for_lengths(engine.max_model_len, e.num_tokens,
                                                  req.max_completion_tokens or req.max_tokens) from None
        self.prompt_ids = req.truncate_prompt(prompt_ids, engine.max_model_len)
        self.guided_param = guided_param(req)
        is_choice = guided_kwargs(req).get("guided_choice") is not None or req.guided_choice is not None
        if is_choice and (self.reasoning.thinking or tools is not None):
            raise InvalidRequest("guided_choice constrains the whole reply: use it with thinking off "
                                 "(reasoning_effort 'none') and without tools", param=self.guided_param)
        if self.guided_param is not None and tools is not None:
            raise InvalidRequest(f"{self.guided_param} decides the reply's text: it cannot be combined with tools "
                                 "(set tool_choice 'none' or drop the tools)", param=self.guided_param)
        extra: dict[str, Any] = {"skip_special_tokens": False}
        forced = _forced_tool_calls(req, tools)
        self.forced = forced is not None  # the reply is only tool-call markup: never content
        if forced is not None:  # the reply is exactly a DSML block calling the allowed function(s)
            extra["guided_tool_calls"] = forced
            self.guided_param = "tool_choice"
        if self.guided_param is not None and not is_choice and self.reasoning.thinking:
            extra["guided_start_token_id"] = self.special.think_end_id  # the grammar shapes the content
        extra.update(self.reasoning.budget_params(self.special.think_end_id))
        self.params = req.to_sampling_params(**extra)  # lengths: checked at admission (engine/admission.py)
        self.raw = not req.skip_special_tokens
        self.parse = not self.raw
        self.tools_active = tools is not None
        self.request_id = new_id("chatcmpl")
        self.created = int(time.time())
        self.top_k = (req.top_logprobs or 0) if req.logprobs else 0
        self.started = time.monotonic()

    def usage(self, out, reasoning: int | None = None) -> dict[str, Any]:
        """Usage of `out`; `reasoning`: the count kept by a stream (delta outputs), else counted on the
        cumulative token ids of a final-only output."""
        completion = sum(c.num_tokens for c in out.outputs)
        if reasoning is None:
            assert out.kind is not OutputKind.DELTA, "a delta output needs the streamed reasoning count"
            reasoning = sum(_reasoning_tokens(c.token_ids, self.reasoning.thinking, self.special.think_end_id)
                            for c in out.outputs)
        return {"prompt_tokens": len(out.prompt_token_ids), "completion_tokens": completion,
                "total_tokens": len(out.prompt_token_ids) + completion,
                "prompt_tokens_details": {"cached_tokens": out.num_cached_tokens},
                "completion_tokens_details": {"reasoning_tokens": reasoning}}

    def log(self, out) -> None:
        log_request(self.request_id, len(out.prompt_token_ids), sum(c.num_tokens for c in out.outputs),
                    self.started, [c.finish_reason for c in out.outputs])


async def create_chat_completion(state: ServerState, req: ChatCompletionRequest, raw_request: Request):
    # rendering + tokenization take seconds on a multi-megabyte prompt: off the event loop
    ctx = await asyncio.to_thread(_Ctx, state, req, raw_request)
    ctx.params = await attach_guide(state.engine, ctx.params, ctx.guided_param)
    kind = OutputKind.DELTA if req.stream else OutputKind.FINAL_ONLY
    gen = state.engine.generate(ctx.prompt_ids, ctx.params, ctx.request_id, output_kind=kind)
    timer = state.metrics.timer(ctx.params.n)
    if req.stream:
        first = await first_output(raw_request, state.engine, gen, ctx.request_id, timer)
        return StreamingResponse(_stream(ctx, gen, first, timer), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})
    (out,) = await collect(raw_request, state.engine, [(ctx.request_id, gen)], [timer])
    state.check_not_aborted_by_shutdown([out])
    ctx.log(out)
    return JSONResponse(_response(ctx, out))


def _response(ctx: _Ctx, out) -> dict[str, Any]:
    choices = []
    for c in sorted(out.outputs, key=lambda c: c.index):
        message: dict[str, Any] = {"role": "assistant"}
        tool_calls: list[dict[str, Any]] = []
        if ctx.parse:
            parsed = parse_completion(c.text, thinking=ctx.reasoning.thinking, special=ctx.special,
                                      cut=c.finish_reason == "length")
            calls = parsed.tool_calls if ctx.tools_active else []
            if ctx.req.parallel_tool_calls is False:
                calls = calls[:1]
            tool_calls = [{"id": t.id, "type": "function", "function": {"name": t.name, "arguments": t.arguments_json}}
                          for t in calls]
            content = "" if ctx.forced else parsed.content
            message["content"] = content if (content or not tool_calls) else None
            message["reasoning_content"] = message["reasoning"] = parsed.reasoning
        else:
            message["content"] = c.text
        if tool_calls:
            message["tool_calls"] = tool_calls
        choice: dict[str, Any] = {"index": c.index, "message": message, "logprobs": None,
                                  "finish_reason": _finish_reason(c.finish_reason, bool(tool_calls)),
                                  "stop_reason": c.stop_reason}
        if ctx.req.logprobs:
            choice["logprobs"] = {"content": chat_logprobs(ctx.state, c.token_ids, c.logprobs, ctx.top_k,
                                                           ctx.req.return_tokens_as_token_ids)}
        choices.append(choice)
    body = {"id": ctx.request_id, "object": "chat.completion", "created": ctx.created,
            "model": ctx.state.served_model_name, "choices": choices, "usage": ctx.usage(out)}
    if ctx.req.prompt_logprobs is not None:  # vLLM puts them beside the choices
        body["prompt_logprobs"] = prompt_logprobs_json(ctx.state, ctx.prompt_ids, out.prompt_logprobs or [],
                                                       out.prompt_logprob_ranks, ctx.req.prompt_logprobs,
                                                       ctx.req.return_tokens_as_token_ids)
    return body


async def _stream(ctx: _Ctx, gen: AsyncIterator, first, timer) -> AsyncIterator[str]:
    req, n = ctx.req, ctx.params.n
    opts = req.stream_options
    include_usage = bool(opts and opts.include_usage)
    continuous = bool(opts and opts.continuous_usage_stats)
    parsers = [StreamingParser(ctx.reasoning.thinking, ctx.special) if ctx.parse else None for _ in range(n)]
    reasoning = [_ReasoningCount(ctx.reasoning.thinking, ctx.special.think_end_id) for _ in range(n)]
    num_calls = [0] * n
    base = {"id": ctx.request_id, "object": "chat.completion.chunk", "created": ctx.created,
            "model": ctx.state.served_model_name}

    def chunk(choices: list[dict[str, Any]], out) -> str:
        body = dict(base, choices=choices)
        if continuous and out is not None:
            body["usage"] = ctx.usage(out, sum(r.num for r in reasoning))
        return sse(body)

    def delta_for(c, final: bool) -> dict[str, Any] | None:
        k, new_text, new_ids = c.index, c.text, c.token_ids  # a delta output: only what is new
        delta: dict[str, Any] = {}
        if parsers[k] is None:
            if new_text:
                delta["content"] = new_text
        else:
            pieces = parsers[k].feed(new_text) if new_text else []
            if final:
                pieces += parsers[k].finish(cut=c.finish_reason == "length")
            for p in pieces:
                if p.reasoning:
                    delta["reasoning_content"] = delta.get("reasoning_content", "") + p.reasoning
                    delta["reasoning"] = delta["reasoning_content"]
                if p.content and not ctx.forced:
                    delta["content"] = delta.get("content", "") + p.content
                tc = p.tool_call
                if tc and ctx.tools_active and not (req.parallel_tool_calls is False and tc.index > 0):
                    num_calls[k] += 1
                    entry: dict[str, Any] = {"index": tc.index, "function": {"arguments": tc.arguments}}
                    if tc.id is not None:
                        entry.update(id=tc.id, type="function")
                        entry["function"]["name"] = tc.name
                    delta.setdefault("tool_calls", []).append(entry)
        choice: dict[str, Any] = {"index": k, "delta": delta, "logprobs": None, "finish_reason": None}
        if req.logprobs and new_ids:
            choice["logprobs"] = {"content": chat_logprobs(ctx.state, new_ids, c.logprobs, ctx.top_k,
                                                           req.return_tokens_as_token_ids)}
        if final:
            choice["finish_reason"] = _finish_reason(c.finish_reason, num_calls[k] > 0)
            choice["stop_reason"] = c.stop_reason
            return choice
        return choice if (delta or choice["logprobs"]) else None

    out = first
    finished = [False] * n
    try:
        yield chunk([{"index": k, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                      "finish_reason": None} for k in range(n)], None)
        pending = [first] if first is not None else []
        while True:
            for out in pending:
                timer.on_output(out)
                choices = []
                for c in out.outputs:
                    reasoning[c.index].add(c.token_ids)
                    if finished[c.index]:
                        continue
                    ch = delta_for(c, c.finish_reason is not None)
                    finished[c.index] = c.finish_reason is not None
                    if ch is not None:
                        choices.append(ch)
                if choices:
                    yield chunk(choices, out)
            if out is None or out.finished:
                break
            try:
                pending = [await gen.__anext__()]
            except StopAsyncIteration:
                break
        if include_usage and out is not None:
            yield sse(dict(base, choices=[], usage=ctx.usage(out, sum(r.num for r in reasoning))))
        if out is not None:
            ctx.log(out)
    except Exception as e:  # mid-stream failure: the status line is gone, report in-band
        yield sse_error(e)
    finally:
        if out is None or not out.finished:
            timer.abort()
            with suppress(Exception):
                await gen.aclose()
            with suppress(Exception):
                await ctx.state.engine.abort(ctx.request_id)
    yield SSE_DONE
