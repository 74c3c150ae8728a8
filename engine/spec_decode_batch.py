"""Batches of a speculative step: the verify forward (every scheduled chunk, decode chunks extended by
their drafts) and the MTP passes (catch-up over the accepted positions, then chained drafting)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from models.state import ForwardBatch

from .h2d import h2d
from .scheduler import ScheduledChunk


@dataclass
class VerifyPlan:
    """Flat layout of one verify forward."""

    ids: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    query_start: list[int] = field(default_factory=lambda: [0])
    context_lens: list[int] = field(default_factory=list)
    seq_ids: list[str] = field(default_factory=list)
    logit_rows: list[int] = field(default_factory=list)  # flat rows whose logits are computed
    prompt_rows: list[tuple[int, int, int]] = field(default_factory=list)  # (chunk, first logit row, k)
    sample_rows: dict[int, int] = field(default_factory=dict)  # chunk -> first logit row of its sampling rows
    drafts: dict[int, list[int]] = field(default_factory=dict)  # chunk -> drafts verified this step


def plan_verify(chunks: list[ScheduledChunk], want_prompt: list[bool], drafts: dict[int, list[int]]) -> VerifyPlan:
    """`drafts`: chunk index -> draft tokens appended after its (one-token, sampling) chunk."""
    p = VerifyPlan(drafts=drafts)
    for i, c in enumerate(chunks):
        seq = c.seq
        base = len(p.ids)
        p.ids.extend(seq.tokens(c.start, c.start + c.num_tokens))
        d = drafts.get(i, [])
        p.ids.extend(d)
        n = c.num_tokens + len(d)
        p.positions.extend(range(c.start, c.start + n))
        p.query_start.append(len(p.ids))
        p.context_lens.append(c.start)
        p.seq_ids.append(seq.seq_id)
        if want_prompt[i]:
            k = min(c.start + c.num_tokens, seq.num_prompt_tokens - 1) - c.start
            if k > 0:
                p.prompt_rows.append((i, len(p.logit_rows), k))
                p.logit_rows.extend(range(base, base + k))
        if c.sample:
            p.sample_rows[i] = len(p.logit_rows)
            last = base + c.num_tokens - 1
            p.logit_rows.extend(range(last, last + len(d) + 1))
    return p


def make_batch(kv, dev, ids, positions, query_start, context_lens, seq_ids, logit_rows) -> ForwardBatch:
    def t(v):
        return h2d(torch.tensor(v, dtype=torch.long), dev)

    return ForwardBatch(input_ids=t(ids), positions=t(positions), slot_ids=h2d(kv.slot_tensor(seq_ids), dev),
                        block_tables=h2d(kv.block_table_tensor(seq_ids), dev), logits_indices=t(logit_rows),
                        query_start=list(query_start), context_lens=list(context_lens))


@dataclass
class MtpRow:
    """One sequence's MTP catch-up: positions [start, start + n) of the verify forward's flat rows
    [flat, flat + n), next tokens `next_ids`; draft (sample) after it when `draft` is True."""

    seq_id: str
    start: int
    flat: int
    next_ids: list[int]
    draft: bool
