"""Scheduler: continuous batching with one token budget per step (vLLM v1 style).

There is no prefill or decode phase. Every sequence has `num_computed_tokens` and `num_tokens`;
each step spends `max_num_batched_tokens` to close those gaps:

  1. running sequences, in priority order (earliest arrival first): a decoding sequence takes
     1 token, a partially prefilled one takes the rest of its prompt, cut to the remaining budget;
  2. then waiting sequences, FCFS, while slots (max_num_seqs) and budget remain; the first one
     that does not fit stops admission so the order is kept. No admission in a step that preempted.
     With `delay_factor` > 0 (vLLM's scheduler_delay_factor) and sequences running, no admission until
     the oldest waiting sequence has waited delay_factor x the duration of the last step with a prompt
     chunk: arrivals close together are prefilled in one step instead of one step each.

Before a chunk is scheduled its cache is grown with `kv.allocate(seq_id, start + len)`. When a
running sequence cannot get blocks, the lowest-priority running sequence (latest arrival, which
may be itself) is preempted by recompute: its cache is freed, `num_computed_tokens` drops to 0 and
it goes to the FRONT of the waiting queue. `running` is kept sorted by priority, so the victim is
always `running[-1]` and never a sequence already scheduled in this step.

The engine runs the model on `SchedulerOutput.chunks`, calls `update_after_step(output)`, appends
the sampled tokens (`seq.append_token`) and calls `finish(...)` on stop / length.

Prefix caching (when `kv.prefix` is set, kvcache/prefix_cache.py): a waiting sequence is admitted at
its longest cached prefix (`num_computed_tokens` = the hit, its blocks shared, the slot snapshot
restored by the runner); chunks are cut at the sequence's `snapshot_points` and the state is saved
there; `update_after_step`, preemption and finish offer full computed blocks to the cache.

Async scheduling (engine/async_step.py): a sequence's length counts `num_pending_tokens` (sampled
on the device, not appended yet), so it decodes again before the host saw its last token; one whose
pending token reaches max_tokens / max_model_len is not scheduled again, and a waiting sequence with
a pending token is not admitted (its recompute needs that token).
"""

from __future__ import annotations

import bisect
import itertools
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterable

from kvcache.manager import KVCacheManager
from kvcache.prefix_cache import PrefixHit

from .admission import admit
from .config import SchedulerConfig
from .errors import QueueFullError, RequestTooLongError  # HTTP 429 / 400 (server/errors.py maps them)
from .sequence import Sequence, SequenceStatus

__all__ = ["QueueFullError", "RequestTooLongError", "ScheduledChunk", "Scheduler", "SchedulerOutput"]

_RUNNING = SequenceStatus.RUNNING
_WAITING = SequenceStatus.WAITING


@dataclass(slots=True, eq=False)
class ScheduledChunk:
    seq: Sequence
    start: int  # first position of the chunk (== seq.num_computed_tokens when scheduled)
    num_tokens: int  # chunk length; tokens seq.tokens(start, start + num_tokens)
    sample: bool  # True iff the chunk ends at seq.num_tokens: the model produces the next token


@dataclass
class SchedulerOutput:
    chunks: list[ScheduledChunk] = field(default_factory=list)  # running order; one chunk per sequence
    preempted_seq_ids: list[str] = field(default_factory=list)  # preempted in this step (cache freed)
    num_batched_tokens: int = 0  # sum of chunk lengths (<= max_num_batched_tokens)

    @property
    def is_empty(self) -> bool:
        return not self.chunks


def _cut_at_snapshot(points: list[int], start: int, n: int) -> int:
    """A chunk [start, start + n) cut at the sequence's next snapshot point (prefix caching: chunks end
    where the slot state is saved; `points` ascending, all > start)."""
    return min(n, points[0] - start) if points else n


class Scheduler:
    def __init__(self, config: SchedulerConfig, kv: KVCacheManager,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.kv = kv
        self._clock = clock  # the clock of Sequence.arrival_time (tests pass their own)
        self._prev_time = 0.0  # the previous schedule() call
        self._prev_prompt = False  # it scheduled a prompt chunk
        self._last_prompt_latency = 0.0  # seconds from a prompt step's schedule() to the next one
        self.waiting: deque[Sequence] = deque()  # FCFS; preempted sequences re-enter at the front
        self.running: list[Sequence] = []  # sorted by priority (arrival_time, add order)
        self._seqs: dict[str, Sequence] = {}  # every unfinished sequence
        self._by_request: dict[str, list[str]] = {}  # request_id -> unfinished seq_ids
        self._priority: dict[str, tuple[float, int]] = {}  # seq_id -> sort key (lower runs first)
        self._counter = itertools.count()
        self.num_preemptions_total = 0

    # ---- admission -------------------------------------------------------------------------
    def admit(self, prompt_len: int, max_tokens: int | None, n: int = 1, min_tokens: int = 0) -> int:
        """The admission decision (engine/admission.py) with the live queue -> the request's max_tokens.
        LLMEngine.add_request calls it once, then `enqueue`s the request's sequences."""
        return admit(prompt_len, max_tokens, n, max_model_len=self.config.max_model_len,
                     kv_capacity=self.kv.capacity_tokens, num_waiting=len(self.waiting),
                     max_queued=self.config.max_queued_requests, min_tokens=min_tokens)

    def add(self, seq: Sequence) -> None:
        self.add_request([seq])

    def add_request(self, seqs: Iterable[Sequence]) -> None:
        """admit + enqueue for sequences built by the caller: all of them or none (every check runs
        before any is added)."""
        seqs = list(seqs)
        for seq in seqs:
            self.admit(seq.num_prompt_tokens, seq.max_tokens, len(seqs))
        self.enqueue(seqs)

    def enqueue(self, seqs: Iterable[Sequence]) -> None:
        """Queue the new sequences of one admitted request (no admission checks: see `admit`)."""
        seqs = list(seqs)
        for seq in seqs:
            if seq.seq_id in self._seqs:
                raise ValueError(f"sequence {seq.seq_id!r} is already scheduled")
            if seq.status != _WAITING or seq.output_token_ids or seq.num_computed_tokens:
                raise ValueError(f"sequence {seq.seq_id!r} is not new (status {seq.status.name})")
        if len({s.seq_id for s in seqs}) != len(seqs):
            raise ValueError("duplicate seq_id within one request")
        for seq in seqs:
            seq.status = _WAITING
            seq.num_computed_tokens = 0
            self._seqs[seq.seq_id] = seq
            self._by_request.setdefault(seq.request_id, []).append(seq.seq_id)
            self._priority[seq.seq_id] = (seq.arrival_time, next(self._counter))
            self.waiting.append(seq)

    # ---- one step --------------------------------------------------------------------------
    def schedule(self) -> SchedulerOutput:
        budget = self.config.max_num_batched_tokens
        kv, running = self.kv, self.running
        allocate, chunk = kv.allocate, ScheduledChunk
        out = SchedulerOutput()
        chunks, preempted = out.chunks, out.preempted_seq_ids

        max_len = self.config.max_model_len
        i = 0
        while i < len(running) and budget > 0:
            seq = running[i]
            start = seq.num_computed_tokens
            num_out = len(seq.output_token_ids) + seq.num_pending_tokens  # async: + tokens still on the device
            total = len(seq.prompt_token_ids) + num_out
            if seq.num_pending_tokens and (num_out >= seq.max_tokens or total >= max_len):
                i += 1  # its pending token ends it (length): no step past the end
                continue
            n = min(total - start, budget)
            if n <= 0:  # nothing to compute (the engine has not appended the sampled token yet)
                i += 1
                continue
            n = _cut_at_snapshot(seq.snapshot_points, start, n)
            if not allocate(seq.seq_id, start + n) and not self._make_room(seq, start + n, preempted):
                break  # `seq` preempted itself; it was the last running sequence
            chunks.append(chunk(seq, start, n, start + n == total))
            self._plan_snapshot(seq, start + n)
            budget -= n
            i += 1

        max_seqs, waiting = self.config.max_num_seqs, self.waiting
        admit_now = self.config.delay_factor <= 0 or self._passed_delay()
        while admit_now and not preempted and waiting and budget > 0 and len(running) < max_seqs:
            seq = waiting[0]
            if seq.num_pending_tokens:  # preempted while a step sampled for it: recompute once it is appended
                break
            start = seq.num_computed_tokens
            total = seq.num_tokens
            n = min(total - start, budget)
            if kv.prefix is not None:  # prefix caching: start at the longest cached prefix
                n = self._admit_cached(seq, budget)
                start = seq.num_computed_tokens
            elif not kv.allocate(seq.seq_id, start + n):
                n = None
            if n is None:
                break  # keep FCFS: nobody overtakes the head of the queue
            waiting.popleft()
            seq.status = _RUNNING
            bisect.insort(running, seq, key=self._key)
            chunks.append(ScheduledChunk(seq, start, n, start + n == total))
            budget -= n
            self._plan_snapshot(seq, start + n)

        out.num_batched_tokens = self.config.max_num_batched_tokens - budget
        if self.config.delay_factor > 0:  # only the delay needs to know (a pass over the chunks)
            self._prev_prompt = any(c.start < c.seq.num_prompt_tokens for c in chunks)
        return out

    def _passed_delay(self) -> bool:
        """May waiting sequences be admitted in this step (`delay_factor`, module docstring)? Also times the
        last step that had a prompt chunk (the schedule() calls around it)."""
        now = self._clock()
        if self._prev_prompt:
            self._last_prompt_latency = now - self._prev_time
        self._prev_time = now
        if not self.waiting or not self.running:
            return True
        # the queue's head waited longest: new sequences join at the back, preempted ones return to the front
        return now - self.waiting[0].arrival_time > self.config.delay_factor * self._last_prompt_latency

    # ---- prefix caching (kvcache/prefix_cache.py) -------------------------------------------
    def _admit_cached(self, seq: Sequence, budget: int) -> int | None:
        """Admit `seq` (new or preempted) at its longest usable cached prefix -> its first chunk's
        length, or None (nothing changed) when its blocks or a slot do not fit."""
        kv, prefix = self.kv, self.kv.prefix
        total, bs = seq.num_tokens, kv.block_size
        mx = prefix.max_hit_blocks(total)
        hashes = seq.hashes_upto(mx, bs)[:mx]
        hit = prefix.find(hashes) if seq.prefix_lookup else PrefixHit(0, [], None, 0)
        start = hit.num_tokens
        pts = prefix.snapshot_points(hit, seq.num_prompt_tokens, total)
        n = _cut_at_snapshot(pts, start, min(total - start, budget))
        if not kv.allocate_prefix(seq.seq_id, hit, start + n, hashes, total if seq.prefix_lookup else 0):
            return None
        seq.num_computed_tokens, seq.snapshot_points = start, pts
        if seq.num_cached_tokens < 0:
            seq.num_cached_tokens = start  # what usage reports: the first admission's hit
        return n

    def _plan_snapshot(self, seq: Sequence, end: int) -> None:
        """The chunk just scheduled ends at `end`: save the slot state there if it is the next snapshot point."""
        if not seq.snapshot_points or end != seq.snapshot_points[0]:
            return
        b = seq.snapshot_points.pop(0)
        k = b // self.kv.block_size
        self.kv.prefix.plan_save(self.kv.slot(seq.seq_id), b, seq.hashes_upto(k, self.kv.block_size)[k - 1])

    def _cache_blocks(self, seq: Sequence) -> None:
        """Offer the sequence's full computed blocks (whose tokens the host has) to the prefix cache."""
        bs = self.kv.block_size
        full = min(seq.num_computed_tokens, seq.num_tokens) // bs
        self.kv.cache_blocks(seq.seq_id, full * bs, seq.hashes_upto(full, bs))

    def _make_room(self, seq: Sequence, num_tokens_total: int, preempted: list[str]) -> bool:
        """Preempt from the back of `running` until `seq` fits; False if `seq` itself was preempted."""
        while True:
            victim = self.running.pop()
            self._preempt(victim)
            preempted.append(victim.seq_id)
            if victim is seq:
                return False
            if self.kv.allocate(seq.seq_id, num_tokens_total):
                return True

    def _preempt(self, seq: Sequence) -> None:
        if self.kv.prefix is not None:
            self._cache_blocks(seq)
        self.kv.free(seq.seq_id)
        seq.num_computed_tokens = 0
        seq.snapshot_points = []
        seq.status = _WAITING
        seq.num_preemptions += 1
        self.num_preemptions_total += 1
        self.waiting.appendleft(seq)

    def _key(self, seq: Sequence) -> tuple[float, int]:
        return self._priority[seq.seq_id]

    def update_after_step(self, output: SchedulerOutput) -> None:
        """Mark the scheduled chunks as computed (sequences finished meanwhile are skipped)."""
        for c in output.chunks:
            seq = c.seq
            if seq.status is not _RUNNING:
                continue
            if seq.num_computed_tokens != c.start:
                raise RuntimeError(
                    f"stale step output for {seq.seq_id!r}: chunk starts at {c.start} but "
                    f"{seq.num_computed_tokens} tokens are computed (update_after_step called twice?)"
                )
            seq.num_computed_tokens = c.start + c.num_tokens
            if self.kv.prefix is not None:
                self._cache_blocks(seq)
        if self.kv.prefix is not None:
            self.kv.prefix.commit()  # the snapshots this step saved become usable

    # ---- finishing -------------------------------------------------------------------------
    def finish(self, seq_id: str, status: SequenceStatus) -> Sequence:
        """End a sequence wherever it is (waiting, preempted or running) and free its cache."""
        if not status.is_finished:
            raise ValueError(f"finish() needs a finished status, got {status.name}")
        seq = self._seqs.pop(seq_id, None)
        if seq is None:
            raise KeyError(f"unknown or already finished sequence {seq_id!r}")
        if seq.status is _RUNNING:
            self.running.remove(seq)
        else:
            self.waiting.remove(seq)
        if self.kv.has(seq_id):
            if self.kv.prefix is not None:
                self._cache_blocks(seq)
            self.kv.free(seq_id)
        seq.status = status
        del self._priority[seq_id]
        ids = self._by_request[seq.request_id]
        ids.remove(seq_id)
        if not ids:
            del self._by_request[seq.request_id]
        return seq

    def abort_request(self, request_id: str) -> list[Sequence]:
        """Finish every unfinished sequence of a request as FINISHED_ABORTED ([] if none is left)."""
        ids = list(self._by_request.get(request_id, ()))
        return [self.finish(sid, SequenceStatus.FINISHED_ABORTED) for sid in ids]

    # ---- queries ---------------------------------------------------------------------------
    def has_unfinished(self) -> bool:
        return bool(self._seqs)

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    def get(self, seq_id: str) -> Sequence:
        seq = self._seqs.get(seq_id)
        if seq is None:
            raise KeyError(f"unknown or already finished sequence {seq_id!r}")
        return seq
