"""Per-request bookkeeping of the engine: its n sequences, their detokenizers, generators, logprobs,
timing, and the `RequestOutput`s handed to callers (cumulative snapshots or deltas, see outputs.py)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from .detokenizer import IncrementalDetokenizer
from .guided.grammar import GuideCursor
from .outputs import CompletionOutput, OutputKind, RequestOutput
from .sampling_params import SamplingParams
from .sequence import Sequence


@dataclass
class SampleState:
    seq: Sequence
    detok: IncrementalDetokenizer
    generator: torch.Generator | None  # seeded requests only
    logprobs: list[dict[int, float]] | None  # per generated token, when requested
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    num_tokens_sent: int = 0  # DELTA: generated tokens (and logprobs) already in an output
    guide: GuideCursor | None = None  # structured output: this sequence's place in the grammar


@dataclass
class RequestState:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    samples: list[SampleState]
    arrival_time: float = field(default_factory=time.monotonic)
    prompt_logprobs: list[dict[int, float] | None] | None = None  # filled as prompt chunks run
    prompt_logprob_ranks: list[int | None] | None = None  # the prompt token's rank, beside them
    # time.monotonic() of arrival / first_scheduled (before its first forward) / first_token (after
    # it) / finished (last token); replaced, never mutated (mark()), so outputs share it without a copy
    metrics: dict[str, float] = field(default_factory=dict)
    num_prompt_tokens_counted: int = 0  # prompt tokens of sample 0 already in prompt_tokens_total
    output_kind: OutputKind = OutputKind.CUMULATIVE  # what the caller wants each step (outputs.py)
    prompt_logprobs_sent: bool = False  # DELTA: prompt logprobs already in an output

    def __post_init__(self) -> None:
        self._num_unfinished = sum(s.finish_reason is None for s in self.samples)

    @property
    def finished(self) -> bool:
        return self._num_unfinished == 0  # O(1): read twice per request per step

    def mark(self, event: str, t: float) -> None:
        """Record the first time of `event` (copy-on-write: outputs already made keep their dict)."""
        if event not in self.metrics:
            self.metrics = {**self.metrics, event: t}

    def finish_sample(self, k: int, reason: str, stop_reason: int | str | None = None) -> None:
        s = self.samples[k]
        if s.finish_reason is None:
            s.finish_reason, s.stop_reason = reason, stop_reason
            self._num_unfinished -= 1
            if self.finished:
                self.mark("finished", time.monotonic())

    def make_output(self) -> RequestOutput:
        """The output of this request in its kind: a delta for DELTA, else a cumulative snapshot."""
        return self.delta() if self.output_kind is OutputKind.DELTA else self.snapshot()

    def snapshot(self) -> RequestOutput:
        """A cumulative copy safe to hand to another thread (later steps do not mutate it): O(tokens)."""
        outs = [
            CompletionOutput(
                index=k,
                token_ids=list(s.seq.output_token_ids),
                text=s.detok.text,
                finish_reason=s.finish_reason,
                stop_reason=s.stop_reason,
                logprobs=list(s.logprobs) if s.logprobs is not None else None,
            )
            for k, s in enumerate(self.samples)
        ]
        prompt_lps = list(self.prompt_logprobs) if self.prompt_logprobs is not None else None
        kind = OutputKind.FINAL_ONLY if self.output_kind is OutputKind.FINAL_ONLY else OutputKind.CUMULATIVE
        return self._output(outs, prompt_lps, kind)

    def delta(self) -> RequestOutput:
        """What was added since the previous delta (tokens, text, logprobs): O(new tokens).

        Prompt logprobs ride on one output only: the first one after sample 0 (the sample whose
        prefill computes them) sampled a token, or the finished one."""
        outs = []
        for k, s in enumerate(self.samples):
            ids = s.seq.output_token_ids
            sent = s.num_tokens_sent
            s.num_tokens_sent = num = len(ids)
            lps = s.logprobs[sent:] if s.logprobs is not None else None
            # positional (hot path): index, token_ids, text, finish_reason, stop_reason, logprobs, num_tokens
            outs.append(CompletionOutput(k, ids[sent:], s.detok.take_new_text(), s.finish_reason, s.stop_reason,
                                         lps, num))
        prompt_lps = None
        if self.prompt_logprobs is not None and not self.prompt_logprobs_sent and (
                self.samples[0].seq.output_token_ids or self.finished):
            prompt_lps, self.prompt_logprobs_sent = list(self.prompt_logprobs), True
        return self._output(outs, prompt_lps, OutputKind.DELTA)

    def _output(self, outs: list[CompletionOutput], prompt_lps, kind: OutputKind) -> RequestOutput:
        return RequestOutput(
            request_id=self.request_id,
            prompt_token_ids=self.prompt_token_ids,
            outputs=outs,
            prompt_logprobs=prompt_lps,
            prompt_logprob_ranks=list(self.prompt_logprob_ranks) if prompt_lps is not None else None,
            prompt=self.prompt,
            finished=self.finished,
            metrics=self.metrics,
            num_cached_tokens=max(0, self.samples[0].seq.num_cached_tokens),  # prefix-cache hit (usage)
            kind=kind,
        )
