"""A fake `AsyncLLM` for HTTP tests: real tokenizer, scripted deterministic generation.

The reply depends on the prompt: thinking mode (prompt ends with `<think>`) produces
`reasoning</think>answer`, a prompt with a tools block produces a DSML tool call, anything else
plain text. One token per step, `step_delay` seconds apart; closing the iterator records an abort.
It finishes on EOS and max_tokens only: stop strings and stop token ids are the real engine's (tests
of them run the demo-model engine), the fake refuses them.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from engine.admission import admit
from engine.errors import QueueFullError
from engine.outputs import CompletionOutput, OutputKind, RequestOutput
from engine.tokenizer import Tokenizer

SPECIALS = ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>", "<think>",
            "</think>", "｜DSML｜"]
CORPUS = ["The quick brown fox jumps over the lazy dog.", "Hello world from the fake engine, tokens stream out.",
          "Let me think about the weather in Paris and answer.", '{"city": "Paris"} get_weather name string true'] * 4
ANSWER = "Hello world from the fake engine."
REASONING = "Let me think about it."
TOOL_TEXT = ('\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name="get_weather">\n'
             '<｜DSML｜parameter name="city" string="true">Paris</｜DSML｜parameter>\n'
             '</｜DSML｜invoke>\n</｜DSML｜tool_calls>')


def build_tokenizer() -> Tokenizer:
    raw = HFTokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    raw.train_from_iterator(CORPUS, trainer)
    return Tokenizer(raw)


@dataclass
class FakeStats:
    num_running: int = 0
    num_waiting: int = 0
    kv_cache_usage: float = 0.0
    num_preemptions_total: int = 0
    prompt_tokens_total: int = 0
    generation_tokens_total: int = 0
    prefix_cache_queries_total: int = 0  # EngineStats' fields the metrics collector reads
    prefix_cache_hits_total: int = 0
    spec_decode: object = None
    steps: object = None  # engine.step_stats.StepStats (None: the fake runs no engine steps)
    kernel_compiles_total: int = 0
    kernel_compile_seconds_total: float = 0.0


class FakeAsyncLLM:
    def __init__(self, *, max_model_len: int = 2048, step_delay: float = 0.001, ready: bool = True) -> None:
        self.tokenizer = build_tokenizer()
        self.model_name = "fake-v4"
        self.max_model_len = max_model_len
        self.step_delay = step_delay
        self.is_ready = False
        self.release = threading.Event()  # start() finishes once set
        if ready:
            self.release.set()
        self.queue_full = False
        self.aborted: list[str] = []
        self.started = self.shut_down = False
        self._stats = FakeStats()

    async def start(self) -> None:
        self.started = True
        while not self.release.is_set():
            await asyncio.sleep(0.01)
        self.is_ready = True

    async def shutdown(self, timeout: float = 5.0) -> None:
        self.shut_down = True
        self.is_ready = False

    async def abort(self, request_id: str) -> None:
        if request_id not in self.aborted:
            self.aborted.append(request_id)

    def stats(self) -> FakeStats:
        return self._stats

    def _script(self, prompt_ids: list[int]) -> str:
        prompt = self.tokenizer.decode(prompt_ids, skip_special_tokens=False)
        text = ANSWER
        if "## Tools" in prompt:
            text = "" + TOOL_TEXT
        if prompt.endswith("<think>"):
            text = REASONING + "</think>" + text
        return text + SPECIALS[1]

    def generate(self, prompt_token_ids: list[int], params, request_id: str,
                 output_kind: OutputKind = OutputKind.CUMULATIVE):
        return self._generate(list(prompt_token_ids), params, request_id, output_kind)

    async def _generate(self, prompt_ids: list[int], params, request_id: str,
                        output_kind: OutputKind = OutputKind.CUMULATIVE):
        final_only, delta = output_kind is OutputKind.FINAL_ONLY, output_kind is OutputKind.DELTA
        sent_tokens, sent_text = [0] * params.n, [0] * params.n  # delta: what earlier outputs carried
        arrival = time.monotonic()
        max_tokens = admit(len(prompt_ids), params.max_tokens, params.n, max_model_len=self.max_model_len,
                           kv_capacity=None, num_waiting=0, max_queued=None, min_tokens=params.min_tokens)  # the real admission rule
        if self.queue_full:
            raise QueueFullError("request queue is full")
        if params.stop or params.stop_token_ids:  # the real demo engine is cheap: test_api_real_* cover these
            raise NotImplementedError("the fake engine has no stop strings / stop token ids")
        tok = self.tokenizer
        script = tok.encode(self._script(prompt_ids))
        outs = [CompletionOutput(index=k, logprobs=[] if params.logprobs is not None else None)
                for k in range(params.n)]
        metrics = {"arrival": arrival, "first_scheduled": time.monotonic()}
        prompt_lps = None
        if params.prompt_logprobs is not None:
            prompt_lps = [None] + [{t: -1.0} for t in prompt_ids[1:]]
        self._stats.num_running += 1
        self._stats.prompt_tokens_total += len(prompt_ids)
        finished = False
        try:
            step = 0
            while True:
                await asyncio.sleep(self.step_delay)
                tid = script[step % len(script)] if (params.ignore_eos or step < len(script)) else tok.eos_token_id
                step += 1
                for o in outs:
                    o.token_ids.append(tid)
                    if o.logprobs is not None:
                        o.logprobs.append({tid: -0.5, **{t: -2.0 - t / 1000 for t in (5, 6, 7) if t != tid}})
                    ids = o.token_ids[:-1] if tid == tok.eos_token_id and not params.ignore_eos else o.token_ids
                    o.text = tok.decode(ids, skip_special_tokens=params.skip_special_tokens)
                    if tid == tok.eos_token_id and not params.ignore_eos:
                        o.finish_reason = "stop"
                    elif len(o.token_ids) >= max_tokens:
                        o.finish_reason = "length"
                self._stats.generation_tokens_total += len(outs)
                metrics.setdefault("first_token", time.monotonic())
                finished = all(o.finished for o in outs)
                if finished:
                    metrics["finished"] = time.monotonic()
                if final_only and not finished:
                    continue  # like the real engine: non-streaming callers get the finished output only
                if delta:  # like the real engine: what was added since the previous output
                    copies = [CompletionOutput(o.index, o.token_ids[sent_tokens[o.index]:],
                                               o.text[sent_text[o.index]:], o.finish_reason, o.stop_reason,
                                               o.logprobs[sent_tokens[o.index]:] if o.logprobs is not None else None,
                                               num_tokens=len(o.token_ids)) for o in outs]
                    for o in outs:
                        sent_tokens[o.index], sent_text[o.index] = len(o.token_ids), len(o.text)
                else:
                    copies = [CompletionOutput(o.index, list(o.token_ids), o.text, o.finish_reason, o.stop_reason,
                                               list(o.logprobs) if o.logprobs is not None else None) for o in outs]
                yield RequestOutput(request_id=request_id, prompt_token_ids=prompt_ids, outputs=copies,
                                    prompt_logprobs=prompt_lps, finished=finished, metrics=dict(metrics),
                                    kind=output_kind)
                prompt_lps = None
                if finished:
                    return
        finally:
            self._stats.num_running -= 1
            if not finished:
                await self.abort(request_id)
