"""Rejection sampling of draft tokens against the target model (speculative decoding).

A verified sequence has k' draft tokens d_1..d_k' and k'+1 target rows: row j holds the target
model's logits at the pending position + j, processed by the engine's sampler with the output
extended by d_1..d_j (penalties, grammar masks, min_tokens, guided choices and the thinking budget
see exactly the prefix they would see without speculation). Drafts are greedy (the MTP block's
argmax), i.e. the draft distribution q is one-hot, so the classic rule (Leviathan et al. 2023,
Chen et al. 2023) becomes:

  * random row: accept d_{j+1} with probability p_j(d_{j+1}); on the first rejection emit a sample
    of the residual p_j with d_{j+1} removed (renormalized); if all k' are accepted, emit a sample
    of p_k' (the bonus token). The emitted tokens have exactly the target's distribution.
  * greedy row: accept while argmax(row j) == d_{j+1}; emit the argmax at the first mismatch (or the
    bonus row's): identical to non-speculative greedy decoding.
  * forced row (thinking budget): the forced token plays the argmax's role.

Randomness: a seeded sequence draws, in a fixed order, k' uniforms and then one Exp(1) vector per
row from its own generator (the categorical draw is the sampler's exponential race), whatever is
accepted, so seeded runs are reproducible and independent of the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .sampler import Sampler, SamplingMetadata


@dataclass
class VerifyGroup:
    """One sequence's rows in the verify logits."""

    first_row: int  # row of the target distribution for d_1 (the pending position)
    drafts: list[int]  # d_1..d_k' (k' >= 0; k' = 0 is a plain sampling row)
    generator: torch.Generator | None  # the sequence's seeded generator (None: the global RNG)


@dataclass
class VerifyResult:
    tokens: list[int]  # emitted tokens: the accepted drafts, then one target token
    rows: list[int]  # the target row each emitted token was chosen from (for logprobs)
    num_accepted: int  # accepted drafts (len(tokens) - 1)


def rejection_sample(x: torch.Tensor, meta: SamplingMetadata, groups: list[VerifyGroup]) -> list[VerifyResult]:
    """x: processed target logits [R, V] (`Sampler.process`), one row per verify position of every
    group, `meta` built for those rows -> one VerifyResult per group."""
    R = x.shape[0]
    dev = x.device
    argmax = x.argmax(dim=-1)
    greedy = [True] * R if meta.all_greedy else None
    accept = cand = None
    if not meta.all_greedy:
        greedy = meta.greedy_rows.tolist() if meta.greedy_rows is not None else [False] * R
        probs = Sampler.probs(x, meta)
        draft_rows, draft_ids = [], []
        for g in groups:
            for j, d in enumerate(g.drafts):
                draft_rows.append(g.first_row + j)
                draft_ids.append(d)
        u = torch.empty(R, dtype=torch.float32, device=dev)
        q = torch.empty_like(probs)
        unseeded = [r for g in groups if g.generator is None
                    for r in range(g.first_row, g.first_row + len(g.drafts) + 1)]
        if unseeded:
            idx = torch.tensor(unseeded, dtype=torch.long, device=dev)
            u[idx] = torch.rand(len(unseeded), device=dev)
            q[idx] = torch.empty((len(unseeded), q.shape[1]), device=dev).exponential_()
        for g in groups:  # seeded: uniforms then one exponential vector per row, always the same order
            if g.generator is None:
                continue
            n = len(g.drafts)
            if n:
                u[g.first_row:g.first_row + n] = torch.rand(n, generator=g.generator, device=dev)
            for r in range(g.first_row, g.first_row + n + 1):
                q[r].exponential_(generator=g.generator)
        q.clamp_(min=torch.finfo(q.dtype).tiny)
        accept = torch.zeros(R, dtype=torch.bool, device=dev)
        if draft_rows:
            rows_t = torch.tensor(draft_rows, dtype=torch.long, device=dev)
            ids_t = torch.tensor(draft_ids, dtype=torch.long, device=dev)
            p_draft = probs[rows_t, ids_t]
            accept[rows_t] = u[rows_t] < p_draft
            probs[rows_t, ids_t] = 0.0  # the residual max(p - q, 0) of a one-hot q
        cand = probs.div_(q).argmax(dim=-1)
    forced: dict[int, int] = {}
    if meta.forced_rows is not None:
        forced = dict(zip(meta.forced_rows.tolist(), meta.forced_token_ids.tolist()))
    # one device -> host copy of everything the host loop reads
    parts = [argmax] + ([cand, accept.long()] if cand is not None else [])
    host = torch.stack(parts).cpu().tolist()
    am = host[0]
    cd, ac = (host[1], host[2]) if cand is not None else (None, None)
    return _walk(groups, am, greedy, forced, cd, ac)


def greedy_verify(logits: torch.Tensor, groups: list[VerifyGroup]) -> list[VerifyResult]:
    """Every row greedy with nothing that changes its logits (no masks, bias, bans, penalties,
    forcing): the argmax of the raw rows decides (one device -> host copy)."""
    am = logits.argmax(dim=-1).cpu().tolist()
    return _walk(groups, am, [True] * len(am), {}, None, None)


def plain_greedy(p, seq) -> bool:
    """Greedy with raw logits: nothing the sampler would apply before the argmax (p: SamplingParams)."""
    return (p.greedy and not p.logit_bias and p.allowed_token_ids is None and p.choice_token_ids is None
            and p.guide is None and not p.bad_words_token_ids and not p.needs_penalties
            and p.thinking_budget is None and seq.num_output_tokens >= p.min_tokens)


def _walk(groups, am, greedy, forced, cd, ac) -> list[VerifyResult]:
    out = []
    for g in groups:
        toks, rows = [], []
        for j in range(len(g.drafts) + 1):
            r = g.first_row + j
            d = g.drafts[j] if j < len(g.drafts) else None
            if r in forced or greedy[r]:
                target = forced.get(r, am[r])
                toks.append(target)
                rows.append(r)
                if target != d:
                    break
                continue
            if d is not None and ac[r]:
                toks.append(d)
                rows.append(r)
                continue
            toks.append(cd[r])  # residual sample (rejected draft) or the bonus token
            rows.append(r)
            break
        out.append(VerifyResult(toks, rows, len(toks) - 1))
    return out
