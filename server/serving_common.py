"""Plumbing shared by the chat and completions handlers: engine iteration with disconnect
watching, SSE framing, logprob shapes, per-request logging."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable

from fastapi import Request

from engine.outputs import RequestOutput
from server.errors import APIError
from server.metrics import ServerMetrics

logger = logging.getLogger("v4serve.server")


@dataclass
class ServerState:
    """Everything a handler needs, built once by `create_app`."""

    engine: Any  # engine.async_engine.AsyncLLM (or a test double with the same interface)
    served_model_name: str
    metrics: ServerMetrics
    default_reasoning_effort: str | None = None
    special: Any = None  # chat.encoder.SpecialTokens, or the ValueError saying why not
    token_text_cache: dict[int, str] = field(default_factory=dict)
    drain: Any = None  # server.shutdown.Drain: `aborted` once shutdown cut the requests in flight

    def check_not_aborted_by_shutdown(self, outs: list[RequestOutput]) -> None:
        """A non-streaming request aborted by the bounded shutdown gets a 503 envelope, not a reply."""
        if self.drain is not None and self.drain.aborted and \
                any(c.finish_reason == "abort" for o in outs for c in o.outputs):
            raise APIError(503, "the server is shutting down: the request was aborted")

    def token_namer(self, as_ids: bool | None) -> Callable[[int], str]:
        """How logprobs name a token: its text, or "token_id:{id}" (vLLM's return_tokens_as_token_ids)."""
        return _token_id_name if as_ids else self.token_text

    def token_text(self, token_id: int) -> str:
        text = self.token_text_cache.get(token_id)
        if text is None:
            text = self.engine.tokenizer.decode([token_id], skip_special_tokens=False)
            if len(self.token_text_cache) < 1_000_000:
                self.token_text_cache[token_id] = text
        return text


def _token_id_name(token_id: int) -> str:
    return f"token_id:{token_id}"


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False, separators=(',', ':'))}\n\n"


SSE_DONE = "data: [DONE]\n\n"


async def wait_disconnect(request: Request) -> None:
    """Returns once the client has gone (the body is already read, so only disconnect arrives)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _with_disconnect(request: Request, coro, on_disconnect) -> Any:
    task = asyncio.ensure_future(coro)
    watcher = asyncio.ensure_future(wait_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            task.cancel()
            with suppress(BaseException):
                await task
            await on_disconnect()
            raise APIError(499, "client disconnected")
        return task.result()
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()


async def first_output(request: Request, engine: Any, gen: AsyncIterator[RequestOutput],
                       request_id: str, timer: Any = None) -> RequestOutput | None:
    """Admit the request and wait for its first output, so admission errors still get an HTTP status."""
    async def nxt() -> RequestOutput | None:
        try:
            return await gen.__anext__()
        except StopAsyncIteration:
            return None

    async def on_disconnect() -> None:
        if timer is not None:
            timer.abort()
        await engine.abort(request_id)
    return await _with_disconnect(request, nxt(), on_disconnect)


async def collect(request: Request, engine: Any, gens: list[tuple[str, AsyncIterator[RequestOutput]]],
                  timers: list[Any]) -> list[RequestOutput]:
    """Run every generator (final-only outputs: non-streaming) to completion; a client disconnect
    aborts all of them."""
    async def run(gen: AsyncIterator[RequestOutput], timer: Any) -> RequestOutput:
        last, prompt_logprobs, ranks = None, None, None
        async for out in gen:
            timer.on_output(out)
            if out.prompt_logprobs is not None and prompt_logprobs is None:  # kept if an earlier output carried them
                prompt_logprobs, ranks = out.prompt_logprobs, out.prompt_logprob_ranks
            last = out
        if last is None:
            raise RuntimeError("engine produced no output")
        if last.prompt_logprobs is None:
            last.prompt_logprobs, last.prompt_logprob_ranks = prompt_logprobs, ranks
        return last

    async def abort_all() -> None:
        for t in timers:
            t.abort()
        for rid, gen in gens:
            with suppress(Exception):
                await gen.aclose()
            with suppress(Exception):
                await engine.abort(rid)

    async def run_all() -> list[RequestOutput]:
        tasks = [asyncio.ensure_future(run(g, t)) for (_, g), t in zip(gens, timers)]
        try:
            return list(await asyncio.gather(*tasks))
        finally:
            for t in tasks:
                t.cancel()

    return await _with_disconnect(request, run_all(), abort_all)


async def merge(gens: list[AsyncIterator[Any]]) -> AsyncIterator[tuple[int, Any]]:
    """Interleave several async iterators as (index, item); closing the merge closes all of them."""
    if len(gens) == 1:
        async for item in gens[0]:
            yield 0, item
        return
    queue: asyncio.Queue = asyncio.Queue()
    done = object()

    async def pump(i: int, g: AsyncIterator[Any]) -> None:
        try:
            async for item in g:
                await queue.put((i, item, None))
        except BaseException as e:  # forwarded to the consumer
            await queue.put((i, None, e))
            return
        await queue.put((i, done, None))

    tasks = [asyncio.ensure_future(pump(i, g)) for i, g in enumerate(gens)]
    try:
        remaining = len(gens)
        while remaining:
            i, item, exc = await queue.get()
            if exc is not None:
                raise exc
            if item is done:
                remaining -= 1
                continue
            yield i, item
    finally:
        for t in tasks:
            t.cancel()
        for g in gens:
            with suppress(BaseException):
                await g.aclose()


def top_entries(lp: dict[int, float], k: int) -> list[tuple[int, float]]:
    return sorted(lp.items(), key=lambda kv: -kv[1])[:k]


def chat_logprobs(state: ServerState, token_ids: list[int], logprobs: list[dict[int, float]] | None,
                  top_k: int, as_ids: bool | None = None) -> list[dict[str, Any]]:
    """OpenAI chat shape: one entry per token with its top alternatives (`as_ids`: tokens named
    "token_id:{id}", their bytes those of that name)."""
    name = state.token_namer(as_ids)
    out = []
    for tid, lp in zip(token_ids, logprobs or []):
        text = name(tid)
        out.append({"token": text, "logprob": max(lp.get(tid, -9999.0), -9999.0),
                    "bytes": list(text.encode("utf-8")),
                    "top_logprobs": [{"token": name(t), "logprob": max(v, -9999.0),
                                      "bytes": list(name(t).encode("utf-8"))}
                                     for t, v in top_entries(lp, top_k)]})
    return out


def legacy_logprobs(state: ServerState, token_ids: list[int], logprobs: list[dict[int, float] | None],
                    top_k: int, offset: int, as_ids: bool | None = None) -> dict[str, Any]:
    """Legacy completions shape: parallel lists; `None` entries (first prompt token) stay None.
    `as_ids`: tokens named "token_id:{id}"; text offsets still count the decoded text."""
    name = state.token_namer(as_ids)
    tokens, token_lps, tops, offsets = [], [], [], []
    for tid, lp in zip(token_ids, logprobs):
        tokens.append(name(tid))
        offsets.append(offset)
        offset += len(state.token_text(tid))
        if lp is None:
            token_lps.append(None)
            tops.append(None)
            continue
        token_lps.append(max(lp.get(tid, -9999.0), -9999.0))
        tops.append({name(t): max(v, -9999.0) for t, v in top_entries(lp, top_k)} if top_k else None)
    return {"tokens": tokens, "token_logprobs": token_lps, "top_logprobs": tops, "text_offset": offsets}


def prompt_logprobs_json(state: ServerState, prompt_ids: list[int], logprobs: list[dict[int, float] | None],
                         ranks: list[int | None] | None, top_k: int, as_ids: bool | None = None) -> list[Any]:
    """vLLM's `prompt_logprobs`: None for the first token, then {token id: {logprob, rank,
    decoded_token}} with the prompt token (its true rank) and the top_k most likely tokens."""
    name = state.token_namer(as_ids)
    out: list[Any] = []
    for i, (tid, lp) in enumerate(zip(prompt_ids, logprobs)):
        if lp is None:
            out.append(None)
            continue
        entry = {str(tid): {"logprob": max(lp.get(tid, -9999.0), -9999.0),
                            "rank": ranks[i] if ranks is not None else None, "decoded_token": name(tid)}}
        for rank, (t, v) in enumerate(top_entries(lp, top_k), start=1):
            entry.setdefault(str(t), {"logprob": max(v, -9999.0), "rank": rank, "decoded_token": name(t)})
        out.append(entry)
    return out


def log_request(request_id: str, prompt_tokens: int, completion_tokens: int, started: float,
                finish_reasons: list[str | None]) -> None:
    logger.info("request %s prompt_tokens=%d completion_tokens=%d latency=%.3fs finish=%s", request_id,
                prompt_tokens, completion_tokens, time.monotonic() - started,
                ",".join(str(r) for r in finish_reasons))
