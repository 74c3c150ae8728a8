"""POST /v1/completions (legacy): text or token prompts, batches of prompts, `n`, `echo`, and
logprobs in the legacy parallel-list shape. Choice index = prompt index * n + sample index.
Non-streaming requests read the engine's final-only outputs, streams its delta outputs."""

from __future__ import annotations

import asyncio
import time
from contextlib import suppress
from typing import Any, AsyncIterator

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from engine.outputs import OutputKind
from server.errors import InvalidRequest, check_text, sse_error
from server.guided_request import GuideSpec, attach_guide, resolve_guide
from server.prompt_length import encode_within_limit
from server.protocol import CompletionRequest, warn_unknown_fields
from server.serving_common import (SSE_DONE, ServerState, collect, first_output, legacy_logprobs, log_request,
                                   merge, new_id, prompt_logprobs_json, sse)


class _Prompt:
    def __init__(self, text: str, ids: list[int], request_id: str, params: Any) -> None:
        self.text, self.ids, self.request_id, self.params = text, ids, request_id, params


def _prepare(state: ServerState, req: CompletionRequest, guide: GuideSpec, base_id: str) -> list[_Prompt]:
    tok, engine = state.engine.tokenizer, state.engine
    prompts = []
    for i, p in enumerate(req.prompts()):
        if isinstance(p, str):
            ids = encode_within_limit(req, engine.max_model_len, req.max_tokens,  # too long: counted, no id list
                                      lambda limit: tok.encode(check_text(p, "prompt"), add_special_tokens=True,
                                                               limit=limit))
            text = p
        else:
            bad = [t for t in p if not 0 <= t < tok.vocab_size]
            if bad:
                raise InvalidRequest(f"token id {bad[0]} is out of range [0, {tok.vocab_size})", param="prompt")
            ids, text = list(p), tok.decode(p, skip_special_tokens=False)
        kept = req.truncate_prompt(ids, engine.max_model_len)
        if len(kept) < len(ids):  # echo shows what the model saw
            ids, text = kept, tok.decode(kept, skip_special_tokens=False)
        params = req.to_sampling_params(guide)  # admission (engine/admission.py) checks lengths
        prompts.append(_Prompt(text, ids, f"{base_id}-{i}", params))
    return prompts


def _usage(outs: list[Any]) -> dict[str, Any]:
    prompt = sum(len(o.prompt_token_ids) for o in outs)
    completion = sum(c.num_tokens for o in outs for c in o.outputs)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": sum(o.num_cached_tokens for o in outs)}}


async def create_completion(state: ServerState, req: CompletionRequest, raw_request: Request):
    req.check_supported()
    warn_unknown_fields(req, "/v1/completions")
    base_id = new_id("cmpl")
    guide = resolve_guide(req)  # once for all prompts of the batch
    prompts = await asyncio.to_thread(_prepare, state, req, guide, base_id)  # tokenizing megabytes: off the event loop
    engine = state.engine
    for p in prompts:  # one compile: the grammar cache serves the other prompts
        p.params = await attach_guide(engine, p.params, guide.param)
    kind = OutputKind.DELTA if req.stream else OutputKind.FINAL_ONLY
    gens = [(p.request_id, engine.generate(p.ids, p.params, p.request_id, output_kind=kind)) for p in prompts]
    timers = [state.metrics.timer(p.params.n) for p in prompts]
    started, created = time.monotonic(), int(time.time())
    if req.stream:
        firsts = []
        try:
            for (rid, gen), timer in zip(gens, timers):
                firsts.append(await first_output(raw_request, engine, gen, rid, timer))
        except BaseException:
            for timer in timers[:len(firsts)]:  # admitted, now aborted with the failed sibling
                timer.abort()
            for rid, gen in gens:
                with suppress(Exception):
                    await gen.aclose()
                with suppress(Exception):
                    await engine.abort(rid)
            raise
        body = _stream(state, req, prompts, gens, firsts, timers, base_id, created, started)
        return StreamingResponse(body, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    outs = await collect(raw_request, engine, gens, timers)
    state.check_not_aborted_by_shutdown(outs)
    choices = []
    for i, (p, out) in enumerate(zip(prompts, outs)):
        for c in sorted(out.outputs, key=lambda c: c.index):
            text = (p.text + c.text) if req.echo else c.text
            logprobs = None
            if req.logprobs is not None:
                ids = c.token_ids
                lps: list[Any] = list(c.logprobs or [])
                if req.echo:
                    ids = p.ids + ids
                    lps = list(out.prompt_logprobs or [None] * len(p.ids)) + lps
                logprobs = legacy_logprobs(state, ids, lps, req.logprobs, 0, req.return_tokens_as_token_ids)
            choice = {"index": i * req.n + c.index, "text": text, "logprobs": logprobs,
                      "finish_reason": c.finish_reason, "stop_reason": c.stop_reason}
            if req.prompt_logprobs is not None:
                choice["prompt_logprobs"] = prompt_logprobs_json(state, p.ids, out.prompt_logprobs or [],
                                                                 out.prompt_logprob_ranks, req.prompt_logprobs,
                                                                 req.return_tokens_as_token_ids)
            choices.append(choice)
        log_request(p.request_id, len(out.prompt_token_ids), sum(c.num_tokens for c in out.outputs), started,
                    [c.finish_reason for c in out.outputs])
    return JSONResponse({"id": base_id, "object": "text_completion", "created": created,
                         "model": state.served_model_name, "choices": choices, "usage": _usage(outs)})


async def _rest(first: Any, gen: AsyncIterator) -> AsyncIterator[Any]:
    if first is None:
        return
    yield first
    if first.finished:
        return
    async for out in gen:
        yield out


async def _stream(state: ServerState, req: CompletionRequest, prompts: list[_Prompt], gens, firsts, timers,
                  base_id: str, created: int, started: float) -> AsyncIterator[str]:
    n = req.n
    echo_pending = [[req.echo] * n for _ in prompts]  # the prompt text still to prepend to a choice
    done = [[False] * n for _ in prompts]  # choices whose finish was sent
    last: list[Any] = list(firsts)
    opts = req.stream_options
    base = {"id": base_id, "object": "text_completion", "created": created, "model": state.served_model_name}
    streams = merge([_rest(f, g) for f, (_, g) in zip(firsts, gens)])
    try:
        async for i, out in streams:
            last[i] = out
            timers[i].on_output(out)
            choices = []
            for c in out.outputs:  # delta outputs: text, token_ids and logprobs are what is new
                k = c.index
                if done[i][k]:
                    continue
                text = c.text
                if echo_pending[i][k]:
                    text, echo_pending[i][k] = prompts[i].text + text, False
                if c.finish_reason is not None:
                    done[i][k] = True
                elif not text and not c.token_ids:
                    continue
                logprobs = legacy_logprobs(state, c.token_ids, list(c.logprobs or []), req.logprobs, 0,
                                           req.return_tokens_as_token_ids) \
                    if req.logprobs is not None else None
                choices.append({"index": i * n + k, "text": text, "logprobs": logprobs,
                                "finish_reason": c.finish_reason, "stop_reason": c.stop_reason})
            if choices:
                body = dict(base, choices=choices)
                if opts and opts.continuous_usage_stats:
                    body["usage"] = _usage([o for o in last if o is not None])
                yield sse(body)
        done = [o for o in last if o is not None]
        if opts and opts.include_usage:
            yield sse(dict(base, choices=[], usage=_usage(done)))
        for p, o in zip(prompts, last):
            if o is not None:
                log_request(p.request_id, len(o.prompt_token_ids), sum(c.num_tokens for c in o.outputs),
                            started, [c.finish_reason for c in o.outputs])
    except Exception as e:
        yield sse_error(e)
    finally:
        with suppress(BaseException):
            await streams.aclose()
        for (rid, _), o, timer in zip(gens, last, timers):
            if o is None or not o.finished:
                timer.abort()
                with suppress(Exception):
                    await state.engine.abort(rid)
    yield SSE_DONE
