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
from .kv_fp8 import read_keys, rotate_for_keys


def indexer_topk(
    q: torch.Tensor,  # [N, HI, cI] (fp32 or bf16)
    w: torch.Tensor,  # [N, HI] fp32 head weights (scales included)
    keys: torch.Tensor,  # [num_blocks, per_block, cI] dense, uint8 [.., cI + 4] FP8 or [.., cI/2 + cI/32] MXFP4
    meta: AttnMeta,
    topk: int,
    *,
    ratio: int = 4,
    key_format: str,  # "dense" | "fp8" | "fp4": the format of `keys` (the state's KVFormat.index_keys)
) -> torch.Tensor:
    n_tok, _, ci = q.shape
    out = torch.full((n_tok, topk), -1, dtype=torch.int32, device=q.device)
    q = rotate_for_keys(q, key_format)  # MXFP4 keys are stored rotated by H
    for b, s0, s1, start in meta.chunks():
        e = (start + s1 - s0) // ratio
        if e == 0:
            continue
        kb = read_keys(gather_entries(keys, meta.block_tables[b], e), ci, key_format)
        pos = meta.positions[s0:s1].long()
        scores = torch.einsum("nhc,ec->nhe", q[s0:s1].float(), kb).relu_()
        scores = (scores * w[s0:s1].float().unsqueeze(-1)).sum(1)  # [n, E]
        select_topk(scores, pos, topk, ratio, out[s0:s1])
    return out


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
