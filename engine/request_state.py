"""Per-request bookkeeping of the engine: its n sequences, their detokenizers, generators, logprobs,
timing, and the cumulative `RequestOutput` snapshots handed to callers."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from .detokenizer import IncrementalDetokenizer
from .outputs import CompletionOutput, RequestOutput
from .sampling_params import SamplingParams
from .sequence import Sequence, SequenceStatus


@dataclass
class SampleState:
    seq: Sequence
    detok: IncrementalDetokenizer
    generator: torch.Generator | None  # seeded requests only
    logprobs: list[dict[int, float]] | None  # per generated token, when requested
    finish_reason: str | None = None
    stop_reason: int | str | None = None


@dataclass
class RequestState:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    samples: list[SampleState]
    arrival_time: float = field(default_factory=time.monotonic)
    prompt_logprobs: list[dict[int, float] | None] | None = None  # filled as prompt chunks run
    metrics: dict[str, float] = field(default_factory=dict)
    num_prompt_tokens_counted: int = 0  # prompt tokens of sample 0 already in prompt_tokens_total
    final_only: bool = False  # the caller wants only the finished output (non-streaming): no per-step copies

    def __post_init__(self) -> None:
        self._num_unfinished = sum(s.finish_reason is None for s in self.samples)

    @property
    def finished(self) -> bool:
        return self._num_unfinished == 0  # O(1): read twice per request per step

    def finish_sample(self, k: int, reason: str, stop_reason: int | str | None = None) -> None:
        s = self.samples[k]
        if s.finish_reason is None:
            s.finish_reason, s.stop_reason = reason, stop_reason
            self._num_unfinished -= 1
            if self.finished:
                self.metrics.setdefault("finished", time.monotonic())

    def snapshot(self) -> RequestOutput:
        """A copy safe to hand to another thread (later steps do not mutate it)."""
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
        return RequestOutput(
            request_id=self.request_id,
            prompt_token_ids=self.prompt_token_ids,
            outputs=outs,
            prompt_logprobs=list(self.prompt_logprobs) if self.prompt_logprobs is not None else None,
            prompt=self.prompt,
            finished=self.finished,
            metrics=dict(self.metrics),
        )


