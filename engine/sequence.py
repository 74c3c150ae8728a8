"""Sequence: one sample stream of a request (a request with n samples has n sequences).

A sequence is the unit the scheduler and the cache manager see. Its progress is one number,
`num_computed_tokens` (tokens whose state is in the cache); each step closes part of the gap to
`num_tokens`. Prefill and decode are not states: a decoding sequence simply has a gap of 1.

    prompt_token_ids              output_token_ids
    [p0 p1 p2 ... p(P-1)]         [o0 o1 ... o(k-1)]
    |<------ num_computed_tokens ------->|<- gap ->|
    |<------------------ num_tokens -------------->|
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

from kvcache.block_pool import hash_block_tokens


class SequenceStatus(enum.IntEnum):
    WAITING = 0  # queued (new, or preempted and waiting to recompute)
    RUNNING = 1  # holds a state slot and blocks; scheduled every step until finished
    FINISHED_STOPPED = 2  # EOS / stop token / stop string
    FINISHED_LENGTH = 3  # max_tokens (or max_model_len) reached
    FINISHED_ABORTED = 4  # client abort / disconnect

    @property
    def is_finished(self) -> bool:
        return self >= SequenceStatus.FINISHED_STOPPED

    @property
    def finish_reason(self) -> str | None:
        """The OpenAI finish_reason of a finished status ("stop" | "length" | "abort"), else None."""
        return _FINISH_REASONS.get(self)


_FINISH_REASONS = {
    SequenceStatus.FINISHED_STOPPED: "stop",
    SequenceStatus.FINISHED_LENGTH: "length",
    SequenceStatus.FINISHED_ABORTED: "abort",
}


@dataclass(eq=False)  # identity equality: list.remove / `in` must never confuse two sequences
class Sequence:
    seq_id: str  # unique among live sequences: f"{request_id}#{sample_index}" (engine/llm_engine.py)
    request_id: str  # the request this sample belongs to (abort works per request)
    sample_index: int  # k in [0, n)
    prompt_token_ids: list[int]
    max_tokens: int  # cap on generated tokens
    output_token_ids: list[int] = field(default_factory=list)  # generated so far
    arrival_time: float = field(default_factory=time.monotonic)  # scheduling priority (earlier first)
    num_computed_tokens: int = 0  # tokens whose state is in the cache (reset to 0 by preemption)
    status: SequenceStatus = SequenceStatus.WAITING
    num_preemptions: int = 0  # times this sequence was preempted (its work recomputed)
    # prefix caching (kvcache/prefix_cache.py)
    prefix_lookup: bool = True  # False: never reuse cached blocks (prompt logprobs need every position)
    num_cached_tokens: int = -1  # tokens reused at the first admission (-1 = not admitted yet)
    block_hashes: list[int] = field(default_factory=list)  # chain hashes of the leading full blocks
    snapshot_points: list[int] = field(default_factory=list)  # boundaries still to snapshot, ascending
    # async scheduling: tokens sampled on the device but not appended yet (engine/async_step.py);
    # the scheduler counts them in the sequence's length, `output_token_ids` does not hold them
    num_pending_tokens: int = 0

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def is_finished(self) -> bool:
        return self.status.is_finished

    def token_at(self, i: int) -> int:
        """Token at absolute position i (0 <= i < num_tokens)."""
        p = len(self.prompt_token_ids)
        return self.prompt_token_ids[i] if i < p else self.output_token_ids[i - p]

    def tokens(self, start: int, end: int) -> list[int]:
        """Tokens at positions [start, end) (O(end - start))."""
        p = len(self.prompt_token_ids)
        if end <= p:
            return self.prompt_token_ids[start:end]
        if start >= p:
            return self.output_token_ids[start - p:end - p]
        return self.prompt_token_ids[start:] + self.output_token_ids[:end - p]

    def hashes_upto(self, num_blocks: int, block_size: int) -> list[int]:
        """`block_hashes` extended to the first `num_blocks` full blocks (tokens never change, so the
        chain is computed once per block)."""
        h = self.block_hashes
        while len(h) < num_blocks:
            k = len(h)
            toks = self.tokens(k * block_size, (k + 1) * block_size)
            if len(toks) != block_size:  # a token still pending on the device: never hash a partial block
                raise RuntimeError(f"{self.seq_id!r}: block {k} is not full on the host ({len(toks)} tokens)")
            h.append(hash_block_tokens(h[-1] if k else None, toks))
        return h

    def append_token(self, token_id: int) -> None:
        self.output_token_ids.append(token_id)


def token_stop(token: int, params, eos_token_id: int | None) -> str | None:
    """Whether a sampled token ends its sequence by itself: "eos" (the tokenizer's EOS, unless
    params.ignore_eos), "stop_token" (one of params.stop_token_ids) or None. Stop strings are the
    detokenizer's, after this check; the length limit (`reached_length`) after both."""
    if token == eos_token_id and not params.ignore_eos:
        return "eos"
    if token in params.stop_token_ids:
        return "stop_token"
    return None


def reached_length(seq: Sequence, max_model_len: int) -> bool:
    """max_tokens generated, or the context full (FINISHED_LENGTH)."""
    return seq.num_output_tokens >= seq.max_tokens or seq.num_tokens >= max_model_len
