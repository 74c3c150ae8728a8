"""KV compressor: gated pooling of `ratio` tokens into one compressed entry (CSA: overlapping
windows of 2*4 tokens; HCA: disjoint windows of m tokens), then RMSNorm and RoPE at i*m.

Incremental: a chunk of tokens [start, start+n) of one sequence closes entries
i = start//m ... (start+n)//m - 1. The tokens of earlier chunks that those entries still need
(the current partial block and, for CSA, the previous block's first half) come from the
per-sequence tail ring (`kv_tail` / `score_tail`, row = position % (coff*m)). After the chunk
the ring holds its last coff*m positions. Ring rows for positions < 0 are never read, so a
recycled slot needs no clearing.
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import Linear, RMSNorm, Rope


class Compressor(nn.Module):
    """Official names: `wkv.weight`, `wgate.weight`, `norm.weight`, `ape` under `...compressor.`"""

    def __init__(self, hidden: int, width: int, ratio: int, overlap: bool, eps: float):
        super().__init__()
        self.coff = 2 if overlap else 1
        self.width = width  # c: width of one emitted entry
        self.ratio = ratio  # m
        self.wkv = Linear(hidden, self.coff * width, fp32=True)
        self.wgate = Linear(hidden, self.coff * width, fp32=True)
        self.norm = RMSNorm(width, eps)
        self.ape = nn.Parameter(torch.zeros(ratio, self.coff * width))

    @property
    def ring(self) -> int:
        return self.coff * self.ratio

    def project(self, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [N, d] -> (kv [N, coff*c], score [N, coff*c]) in fp32, score incl. the positional bias."""
        kv = self.wkv(x)
        score = self.wgate(x) + self.ape.float()[positions % self.ratio]
        return kv, score

    def step(
        self,
        kv: torch.Tensor,  # [n, coff*c] fp32: this sequence's chunk
        score: torch.Tensor,  # [n, coff*c] fp32
        start: int,  # position of the chunk's first token
        kv_tail: torch.Tensor,  # [coff*m, coff*c] fp32 view into the slot (updated in place)
        score_tail: torch.Tensor,
        rope: Rope,
    ) -> tuple[torch.Tensor, int]:
        """Close every entry completed by this chunk. -> (entries [k, c] in fp32, first entry index)."""
        m, coff, c = self.ratio, self.coff, self.width
        n = kv.shape[0]
        first = start // m
        end_entry = (start + n) // m  # exclusive
        base = max(0, (first - (coff - 1)) * m)  # earliest position any new entry reads
        if end_entry > first:
            if base < start:
                rows = torch.arange(base, start, device=kv.device) % self.ring
                kv_all = torch.cat((kv_tail[rows], kv), 0)
                sc_all = torch.cat((score_tail[rows], score), 0)
            else:
                kv_all, sc_all = kv, score
            entries = self._pool(kv_all, sc_all, base, first, end_entry)
            entries = self.norm(entries)
            pos = torch.arange(first, end_entry, device=kv.device) * m
            cos, sin = rope.cos_sin(pos)
            entries = rope.apply(entries, cos, sin)
        else:
            entries = kv.new_zeros((0, c))
        keep = min(n, self.ring)
        rows = torch.arange(start + n - keep, start + n, device=kv.device) % self.ring
        kv_tail[rows] = kv[n - keep:]
        score_tail[rows] = score[n - keep:]
        return entries, first

    def _pool(self, kv: torch.Tensor, sc: torch.Tensor, base: int, first: int, end: int) -> torch.Tensor:
        """Softmax-gated pooling per channel. kv/sc rows cover positions [base, ...)."""
        m, c = self.ratio, self.width
        k = end - first
        off = first * m - base  # row of entry `first`'s block start
        cur_kv = kv[off:off + k * m].view(k, m, -1)
        cur_sc = sc[off:off + k * m].view(k, m, -1)
        if self.coff == 1:
            w = torch.softmax(cur_sc, dim=1)
            return (w * cur_kv).sum(dim=1)
        # CSA: entry i pools B-halves ([c:]) of block i and A-halves ([:c]) of block i-1.
        b_kv, b_sc = cur_kv[..., c:], cur_sc[..., c:]
        a_kv = kv.new_zeros((k, m, c))
        a_sc = sc.new_full((k, m, c), float("-inf"))
        prev_start = off - m
        if prev_start >= 0:
            a_kv[:] = kv[prev_start:prev_start + k * m].view(k, m, -1)[..., :c]
            a_sc[:] = sc[prev_start:prev_start + k * m].view(k, m, -1)[..., :c]
        elif k > 1:  # entry 0 has no previous block; the others do
            a_kv[1:] = kv[off:off + (k - 1) * m].view(k - 1, m, -1)[..., :c]
            a_sc[1:] = sc[off:off + (k - 1) * m].view(k - 1, m, -1)[..., :c]
        all_kv = torch.cat((a_kv, b_kv), dim=1)
        all_sc = torch.cat((a_sc, b_sc), dim=1)
        w = torch.softmax(all_sc, dim=1)
        return (w * all_kv).sum(dim=1)
