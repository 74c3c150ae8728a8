"""What the engine hands back per request: one `CompletionOutput` per sample, cumulative or delta.

`OutputKind` is chosen per request by the caller:

    CUMULATIVE  every step: all tokens / text / logprobs so far (a copy: O(tokens so far) per step)
    DELTA       every step: only what was added since the request's previous output (O(new tokens));
                streaming clients concatenate the pieces
    FINAL_ONLY  one cumulative output, once the request finished (non-streaming callers)

Every output lists all n samples in index order; in DELTA outputs a sample with nothing new has empty
`token_ids` / `text`, and one that finished earlier repeats its finish_reason with empty pieces.
`num_tokens` is always the sample's total count of generated tokens (usage), whatever the kind.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class OutputKind(enum.Enum):
    CUMULATIVE = "cumulative"
    DELTA = "delta"
    FINAL_ONLY = "final_only"


@dataclass(slots=True)
class CompletionOutput:
    index: int  # sample index k < n
    # CUMULATIVE / FINAL_ONLY: all generated tokens so far; DELTA: the tokens added since the last output
    token_ids: list[int] = field(default_factory=list)
    text: str = ""  # detokenized text, as token_ids (never contains a partial stop string)
    finish_reason: str | None = None  # None while running; "stop" | "length" | "abort"
    stop_reason: int | str | None = None  # the stop string / stop token id that ended it, if any
    # per token of token_ids: {token_id: logprob} with the sampled token and the top-k (None unless requested)
    logprobs: list[dict[int, float]] | None = None
    num_tokens: int | None = None  # generated tokens so far in all; None at construction = len(token_ids)

    def __post_init__(self) -> None:
        if self.num_tokens is None:
            self.num_tokens = len(self.token_ids)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass(slots=True)
class RequestOutput:
    request_id: str
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    # per prompt token: None for the first, else {token_id: logprob} (None unless requested; DELTA
    # outputs carry them once, in the first output)
    prompt_logprobs: list[dict[int, float] | None] | None = None
    prompt_logprob_ranks: list[int | None] | None = None  # per prompt token: its rank (1 = most likely)
    prompt: str | None = None
    finished: bool = False
    # timing (time.monotonic seconds): arrival, first scheduled, first token, finish
    metrics: dict[str, float] = field(default_factory=dict)
    num_cached_tokens: int = 0
    kind: OutputKind = OutputKind.CUMULATIVE  # what outputs[*].token_ids / text / logprobs hold


def merge_deltas(a: RequestOutput, b: RequestOutput) -> RequestOutput:
    """Two consecutive DELTA outputs of one request as one (a first): per sample the pieces concatenated, the
    state (finish / stop reason, token count, timings, cached tokens, finished) of the later one, the prompt
    logprobs of whichever carries them (the first output of a request). A streaming consumer that fell behind
    the engine takes the outputs waiting for it as one (engine/async_engine.py: fewer events, same text)."""
    if a.kind is not OutputKind.DELTA or b.kind is not OutputKind.DELTA or a.request_id != b.request_id:
        raise ValueError("merge_deltas takes consecutive DELTA outputs of one request")
    if a.finished:
        raise ValueError(f"request {a.request_id!r} already finished: nothing follows its last output")
    outs = []
    for x, y in zip(a.outputs, b.outputs, strict=True):
        lps = None if x.logprobs is None and y.logprobs is None else (x.logprobs or []) + (y.logprobs or [])
        outs.append(CompletionOutput(x.index, x.token_ids + y.token_ids, x.text + y.text, y.finish_reason,
                                     y.stop_reason, lps, y.num_tokens))
    first = a if a.prompt_logprobs is not None else b
    return RequestOutput(b.request_id, b.prompt_token_ids, outs, first.prompt_logprobs, first.prompt_logprob_ranks,
                         b.prompt if b.prompt is not None else a.prompt, b.finished, b.metrics, b.num_cached_tokens,
                         OutputKind.DELTA)
