"""Top-k of long indexer rows when there are few rows (decode at long context): split over programs.

One program per row (indexer._topk_kernel, streaming) reads a 262K-entry row (1M context at ratio 4)
five times with one CTA: milliseconds per CSA layer at batch 1. Here the row is cut into chunks of
CHUNK entries:

  stage 1  grid (rows, chunks): program (r, c) holds chunk c in registers and selects its own top-k with
           the same radix passes (indexer._select_digit) -> candidate entry ids + their scores
           [rows, chunks*k] (a chunk with <= k eligible entries lists them all; unused slots -1 / -inf);
  stage 2  grid (rows,): the same selection over the chunks*k candidates (all in registers), written
           through the candidate ids into out[row, :k].

The union of every chunk's top-k holds the row's top-k, so the result equals the one-pass select up
to the order of the k ids and the choice among exactly tied scores. Rows with <= k eligible entries
come out as the ids 0..limit-1 plus -1s, as in the one-pass kernel.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .indexer import _ordered_key, _select_digit

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
CHUNK = int(os.environ.get("V4_TOPK_CHUNK", 16384))  # entries per stage-1 program
MAX_CANDIDATES = 8192  # stage 2 holds chunks*k candidates in registers


@triton.jit
def _select_block(key, ok, n, K: tl.constexpr, BLOCK: tl.constexpr):
    """Radix select of the K largest ordered keys among `ok` (n of them > K): -> (take mask, slot)."""
    prefix = tl.zeros([], tl.uint32)
    pmask = tl.zeros([], tl.uint32)
    need = tl.full([], K, tl.int32)
    bins = tl.arange(0, 256)
    for level in tl.static_range(4):
        shift = 24 - 8 * level
        hist = tl.histogram(((key >> shift) & 255).to(tl.int32), 256, mask=ok & ((key & pmask) == prefix))
        need, prefix, pmask = _select_digit(hist, need, prefix, pmask, shift, bins)
    gt = ok & (key > prefix)
    eq = ok & (key == prefix)
    rank_eq = tl.cumsum(eq.to(tl.int32), 0) - 1
    take = gt | (eq & (rank_eq < need))
    slot = tl.where(gt, tl.cumsum(gt.to(tl.int32), 0) - 1, (K - need) + rank_eq)
    return take, slot


@triton.jit
def _chunk_topk_kernel(src_ptr, map_ptr, pos_ptr, idx_ptr, val_ptr, row0, src_stride, map_stride, out_stride,
                       n_fixed, K: tl.constexpr, RATIO: tl.constexpr, CHUNK: tl.constexpr, STAGE2: tl.constexpr):
    """Stage 1 (STAGE2=False): chunk c of score row r -> K candidates (entry ids, scores) at slot c*K.
    Stage 2: the n_fixed candidates of row r -> out[r, :K] = map[r, selected]."""
    r = tl.program_id(0)
    c = tl.program_id(1)
    offs = tl.arange(0, CHUNK)
    kk = tl.arange(0, K)
    if STAGE2:
        n = n_fixed
        lo = 0
        t = row0 + r
        orow = idx_ptr + t.to(tl.int64) * out_stride
        src = src_ptr + r.to(tl.int64) * src_stride
    else:
        t = row0 + r
        limit = (tl.load(pos_ptr + t) + 1) // RATIO
        lo = c * CHUNK
        n = tl.minimum(tl.maximum(limit - lo, 0), CHUNK)
        orow = idx_ptr + r.to(tl.int64) * out_stride + c * K
        src = src_ptr + r.to(tl.int64) * src_stride + lo
    vrow = val_ptr + r.to(tl.int64) * out_stride + c * K
    ok = offs < n
    x = tl.load(src + offs, mask=ok, other=float("-inf"))
    if STAGE2:
        ids = tl.load(map_ptr + r.to(tl.int64) * map_stride + offs, mask=ok, other=-1)
    else:
        ids = lo + offs
    if n <= K:
        if STAGE2:  # a single chunk: its candidates are the answer
            tl.store(orow + kk, tl.load(map_ptr + r.to(tl.int64) * map_stride + kk, mask=kk < n, other=-1))
        else:
            tl.store(orow + kk, tl.where(kk < n, lo + kk, -1))
            tl.store(vrow + kk, tl.load(src + kk, mask=kk < n, other=float("-inf")))
    else:
        take, slot = _select_block(_ordered_key(x), ok, n, K, CHUNK)
        tl.store(orow + slot, ids, mask=take)
        if not STAGE2:
            tl.store(vrow + slot, x, mask=take)


def use_split(n_rows: int, e_cap: int, topk: int, chunk: int | None = None) -> bool:
    """Few rows (under one per SM) and a candidate list that fits stage 2's registers."""
    chunk = chunk or CHUNK
    return n_rows < 132 and e_cap > topk and topk & (topk - 1) == 0 and triton.cdiv(e_cap, chunk) * topk <= MAX_CANDIDATES


def topk_rows_split(scores: torch.Tensor, positions: torch.Tensor, out: torch.Tensor, row0: int, n_rows: int,
                    topk: int, ratio: int, chunk: int | None = None) -> None:
    """Same contract as indexer.topk_rows: top-k of scores[r, :(pos[row0+r]+1)//ratio] -> out[row0+r]."""
    chunk = chunk or CHUNK
    e_cap = scores.shape[1]
    if topk & (topk - 1) or chunk & (chunk - 1) or chunk < topk:
        raise ValueError(f"split top-k needs power-of-two k <= chunk, got k={topk}, chunk={chunk}")
    n_chunks = triton.cdiv(e_cap, chunk)
    cand = n_chunks * topk
    if cand > MAX_CANDIDATES and not INTERPRET:
        raise ValueError(f"{n_chunks} chunks x k={topk} candidates exceed {MAX_CANDIDATES}")
    cand_idx = torch.empty((n_rows, cand), dtype=torch.int32, device=scores.device)
    cand_val = torch.empty((n_rows, cand), dtype=torch.float32, device=scores.device)
    warps = 4 if INTERPRET else 16
    _chunk_topk_kernel[(n_rows, n_chunks)](scores, cand_idx, positions, cand_idx, cand_val, row0, scores.stride(0),
                                            0, cand, 0, K=topk, RATIO=ratio, CHUNK=chunk, STAGE2=False, num_warps=warps)
    block2 = max(triton.next_power_of_2(cand), topk)
    # rows whose limit <= k: the one-pass rule (ids 0..limit-1, then -1) holds for the candidates of chunk 0
    # followed by -inf candidates, whose ids are -1 -- the selection keeps the first k slots' ids
    _chunk_topk_kernel[(n_rows, 1)](cand_val, cand_idx, positions, out, cand_val, row0, cand, cand, out.stride(0),
                                    cand, K=topk, RATIO=ratio, CHUNK=block2, STAGE2=True, num_warps=warps)
