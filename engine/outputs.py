"""What the engine hands back per request: cumulative outputs, one `CompletionOutput` per sample."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class CompletionOutput:
    index: int  # sample index k < n
    token_ids: list[int] = field(default_factory=list)  # all generated tokens so far
    text: str = ""  # detokenized text so far (never contains a partial stop string)
    finish_reason: str | None = None  # None while running; "stop" | "length" | "abort"
    stop_reason: int | str | None = None  # the stop string / stop token id that ended it, if any
    # per generated token: {token_id: logprob} with the sampled token and the top-k (None unless requested)
    logprobs: list[dict[int, float]] | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestOutput:
    request_id: str
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    # per prompt token: None for the first, else {token_id: logprob} (None unless requested)
    prompt_logprobs: list[dict[int, float] | None] | None = None
    prompt: str | None = None
    finished: bool = False
    # timing (time.monotonic seconds): arrival, first scheduled, first token, finish
    metrics: dict[str, float] = field(default_factory=dict)
    num_cached_tokens: int = 0
