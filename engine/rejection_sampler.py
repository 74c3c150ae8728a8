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

Randomness: a seeded sequence draws, in a fixed order, k' uniforms and then one [k'+1, V] Exp(1) block
from its own generator (the categorical draw is the sampler's exponential race), whatever is
accepted, so seeded runs are reproducible and independent of the batch. One device -> host copy per
verify step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .h2d import h2d
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
    group, `meta` built for those rows -> one VerifyResult per group. ONE device -> host copy (the
    greedy / forced rows travel with the results instead of being read back separately)."""
    R = x.shape[0]
    dev = x.device
    target = x.argmax(dim=-1)
    if meta.forced_rows is not None:  # thinking budget: the forced token plays the argmax's role
        target = target.index_put((meta.forced_rows,), meta.forced_token_ids)
    parts = [target]
    if not meta.all_greedy:
        fixed = meta.greedy_rows.clone() if meta.greedy_rows is not None else torch.zeros(R, dtype=torch.bool,
                                                                                           device=dev)
        if meta.forced_rows is not None:
            fixed.index_fill_(0, meta.forced_rows, True)  # (a Python-scalar index_put is a blocking copy)
        probs = Sampler.probs(x, meta)
        u, q = _draws(groups, R, probs.shape[1], dev)
        accept = torch.zeros(R, dtype=torch.bool, device=dev)
        rows = [g.first_row + j for g in groups for j in range(len(g.drafts))]
        if rows:
            rt = h2d(torch.tensor([rows, [d for g in groups for d in g.drafts]], dtype=torch.long), dev)
            p_draft = probs[rt[0], rt[1]]
            accept[rt[0]] = u[rt[0]] < p_draft
            probs.index_put_((rt[0], rt[1]), torch.zeros((), device=dev))  # residual max(p - q, 0), one-hot q
        cand = probs.div_(q).argmax(dim=-1)
        parts += [cand, accept.long(), fixed.long()]
    host = torch.stack(parts).cpu().tolist()
    if meta.all_greedy:
        return _walk(groups, host[0], [True] * R, None, None)
    return _walk(groups, host[0], host[3], host[1], host[2])


def _draws(groups: list[VerifyGroup], R: int, V: int, dev) -> tuple[torch.Tensor, torch.Tensor]:
    """Uniforms [R] (acceptance tests) and Exp(1) [R, V] (the categorical race). Unseeded rows: the global
    RNG, one call each for all rows. A seeded group draws from its own generator, always in this order
    and whatever is accepted: its k' uniforms, then one [k'+1, V] exponential block (two calls per
    sequence; seeded runs reproduce, independent of the batch)."""
    u = torch.rand(R, device=dev)
    q = torch.empty((R, V), device=dev).exponential_()
    for g in groups:
        if g.generator is None:
            continue
        n, r0 = len(g.drafts), g.first_row
        if n:
            u[r0:r0 + n] = torch.rand(n, generator=g.generator, device=dev)
        q[r0:r0 + n + 1] = torch.empty((n + 1, V), device=dev).exponential_(generator=g.generator)
    return u, q.clamp_(min=torch.finfo(q.dtype).tiny)


def greedy_verify(logits: torch.Tensor, groups: list[VerifyGroup]) -> list[VerifyResult]:
    """Every row greedy with nothing that changes its logits (no masks, bias, bans, penalties,
    forcing): the argmax of the raw rows decides (one device -> host copy)."""
    am = logits.argmax(dim=-1).cpu().tolist()
    return _walk(groups, am, [True] * len(am), None, None)


def plain_greedy(p, seq) -> bool:
    """Greedy with raw logits: nothing the sampler would apply before the argmax (p: SamplingParams)."""
    return (p.greedy and not p.logit_bias and p.allowed_token_ids is None and p.choice_token_ids is None
            and p.guide is None and not p.bad_words_token_ids and not p.needs_penalties
            and p.thinking_budget is None and seq.num_output_tokens >= p.min_tokens)


def _walk(groups, target, fixed, cd, ac) -> list[VerifyResult]:
    """Host acceptance walk. target[r]: argmax (forced token on forced rows); fixed[r]: greedy or forced
    row; cd[r]: residual / bonus sample; ac[r]: the draft of row r passed its uniform test."""
    out = []
    for g in groups:
        toks, rows = [], []
        for j in range(len(g.drafts) + 1):
            r = g.first_row + j
            d = g.drafts[j] if j < len(g.drafts) else None
            if fixed[r]:
                toks.append(target[r])
                rows.append(r)
                if target[r] != d:
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
