"""Triton lightning indexer: scores sum_h w_h * relu(q_h . k_e) + radix top-k select.

Two kernels per tile of query rows:
  _score_kernel   grid (rows, splits; each program strides over key tiles up to its row's own limit):
                  gathers BLOCK_E indexer keys through the block table (dense, FP8 + fp32 scale, or
                  MXFP4), one tl.dot [BLOCK_E, cI] x [cI, HI] for all heads, relu, weight, head-sum
                  -> scores[row, e] (fp32, only e < (pos+1)//ratio written). `_score_group_kernel`:
                  the same for R rows per program sharing each key tile (prefill tiles; R from
                  `score_rows_per_program`, 1 = `_score_kernel` until the grouping is measured).
  _topk_kernel    grid (rows,): radix select of the k-th largest score without sorting the row:
                  four 8-bit histogram passes (tl.histogram) over order-preserving uint32 keys of
                  the float bits find the exact threshold key T and how many ties to take, then one
                  compaction pass writes every e with key > T and the lowest-index ties == T into
                  out[row, :k] (tl.cumsum + a running counter). Rows with <= k eligible entries
                  just list 0..limit-1. Unused slots are -1. Rows of <= REG_TOPK_MAX entries run
                  the same passes on the row held in registers (IN_REG: read once). Fewer than 132
                  longer rows (decode at long context) are split over programs (triton/topk_long.py).
Long prefill: rows are processed in tiles of at most `row_tile` tokens so the score buffer is
[row_tile, E] (bounded), never [T, E]. Prefill-sized calls on the measured GPU class score in FP8
(triton/indexer_fp8.py: keys packed once per call, FP8 wgmma); decode batches take the kernels here.
"""

from __future__ import annotations

import logging
import math
import os

import torch
import triton
import triton.language as tl

from kernels.ref.kv_fp8 import check_key_store
from kernels.attn_meta import AttnMeta

from . import indexer_fp8 as f8
from .common import emit_topk, ordered_key, radix_kth, stream_topk
from .index_keys import _group_pass, _group_rows, _key_tile

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
# cap on the per-tile score buffer: 256 rows per tile at 1M context (262K entries), so the top-k launches have
# 256 programs; V4_IDX_SCORE_MB sets it for tile-size experiments (bench `indexer_prefill` times 256-2048 rows)
SCORE_BUDGET_BYTES = int(os.environ.get("V4_IDX_SCORE_MB", 256)) << 20
SCORE_PROGRAMS = int(os.environ.get("V4_IDX_PROGRAMS", 16384))  # score-kernel grid cap (rows x splits)
# software-pipeline stages of the score kernels' key-tile loop (tl.range num_stages): 1 = not pipelined, the
# measured default; 2-4 prefetch the block-table entries of the next tiles with cp.async (sm_90 SASS, CPU
# machine); prepared for an A/B (V4_IDX_STAGES), not measured
SCORE_STAGES = int(os.environ.get("V4_IDX_STAGES", 1))
if SCORE_STAGES < 1:
    raise ValueError(f"V4_IDX_STAGES must be >= 1 (software-pipeline stages), got {SCORE_STAGES}")


@triton.jit(do_not_specialize=["row0", "HI", "table_stride", "score_stride", "n_split"],
            do_not_specialize_on_alignment=["tables_ptr", "tok_seq_ptr", "pos_ptr"])
def _score_kernel(q_ptr, w_ptr, keys_ptr, tables_ptr, tok_seq_ptr, pos_ptr, scores_ptr,
                  row0, HI, table_stride, score_stride, ROW, n_split,
                  CI: tl.constexpr, PB: tl.constexpr, RATIO: tl.constexpr, KFMT: tl.constexpr,
                  BLOCK_H: tl.constexpr, BLOCK_E: tl.constexpr, DOT_DT: tl.constexpr, ALIGN: tl.constexpr,
                  STAGES: tl.constexpr):
    """Program (r, s) scores key tiles s, s + n_split, ... below the row's own limit (grid independent
    of the row lengths: a CUDA graph bounds it by max_model_len and idle programs exit at once). STAGES > 1
    software-pipelines the key-tile loop (SCORE_STAGES)."""
    r = tl.program_id(0)
    t = row0 + r
    pos = tl.load(pos_ptr + t)
    limit = (pos + 1) // RATIO
    first = tl.program_id(1) * BLOCK_E
    if first < limit:
        b = tl.load(tok_seq_ptr + t).to(tl.int64)
        heads = tl.arange(0, BLOCK_H)
        hm = heads < HI
        cols = tl.arange(0, CI)
        wt = tl.load(w_ptr + t.to(tl.int64) * HI + heads, mask=hm, other=0.0)
        # keys as the A operand [BE, CI], q^T [CI, BH] loaded transposed by pointer math
        qt = tl.load(q_ptr + (t.to(tl.int64) * HI + heads[None, :]) * CI + cols[:, None], mask=hm[None, :], other=0.0)
        qt = qt.to(DOT_DT)
        for e0 in tl.range(first, limit, n_split * BLOCK_E, num_stages=STAGES):
            e = e0 + tl.arange(0, BLOCK_E)
            ok = e < limit
            k, kscale = _key_tile(keys_ptr, tables_ptr, b, e, ok, table_stride, ROW, cols, CI, PB, KFMT, BLOCK_E,
                                  ALIGN)
            s = tl.dot(k.to(DOT_DT), qt)  # [BE, BH]
            s = tl.maximum(s, 0.0) * wt[None, :]
            sc = tl.sum(s, 1) * kscale
            tl.store(scores_ptr + r.to(tl.int64) * score_stride + e, sc, mask=ok)


@triton.jit(do_not_specialize=["row0", "n_rows", "HI", "table_stride", "score_stride", "n_split"],
            do_not_specialize_on_alignment=["tables_ptr", "tok_seq_ptr", "pos_ptr"])
def _score_group_kernel(q_ptr, w_ptr, keys_ptr, tables_ptr, tok_seq_ptr, pos_ptr, scores_ptr,
                        row0, n_rows, HI, table_stride, score_stride, ROW, n_split,
                        CI: tl.constexpr, PB: tl.constexpr, RATIO: tl.constexpr, KFMT: tl.constexpr,
                        BLOCK_H: tl.constexpr, BLOCK_E: tl.constexpr, DOT_DT: tl.constexpr, ALIGN: tl.constexpr,
                        R: tl.constexpr, STAGES: tl.constexpr):
    """_score_kernel for R rows g*R .. g*R+R-1 of the tile per program (g = program_id(0)): the R rows share
    every key tile they need, one MMA [BLOCK_E, CI] x [CI, R*BLOCK_H] per tile (prefill: R consecutive tokens
    of one sequence read each key once instead of R times); each row stops at its own limit. Rows of different
    sequences (a chunk boundary inside the group) take one pass per sequence."""
    g0 = tl.program_id(0) * R
    first = tl.program_id(1) * BLOCK_E
    jr, rvalid, seq_j, lim_j, t_n, h_n, valid_n, seq_n = _group_rows(tok_seq_ptr, pos_ptr, row0, g0, n_rows, HI,
                                                                      RATIO, R, BLOCK_H)
    cols = tl.arange(0, CI)
    for p in tl.static_range(R):
        bp, act_j, limit, run = _group_pass(p, jr, rvalid, seq_j, lim_j, g0, n_rows, first)
        if run:
            b = bp.to(tl.int64)
            act_n = valid_n & (seq_n == bp)
            wt = tl.load(w_ptr + t_n * HI + h_n, mask=act_n, other=0.0)
            qt = tl.load(q_ptr + (t_n[None, :] * HI + h_n[None, :]) * CI + cols[:, None], mask=act_n[None, :],
                         other=0.0)
            qt = qt.to(DOT_DT)
            for e0 in tl.range(first, limit, n_split * BLOCK_E, num_stages=STAGES):
                e = e0 + tl.arange(0, BLOCK_E)
                ok = e < limit
                k, kscale = _key_tile(keys_ptr, tables_ptr, b, e, ok, table_stride, ROW, cols, CI, PB, KFMT,
                                      BLOCK_E, ALIGN)
                sc = tl.dot(k.to(DOT_DT), qt)  # [BE, R*BH]
                sc = tl.maximum(sc, 0.0) * wt[None, :]
                sc = tl.sum(tl.reshape(sc, (BLOCK_E, R, BLOCK_H)), 2) * kscale[:, None]  # [BE, R]
                dst = scores_ptr + (g0 + jr).to(tl.int64)[None, :] * score_stride + e[:, None]
                tl.store(dst, sc, mask=(e[:, None] < lim_j[None, :]) & act_j[None, :])


@triton.jit(do_not_specialize=["row0", "score_stride", "out_stride"], do_not_specialize_on_alignment=["pos_ptr"])
def _topk_kernel(scores_ptr, pos_ptr, out_ptr, row0, score_stride, out_stride,
                 K: tl.constexpr, RATIO: tl.constexpr, BLOCK: tl.constexpr, IN_REG: tl.constexpr):
    """IN_REG: the whole row (<= BLOCK entries) is read once into registers and every pass runs
    there; else each pass streams the row in BLOCK-entry chunks (common.stream_topk)."""
    r = tl.program_id(0)
    t = row0 + r
    pos = tl.load(pos_ptr + t)
    limit = (pos + 1) // RATIO
    offs = tl.arange(0, BLOCK)
    orow = out_ptr + t.to(tl.int64) * out_stride
    srow = scores_ptr + r.to(tl.int64) * score_stride
    if limit <= K:
        for k0 in range(0, K, BLOCK):
            kk = k0 + offs
            tl.store(orow + kk, tl.where(kk < limit, kk, -1), mask=kk < K)
    elif IN_REG:
        ok = offs < limit
        key = ordered_key(tl.load(srow + offs, mask=ok, other=0.0))
        thr, need = radix_kth(key, ok, tl.full([], K, tl.int32))
        emit_topk(offs, key, ok, thr, need, orow, K)
    else:
        stream_topk(srow, orow, limit, K, BLOCK)


_SPLIT = {"on": os.environ.get("V4_TOPK_SPLIT", "1") == "1"}  # topk_long for few long rows (off on failure)
REG_TOPK_MAX = 8192  # rows up to this many entries (32K context at ratio 4) use the in-register kernel


def topk_rows(scores: torch.Tensor, positions: torch.Tensor, out: torch.Tensor, row0: int, n_rows: int, topk: int,
              ratio: int, reg_max: int | None = None) -> None:
    """Select the top-k of scores[r, :(pos[row0+r]+1)//ratio] into out[row0+r] for r < n_rows."""
    e_cap = scores.shape[1]
    reg_max = REG_TOPK_MAX if reg_max is None else reg_max
    from . import topk_prefill as tp
    if tp.ENABLED and e_cap > reg_max and tp.use_prefill(n_rows, e_cap, topk):  # many long rows (prefill)
        return tp.topk_rows_prefill(scores, positions, out, row0, n_rows, topk, ratio)
    if e_cap > reg_max and _SPLIT["on"]:
        from .topk_long import topk_rows_split, use_split
        if use_split(n_rows, e_cap, topk):  # few long rows (decode at long context): chunks over programs
            try:
                return topk_rows_split(scores, positions, out, row0, n_rows, topk, ratio)
            except (triton.CompilationError, triton.OutOfResources) as e:  # compile-time only: fall back
                _SPLIT["on"] = False
                logging.getLogger("v4serve.kernels").warning("split top-k unavailable (%s); streaming kernel",
                                                             repr(e)[:200])
    if e_cap <= reg_max:
        block = max(16, triton.next_power_of_2(e_cap))
        warps = 4 if INTERPRET else (8 if block <= 2048 else 16)  # H200 sweep (docs/benchmarks.md)
        warps = int(os.environ.get("V4_TOPK_REG_WARPS", warps))
        _topk_kernel[(n_rows,)](scores, positions, out, row0, scores.stride(0), out.stride(0), K=topk, RATIO=ratio,
                                BLOCK=block, IN_REG=True, num_warps=warps)
        return
    block = 256 if INTERPRET else int(os.environ.get("V4_TOPK_BLOCK", 4096))
    _topk_kernel[(n_rows,)](scores, positions, out, row0, scores.stride(0), out.stride(0), K=topk, RATIO=ratio,
                            BLOCK=block, IN_REG=False,
                            num_warps=4 if INTERPRET else int(os.environ.get("V4_TOPK_WARPS", 8)))


def indexer_scores(q, w, keys, meta: AttnMeta, scores: torch.Tensor, row0: int, n_rows: int, ratio: int,
                   key_format: str) -> None:
    n_tok, hi, ci = q.shape
    kfmt = {"dense": 0, "fp8": 1, "fp4": 2}[check_key_store(keys, ci, key_format)]
    row = keys.shape[2]
    pb = keys.shape[1]
    e_cap = scores.shape[1]
    block_e = 32 if INTERPRET else int(os.environ.get("V4_IDX_BLOCK_E", 64))
    dot_dt = tl.float32 if INTERPRET else tl.bfloat16  # FP8 keys are widened to bf16 (q stays bf16)
    # programs per row: every tile its own program while rows x tiles <= SCORE_PROGRAMS, else each
    # program strides over several tiles (bounded grid when e_cap is max_model_len-sized, e.g. in graphs)
    r = score_rows_per_program(n_rows)
    groups = triton.cdiv(n_rows, r)
    n_split = max(1, min(triton.cdiv(e_cap, block_e), triton.cdiv(SCORE_PROGRAMS, groups)))
    common = (q, w, keys, meta.block_tables, meta.tok_seq, meta.positions, scores, row0)
    tail = (hi, meta.block_tables.stride(0), scores.stride(0), row, n_split)
    kw = dict(CI=ci, PB=pb, RATIO=ratio, KFMT=kfmt, BLOCK_H=max(16, triton.next_power_of_2(hi)), BLOCK_E=block_e,
              DOT_DT=dot_dt, ALIGN=math.gcd(row * keys.element_size(), 16), STAGES=1 if INTERPRET else SCORE_STAGES,
              num_warps=4)
    if r == 1:
        _score_kernel[(n_rows, n_split)](*common, *tail, **kw)
    else:
        _score_group_kernel[(groups, n_split)](*common, n_rows, *tail, R=r, **kw)


SCORE_GROUP_MIN_ROWS = 512  # from this many rows per tile (prefill) the score kernel groups SCORE_GROUP_ROWS rows
SCORE_GROUP_ROWS = 1  # rows sharing each key tile; 2: 10-11 % faster in bench `indexer_prefill`, 1M prompt +0.6 %
SCORE_ROWS_CHOICES = (1, 2)  # 4 rows spill at 4 and at 8 warps (ptxas, sm_90: 176 / 368 B of stack)


def score_rows_per_program(n_rows: int) -> int:
    """Rows per score program: SCORE_GROUP_ROWS for prefill-sized tiles, 1 for decode batches (rows of
    different sequences share no keys). V4_IDX_ROWS=<r> overrides it (bench experiments)."""
    env = os.environ.get("V4_IDX_ROWS")
    r = int(env) if env else None
    if r is not None and r not in SCORE_ROWS_CHOICES:
        raise ValueError(f"V4_IDX_ROWS must be one of {SCORE_ROWS_CHOICES}, got {env}")
    if r is not None:
        return r
    return SCORE_GROUP_ROWS if n_rows >= SCORE_GROUP_MIN_ROWS else 1


def row_tiles(r0: int, r1: int, tile: int) -> list[tuple[int, int]]:
    """Rows [r0, r1) as (first row, rows) tiles: as many as tiles of at most `tile` rows need, of equal size up to
    one row, so no tile is a small remainder (e.g. 8,192 rows at tile 545 -> 16 x 512, not 15 x 545 + 17): a
    remainder under topk_prefill.PREFILL_MIN_ROWS rows took topk_long's few-rows path and its first compiles
    inside a 1M-token prompt (session 9)."""
    n = r1 - r0
    if n <= 0:
        return []
    k = -(-n // tile)
    q, extra = divmod(n, k)  # the first `extra` tiles take one row more
    starts = [r0 + i * q + min(i, extra) for i in range(k)]
    return [(a, q + (i < extra)) for i, a in enumerate(starts)]


def indexer_topk(q, w, keys, meta: AttnMeta, topk: int, *, ratio: int = 4, key_format: str,
                 score_fp8: bool | None = None, row_tile: int | None = None, reduce_scores=None):
    """Twin: kernels/ref/indexer.indexer_topk. score_fp8: the FP8 index scores (triton/indexer_fp8.py) for every
    row; None = per sequence, indexer_fp8.fp8_sequences (prefill chunks on the measured GPU class).
    reduce_scores: called in place on every score tile [n, E] before its top-k (tensor parallel: the all-reduce
    of head-partial scores; the tile's columns past a row's limit hold no scores and are never read)."""
    n_tok = q.shape[0]
    out = torch.full((n_tok, topk), -1, dtype=torch.int32, device=q.device)
    e_cap = meta.max_seq_len // ratio
    if n_tok == 0 or e_cap == 0:
        return out
    q = q.contiguous()  # (MXFP4 keys are stored rotated by H: q comes rotated too, Indexer.queries)
    w = w.float().contiguous()
    if not INTERPRET and q.dtype == torch.float32:
        q = q.to(torch.bfloat16)
    if score_fp8 is None:
        segments = f8.row_segments(meta, f8.fp8_sequences(q, meta))
        min_query = f8.min_query_rows() or 1  # the FP8-scored sequences are those chunks (packed alone)
    else:
        segments, min_query = [(0, n_tok, bool(score_fp8))], 1
    if any(use for _, _, use in segments):
        kfmt = {"dense": 0, "fp8": 1, "fp4": 2}[check_key_store(keys, q.shape[2], key_format)]
        packed = f8.pack_keys(keys, meta, q.shape[2], ratio, kfmt, min_query)
    tile = row_tile or max(1, min(n_tok, SCORE_BUDGET_BYTES // (4 * e_cap)))
    scores = torch.empty((min(tile, n_tok), e_cap), dtype=torch.float32, device=q.device)
    for r0, r1, fp8 in segments:
        for row0, n in row_tiles(r0, r1, tile):
            if fp8:
                f8.scores_fp8(q, w, packed, meta, scores, row0, n, ratio, SCORE_PROGRAMS)
            else:
                indexer_scores(q, w, keys, meta, scores, row0, n, ratio, key_format)
            if reduce_scores is not None:
                reduce_scores(scores[:n])
            topk_rows(scores, meta.positions, out, row0, n, topk, ratio)
    return out
