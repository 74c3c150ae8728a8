"""KV compressor: gated pooling of `ratio` tokens into one compressed entry (CSA: overlapping
windows of 2*4 tokens; HCA: disjoint windows of m tokens), then RMSNorm and RoPE at i*m.

Incremental: a chunk of tokens [start, start+n) of one sequence closes entries
i = start//m ... (start+n)//m - 1. The tokens of earlier chunks that those entries still need
(the current partial block and, for CSA, the previous block's first half) come from the
per-sequence tail ring (`kv_tail` / `score_tail`, row = position % (coff*m)). After the chunk
the ring holds its last coff*m positions. Ring rows for positions < 0 are never read, so a
recycled slot needs no clearing.

The projections are one op, `kernels.compressor_project` (both GEMMs + the positional bias); pooling,
norm, RoPE, the paged write and the tail update are one op, `kernels.compress_and_store` (Triton on
CUDA, kernels/ref/compressor.py on CPU).
"""

from __future__ import annotations

import torch
from torch import nn

import kernels as kops

from .layers import Linear, RMSNorm, Rope
from .state import AttnMeta


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
        return kops.compressor_project(x, self.wkv.quant_weight(), self.wgate.quant_weight(), self.ape, positions,
                                       self.ratio)

    def store(
        self,
        kv: torch.Tensor,  # [N, coff*c] fp32 (from project)
        score: torch.Tensor,  # [N, coff*c] fp32
        kv_tail: torch.Tensor,  # [S, coff*m, coff*c] fp32 slot rings (updated)
        score_tail: torch.Tensor,
        pool: torch.Tensor,  # paged entries (updated)
        meta: AttnMeta,
        rope: Rope,
        index_keys: str | None = None,  # None: main entries; else the indexer keys' format
    ) -> None:
        """Close every entry completed by the batch's chunks, write it into `pool`, update the tails."""
        kops.compress_and_store(
            kv, score, kv_tail, score_tail, self.norm.weight, rope.inv_freq, pool, meta,
            ratio=self.ratio, overlap=self.coff == 2, eps=self.norm.eps, index_keys=index_keys,
        )
