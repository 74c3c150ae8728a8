"""Pure-torch twin of the lightning indexer + top-k (kernels/triton/indexer.py, same signature).

Token t at position p of sequence b scores every eligible indexer key e < (p+1)//ratio:
    I[t, e] = sum_h w[t, h] * relu(q[t, h] . k_e)
and returns the top-k entry indices, [N, topk] int32, -1 = no entry (fewer eligible than topk).
The order inside a row is unspecified (attention is order-independent); ties at the threshold are
broken by torch.topk here, by lowest index in the Triton kernel.
"""

from __future__ import annotations

import torch

from kernels.attn_meta import AttnMeta

from .attention import gather_entries
from .kv_fp8 import key_codes, read_keys
from .quant import act_quant_codes


def indexer_topk(
    q: torch.Tensor,  # [N, HI, cI] (fp32 or bf16; for MXFP4 keys already rotated: kv_fp8.rotate_for_keys)
    w: torch.Tensor,  # [N, HI] fp32 head weights (scales included)
    keys: torch.Tensor,  # [num_blocks, per_block, cI] dense, uint8 [.., cI + 4] FP8 or [.., cI/2 + cI/32] MXFP4
    meta: AttnMeta,
    topk: int,
    *,
    ratio: int = 4,
    key_format: str,  # "dense" | "fp8" | "fp4": the format of `keys` (the state's KVFormat.index_keys)
    score_fp8: bool | None = None,  # FP8 index scores (index_scores); None = False here (the Triton op decides)
    reduce_scores=None,  # called in place on every score block before its top-k (tensor parallel: all-reduce)
) -> torch.Tensor:
    n_tok, _, ci = q.shape
    out = torch.full((n_tok, topk), -1, dtype=torch.int32, device=q.device)
    for b, s0, s1, start in meta.chunks():
        e = (start + s1 - s0) // ratio
        if e == 0:
            continue
        rows = gather_entries(keys, meta.block_tables[b], e)
        scores = index_scores(q[s0:s1], w[s0:s1], rows, ci, key_format, bool(score_fp8))
        if reduce_scores is not None:
            reduce_scores(scores)
        select_topk(scores, meta.positions[s0:s1].long(), topk, ratio, out[s0:s1])
    return out


def index_scores(q: torch.Tensor, w: torch.Tensor, rows: torch.Tensor, ci: int, key_format: str,
                 score_fp8: bool = False) -> torch.Tensor:
    """Scores [n, E] fp32 of query rows q [n, HI, ci] (already rotated for MXFP4 keys), head weights w [n, HI]
    against key-store rows [E, row]. score_fp8: q and k as FP8 codes with per-row scales (key_codes;
    triton/indexer_fp8.py states the numerics): ks[e] * sum_h (w * qs) * relu(q8 . k8)."""
    if not score_fp8:
        s = torch.einsum("nhc,ec->nhe", q.float(), read_keys(rows, ci, key_format)).relu_()
        return (s * w.float().unsqueeze(-1)).sum(1)
    q8, qs = act_quant_codes(q, block=ci)  # [n, HI, ci], [n, HI, 1]
    k8, ks = key_codes(rows, ci, key_format)
    s = torch.einsum("nhc,ec->nhe", q8.float(), k8.float()).relu_()
    return (s * (w.float() * qs.squeeze(-1)).unsqueeze(-1)).sum(1) * ks


def select_topk(scores: torch.Tensor, pos: torch.Tensor, topk: int, ratio: int, out: torch.Tensor) -> None:
    """Top-k of one sequence's index scores [n, E] among the causally eligible entries
    (e < (pos+1)//ratio) into out [n, topk] (int32, -1 where fewer than topk are eligible)."""
    e = scores.shape[1]
    limit = (pos + 1) // ratio
    eligible = torch.arange(e, device=scores.device)[None, :] < limit[:, None]
    scores = scores.masked_fill(~eligible, float("-inf"))
    k = min(topk, e)
    idx = scores.topk(k, dim=-1).indices
    ok = torch.gather(eligible, 1, idx)
    out[:, :k] = torch.where(ok, idx, -1).to(torch.int32)
