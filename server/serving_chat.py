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

from chat.output_parser import StreamingParser, parse_completion
from engine.outputs import OutputKind
from server.chat_plan import plan_chat, special_tokens
from server.errors import sse_error
from server.guided_request import attach_guide
from server.protocol import ChatCompletionRequest, warn_unknown_fields
from server.serving_common import (SSE_DONE, ServerState, chat_logprobs, collect, first_output, log_request,
                                   new_id, prompt_logprobs_json, sse)

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


def _finish_reason(reason: str | None, has_tool_calls: bool) -> str | None:
    return "tool_calls" if reason == "stop" and has_tool_calls else reason


class _Ctx:
    """One chat request being served: its plan (`server/chat_plan.py`, resolved once), sampling params,
    id and timing, shared by the streaming and non-streaming paths."""

    def __init__(self, state: ServerState, req: ChatCompletionRequest, raw_request: Request) -> None:
        req.check_supported()
        warn_unknown_fields(req, "/v1/chat/completions")
        self.state, self.req, self.raw_request = state, req, raw_request
        self.special = special_tokens(state)
        self.plan = plan_chat(state, req)
        self.params = self.plan.sampling_params(req)  # lengths: checked at admission (engine/admission.py)
        self.parse = req.skip_special_tokens  # false = raw: the text exactly as decoded, no parsing
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
            reasoning = sum(_reasoning_tokens(c.token_ids, self.plan.reasoning.thinking, self.special.think_end_id)
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
    ctx.params = await attach_guide(state.engine, ctx.params, ctx.plan.guide.param)
    kind = OutputKind.DELTA if req.stream else OutputKind.FINAL_ONLY
    gen = state.engine.generate(ctx.plan.prompt_ids, ctx.params, ctx.request_id, output_kind=kind)
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
            parsed = parse_completion(c.text, thinking=ctx.plan.reasoning.thinking, special=ctx.special,
                                      cut=c.finish_reason == "length")
            calls = parsed.tool_calls if ctx.plan.tools is not None else []
            if ctx.req.parallel_tool_calls is False:
                calls = calls[:1]
            tool_calls = [{"id": t.id, "type": "function", "function": {"name": t.name, "arguments": t.arguments_json}}
                          for t in calls]
            content = "" if ctx.plan.forced else parsed.content
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
        body["prompt_logprobs"] = prompt_logprobs_json(ctx.state, ctx.plan.prompt_ids, out.prompt_logprobs or [],
                                                       out.prompt_logprob_ranks, ctx.req.prompt_logprobs,
                                                       ctx.req.return_tokens_as_token_ids)
    return body


async def _stream(ctx: _Ctx, gen: AsyncIterator, first, timer) -> AsyncIterator[str]:
    req, n = ctx.req, ctx.params.n
    opts = req.stream_options
    include_usage = bool(opts and opts.include_usage)
    continuous = bool(opts and opts.continuous_usage_stats)
    parsers = [StreamingParser(ctx.plan.reasoning.thinking, ctx.special) if ctx.parse else None for _ in range(n)]
    reasoning = [_ReasoningCount(ctx.plan.reasoning.thinking, ctx.special.think_end_id) for _ in range(n)]
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
                if p.content and not ctx.plan.forced:
                    delta["content"] = delta.get("content", "") + p.content
                tc = p.tool_call
                if tc and ctx.plan.tools is not None and not (req.parallel_tool_calls is False and tc.index > 0):
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
