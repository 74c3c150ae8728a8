"""Pure-torch twin of compress-and-store (kernels/triton/compressor.py, same signature).

For each sequence's chunk [start, start+n) it closes entries i = start//m .. (start+n)//m - 1:
gated pooling per channel (HCA: softmax over the m tokens of block i; CSA (overlap): over the
A-halves [:c] of block i-1 and the B-halves [c:] of block i, block -1 = -inf), RMSNorm (weight),
RoPE of the trailing rope dims at position i*m, written into the paged pool (dense or FP8). Tokens
of earlier chunks come from the slot's tail ring (row = pos % (coff*m)); afterwards the ring holds
the chunk's last coff*m positions. All math in fp32.
"""

from __future__ import annotations

import torch

from kernels.attn_meta import AttnMeta

from .kv_fp8 import check_key_store, is_packed, write_entries, write_keys
from .norm import rope as rotate_interleaved


def rope_rows(x: torch.Tensor, pos: torch.Tensor, inv_freq: torch.Tensor, inverse: bool = False) -> torch.Tensor:
    """Interleaved RoPE on the trailing 2*len(inv_freq) dims of x [n, ..., D] at positions [n]."""
    freqs = pos.float()[:, None] * inv_freq.to(pos.device)[None, :]
    return rotate_interleaved(x, freqs.cos(), freqs.sin(), inverse)


def _pool(kv, sc, base, first, end, m, coff, c):
    k = end - first
    off = first * m - base
    cur_kv = kv[off:off + k * m].view(k, m, -1)
    cur_sc = sc[off:off + k * m].view(k, m, -1)
    if coff == 1:
        w = torch.softmax(cur_sc, dim=1)
        return (w * cur_kv).sum(dim=1)
    b_kv, b_sc = cur_kv[..., c:], cur_sc[..., c:]
    a_kv = kv.new_zeros((k, m, c))
    a_sc = sc.new_full((k, m, c), float("-inf"))
    prev_start = off - m
    if prev_start >= 0:
        a_kv[:] = kv[prev_start:prev_start + k * m].view(k, m, -1)[..., :c]
        a_sc[:] = sc[prev_start:prev_start + k * m].view(k, m, -1)[..., :c]
    elif k > 1:
        a_kv[1:] = kv[off:off + (k - 1) * m].view(k - 1, m, -1)[..., :c]
        a_sc[1:] = sc[off:off + (k - 1) * m].view(k - 1, m, -1)[..., :c]
    all_kv = torch.cat((a_kv, b_kv), dim=1)
    all_sc = torch.cat((a_sc, b_sc), dim=1)
    w = torch.softmax(all_sc, dim=1)
    return (w * all_kv).sum(dim=1)


def compress_and_store(
    kv: torch.Tensor,  # [N, coff*c] fp32 projected kv
    score: torch.Tensor,  # [N, coff*c] fp32 gate scores incl. the positional bias (ape)
    kv_tail: torch.Tensor,  # [S, coff*m, coff*c] fp32 ring (updated)
    score_tail: torch.Tensor,  # [S, coff*m, coff*c] fp32 ring (updated)
    norm_weight: torch.Tensor,  # [c]
    inv_freq: torch.Tensor,  # [r/2] fp32 RoPE inverse frequencies
    pool: torch.Tensor,  # [num_blocks, per_block, row] dense or packed (updated)
    meta: AttnMeta,
    *,
    ratio: int,
    overlap: bool,
    eps: float,
    index_keys: str | None = None,  # None: main entries; "dense" | "fp8" | "fp4": pool holds indexer keys so
) -> None:
    m, coff = ratio, (2 if overlap else 1)
    c = kv.shape[1] // coff
    if index_keys is not None:
        check_key_store(pool, c, index_keys)
    ring = coff * m
    r = 2 * inv_freq.numel()
    per_block = pool.shape[1]
    for b, s0, s1, start in meta.chunks():
        n = s1 - s0
        slot = int(meta.slot_ids[b])
        kt, st = kv_tail[slot], score_tail[slot]
        ckv, csc = kv[s0:s1].float(), score[s0:s1].float()
        first, end = start // m, (start + n) // m
        base = max(0, (first - (coff - 1)) * m)
        if end > first:
            if base < start:
                rows = torch.arange(base, start, device=kv.device) % ring
                kv_all, sc_all = torch.cat((kt[rows], ckv), 0), torch.cat((st[rows], csc), 0)
            else:
                kv_all, sc_all = ckv, csc
            ent = _pool(kv_all, sc_all, base, first, end, m, coff, c)
            ent = norm_weight.float() * (ent * torch.rsqrt(ent.square().mean(-1, keepdim=True) + eps))
            ent = rope_rows(ent, torch.arange(first, end, device=kv.device) * m, inv_freq)
            e = torch.arange(first, end, device=pool.device)
            table = meta.block_tables[b]
            vals = write_keys(ent, pool, index_keys) if index_keys is not None else write_entries(ent, pool, r)
            pool[table[e // per_block].long(), e % per_block] = vals
        keep = min(n, ring)
        rows = torch.arange(start + n - keep, start + n, device=kv.device) % ring
        kt[rows] = ckv[n - keep:]
        st[rows] = csc[n - keep:]


__all__ = ["compress_and_store", "rope_rows", "is_packed"]
