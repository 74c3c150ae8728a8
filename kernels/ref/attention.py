"""Pure-torch twins of the attention ops (kernels/triton/attention.py has the same signatures).

Addressing (models/state.py): window ring row = position % W of the sequence's slot; compressed
entry e lives in block block_tables[b, e // per_block], row e % per_block. Storage tensors are
dense (any float dtype) or packed FP8 (uint8, kernels/ref/kv_fp8.py).

sparse_attention: query token t (position p, sequence b, chunk start s) attends
  window       positions max(0, p-W+1) .. p: from the ring if < s, else from `kv_cur` (the chunk)
  compressed   CSA: the entries listed in topk_idx[t] (-1 = none); HCA: every e < (p+1)//ratio
with one softmax per head and the per-head sink in the denominator. K = V.
"""

from __future__ import annotations

import torch

from kernels.attn_meta import AttnMeta

from .kv_fp8 import is_packed, read_entries, write_entries
from .norm import norm_rope, rope


def kv_pack(kv: torch.Tensor, ring: torch.Tensor, rope_dim: int) -> torch.Tensor:
    """Chunk K=V vectors [N, c] -> rows in the storage format of the window ring."""
    return write_entries(kv, ring, rope_dim)


def kv_entries(x: torch.Tensor, weight: torch.Tensor, eps: float, cos: torch.Tensor, sin: torch.Tensor,
               ring: torch.Tensor, rope_dim: int) -> torch.Tensor:
    """The chunk's K=V rows: kv_norm (weight, eps) + RoPE (cos, sin) of x [N, c], then rows in the ring's
    storage format (kv_pack of norm_rope)."""
    return kv_pack(norm_rope(x, weight, eps, cos, sin), ring, rope_dim)


def window_store(kv_cur: torch.Tensor, ring: torch.Tensor, meta: AttnMeta) -> None:
    """Write each sequence's last min(n, W) chunk rows into its ring (row = pos % W)."""
    w = ring.shape[1]
    for b, s0, s1, start in meta.chunks():
        n = s1 - s0
        keep = min(n, w)
        rows = torch.arange(start + n - keep, start + n, device=ring.device) % w
        ring[int(meta.slot_ids[b])][rows] = kv_cur[s1 - keep:s1]


def gather_entries(pool: torch.Tensor, table: torch.Tensor, n: int) -> torch.Tensor:
    """Entries 0..n-1 of one sequence (storage format) through its block table row."""
    per_block = pool.shape[1]
    e = torch.arange(n, device=pool.device)
    return pool[table[e // per_block].long(), e % per_block]


def sparse_attention(
    q: torch.Tensor,  # [N, H, c]
    kv_cur: torch.Tensor,  # [N, row] chunk entries in the ring's storage format
    ring: torch.Tensor,  # [S, W, row]
    pool: torch.Tensor | None,  # [num_blocks, per_block, row] compressed entries (None: sliding only)
    topk_idx: torch.Tensor | None,  # [N, K] int32 entry indices (CSA), -1 = invalid; None: HCA (all eligible)
    meta: AttnMeta,
    sink: torch.Tensor,  # [H] fp32
    *,
    ratio: int,
    scale: float,
    rope_dim: int,
    out_rope: tuple[torch.Tensor, torch.Tensor] | None = None,  # (cos, sin) [N, rope_dim/2]: inverse-rope the output
) -> torch.Tensor:
    """-> [N, H, c] in q's dtype (out_rope: then the inverse RoPE of its last rope_dim dims, norm.rope)."""
    if out_rope is not None:
        out = sparse_attention(q, kv_cur, ring, pool, topk_idx, meta, sink, ratio=ratio, scale=scale,
                               rope_dim=rope_dim)
        return rope(out, out_rope[0], out_rope[1], inverse=True)
    n_tok, h, c = q.shape
    w = ring.shape[1]
    out = torch.zeros_like(q)
    dt = torch.float32 if is_packed(ring) else ring.dtype
    for b, s0, s1, start in meta.chunks():
        n = s1 - s0
        slot = int(meta.slot_ids[b])
        pos = meta.positions[s0:s1].long()
        lo = max(0, start - w + 1)
        prev = torch.arange(lo, start, device=q.device)
        keys = torch.cat((read_entries(ring[slot][prev % w], c, rope_dim).to(dt),
                          read_entries(kv_cur[s0:s1], c, rope_dim).to(dt)), 0)
        key_pos = torch.arange(lo, start + n, device=q.device)
        allowed = (key_pos[None, :] <= pos[:, None]) & (key_pos[None, :] > pos[:, None] - w)
        if pool is not None:
            n_total = (start + n) // ratio
            ckeys = read_entries(gather_entries(pool, meta.block_tables[b], n_total), c, rope_dim).to(dt)
            if topk_idx is not None:
                idx = topk_idx[s0:s1].long()
                cmask = torch.zeros(n, n_total + 1, dtype=torch.bool, device=q.device)
                cmask.scatter_(1, torch.where(idx >= 0, idx, n_total), True)
                cmask = cmask[:, :n_total]
            else:
                limit = (pos + 1) // ratio
                cmask = torch.arange(n_total, device=q.device)[None, :] < limit[:, None]
            keys = torch.cat((keys, ckeys), 0)
            allowed = torch.cat((allowed, cmask), 1)
        out[s0:s1] = attend(q[s0:s1], keys, allowed, sink, scale)
    return out


def attend(q: torch.Tensor, keys: torch.Tensor, allowed: torch.Tensor, sink: torch.Tensor, scale: float) -> torch.Tensor:
    """q [n, H, c], keys [L, c] (K = V), allowed [n, L] -> [n, H, c]; per-head sink in the softmax."""
    s = torch.einsum("nhc,lc->nhl", q.float(), keys.float()) * scale
    s = s.masked_fill(~allowed[:, None, :], float("-inf"))
    sk = sink.float()[None, :, None].expand(s.shape[0], -1, 1)
    p = torch.softmax(torch.cat((s, sk), -1), dim=-1)[..., :-1]
    return torch.einsum("nhl,lc->nhc", p, keys.float()).to(q.dtype)
