"""FP8 index scores for prefill-sized tiles: the lightning indexer's q . k on FP8 tensor cores.

Numerics (the twin: kernels/ref/indexer.index_scores with score_fp8=True): every query head row q[t, h] and
every key k_e is quantized to FP8 E4M3 with one power-of-two scale per 1 x cI row, the reference act_quant
rule (scale 2^ceil(log2(amax/448)), amax >= 1e-4); keys already stored as FP8 + fp32 scale are used as
stored. Then
    I[t, e] = ks[e] * sum_h (w[t, h] * qs[t, h]) * relu(q8[t, h] . k8[e])
with fp32 accumulation: the products of two E4M3 codes are exact, so this equals the twin up to the fp32
summation order. It is finer than the reference model's own FP4 (E2M1, 1 x 32 blocks) simulation of q and k
(architecture.md 4.7).

Two launches per indexer call:
  _pack_kernel   grid (sequences, key tiles): each sequence's keys 0..n_b-1, gathered through its block table
                 (triton/index_keys.py), quantized, written contiguously: codes [sum n_b, cI] + scales
                 [sum n_b] fp32, sequence b from row kbase[b]. One pass over the keys per call (at a 1M
                 prompt and 8K-token chunks: ~35 MB read per CSA layer and chunk).
  _score_kernel  grid (row groups, splits), the layout of triton/indexer._score_group_kernel, on the packed
                 keys: plain pointer math (no block-table load in the loop, so STAGES > 1 pipelines the
                 key loads), one FP8 MMA [BLOCK_E, cI] x [cI, R*BLOCK_H] per key tile (keys the shared-
                 memory A operand), q quantized once per program.
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

from kernels.attn_meta import AttnMeta

from .common import act_quant_tile
from .index_keys import _group_pass, _group_rows, _key_tile

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
BLOCK_E = int(os.environ.get("V4_IDX_FP8_BLOCK_E", 128))  # keys per score tile (H200: 128 ~ 64, see ROWS)
STAGES = int(os.environ.get("V4_IDX_FP8_STAGES", 3))  # software-pipeline stages of the key loop
WARPS = int(os.environ.get("V4_IDX_FP8_WARPS", 4))
# query rows per program sharing each key tile. H200 sweep (docs/benchmarks.md, session 6): 1 row, 64 or 128
# keys, 3 stages, 4 warps at 640-800 TFLOP/s; 2 and 4 rows slower (the wider q operand costs more than the
# key reads it saves)
ROWS = int(os.environ.get("V4_IDX_FP8_ROWS", 1))
ROWS_CHOICES = (1, 2, 4)
PACK_BLOCK = 64  # keys per packing program


@triton.jit(do_not_specialize=["table_stride"],
            do_not_specialize_on_alignment=["tables_ptr", "nkeys_ptr", "kbase_ptr"])
def _pack_kernel(keys_ptr, tables_ptr, nkeys_ptr, kbase_ptr, out_ptr, oscale_ptr, table_stride, ROW,
                 CI: tl.constexpr, PB: tl.constexpr, KFMT: tl.constexpr, BLOCK_E: tl.constexpr,
                 ALIGN: tl.constexpr, DOT_F32: tl.constexpr):
    """Keys e0 .. e0+BLOCK_E-1 of sequence b -> FP8 codes (fp32 values on the E4M3 grid under the
    interpreter) and per-key scales at packed rows kbase[b] + e."""
    b = tl.program_id(0)
    e0 = tl.program_id(1) * BLOCK_E
    n = tl.load(nkeys_ptr + b)
    if e0 < n:
        e = e0 + tl.arange(0, BLOCK_E)
        ok = e < n
        cols = tl.arange(0, CI)
        k, kscale = _key_tile(keys_ptr, tables_ptr, b.to(tl.int64), e, ok, table_stride, ROW, cols, CI, PB, KFMT,
                              BLOCK_E, ALIGN)
        if KFMT == 1:  # stored FP8 codes + fp32 scale: as they are
            codes = k.to(tl.float32) if DOT_F32 else k
        else:
            codes, kscale = act_quant_tile(k, DOT_F32)
        dst = tl.load(kbase_ptr + b) + e.to(tl.int64)
        tl.store(out_ptr + dst[:, None] * CI + cols[None, :], codes, mask=ok[:, None])
        tl.store(oscale_ptr + dst, kscale, mask=ok)


@triton.jit(do_not_specialize=["row0", "n_rows", "HI", "score_stride", "n_split"],
            do_not_specialize_on_alignment=["kbase_ptr", "tok_seq_ptr", "pos_ptr"])
def _score_kernel(q_ptr, w_ptr, k8_ptr, ks_ptr, kbase_ptr, tok_seq_ptr, pos_ptr, scores_ptr,
                  row0, n_rows, HI, score_stride, n_split,
                  CI: tl.constexpr, RATIO: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_E: tl.constexpr,
                  R: tl.constexpr, DOT_F32: tl.constexpr, STAGES: tl.constexpr):
    """Program (g, s): rows g*R .. g*R+R-1 of the tile, packed key tiles s, s + n_split, ... below each row's
    own limit (pos+1)//RATIO. The R rows share every key tile: one MMA [BLOCK_E, CI] x [CI, R*BLOCK_H] per
    tile (keys the shared-memory A operand, cp.async-pipelined; the accumulator [BE, R*BH] sums its heads
    along a thread's own columns). Rows of different sequences in one group take one pass per sequence."""
    g0 = tl.program_id(0) * R
    first = tl.program_id(1) * BLOCK_E
    jr, rvalid, seq_j, lim_j, t_n, h_n, valid_n, seq_n = _group_rows(tok_seq_ptr, pos_ptr, row0, g0, n_rows, HI,
                                                                      RATIO, R, BLOCK_H)
    cols = tl.arange(0, CI)
    for p in tl.static_range(R):
        bp, act_j, limit, run = _group_pass(p, jr, rvalid, seq_j, lim_j, g0, n_rows, first)
        if run:
            kb = tl.load(kbase_ptr + bp)
            act_n = valid_n & (seq_n == bp)
            qrow = tl.load(q_ptr + (t_n[:, None] * HI + h_n[:, None]) * CI + cols[None, :], mask=act_n[:, None],
                           other=0.0)
            q8, qs = act_quant_tile(qrow, DOT_F32)  # [R*BH, CI] codes, [R*BH] scales
            q8t = tl.trans(q8)  # the B operand [CI, R*BH] (K-major: each head's CI codes contiguous)
            wt = tl.load(w_ptr + t_n * HI + h_n, mask=act_n, other=0.0) * qs
            for e0 in tl.range(first, limit, n_split * BLOCK_E, num_stages=STAGES):
                e = e0 + tl.arange(0, BLOCK_E)
                ok = e < limit
                k8 = tl.load(k8_ptr + (kb + e)[:, None] * CI + cols[None, :], mask=ok[:, None], other=0.0)
                ks = tl.load(ks_ptr + kb + e, mask=ok, other=0.0)
                if DOT_F32:
                    sc = tl.dot(k8, q8t, input_precision="ieee")
                else:
                    sc = tl.dot(k8, q8t)  # FP8 x FP8 -> fp32 [BE, R*BH]
                sc = tl.maximum(sc, 0.0) * wt[None, :]
                sc = tl.sum(tl.reshape(sc, (BLOCK_E, R, BLOCK_H)), 2) * ks[:, None]  # [BE, R]
                dst = scores_ptr + (g0 + jr).to(tl.int64)[None, :] * score_stride + e[:, None]
                tl.store(dst, sc, mask=(e[:, None] < lim_j[None, :]) & act_j[None, :])


@torch.compiler.disable
def pack_keys(keys: torch.Tensor, meta: AttnMeta, ci: int, ratio: int, kfmt: int, min_query: int = 1):
    """The indexer keys (those its chunk's rows can select) of every sequence whose chunk has >= min_query tokens
    (the FP8-scored ones: decode rows beside a prefill chunk are not packed) -> (codes [n, ci] float8_e4m3fn
    (fp32 under the interpreter), scales [n] fp32, kbase [B] int64: sequence b's first packed row). Sizes
    from the host lists, offsets on the device (no sync)."""
    lay = meta.packed_layout(ratio, min_query)
    dev = keys.device
    codes = torch.empty((max(lay.total, 1), ci), dtype=torch.float32 if INTERPRET else torch.float8_e4m3fn,
                        device=dev)
    scales = torch.empty(max(lay.total, 1), dtype=torch.float32, device=dev)
    if lay.most:
        row = keys.shape[2]
        _pack_kernel[(meta.num_seqs, triton.cdiv(lay.most, PACK_BLOCK))](
            keys, meta.block_tables, lay.counts, lay.base, codes, scales, meta.block_tables.stride(0), row, CI=ci,
            PB=keys.shape[1], KFMT=kfmt, BLOCK_E=PACK_BLOCK, ALIGN=math.gcd(row * keys.element_size(), 16),
            DOT_F32=INTERPRET, num_warps=8)
    kbase = lay.base
    return codes, scales, kbase


def scores_fp8(q: torch.Tensor, w: torch.Tensor, packed, meta: AttnMeta, scores: torch.Tensor, row0: int,
               n_rows: int, ratio: int, programs: int, *, rows: int | None = None, block_e: int | None = None,
               stages: int | None = None, warps: int | None = None) -> None:
    """FP8 index scores of rows row0 .. row0+n_rows-1 into scores[:n_rows] (the layout of
    indexer.indexer_scores; `packed` from pack_keys, `programs` the grid cap groups x splits). rows / block_e /
    stages / warps override ROWS / BLOCK_E / STAGES / WARPS (bench sweeps)."""
    codes, kscales, kbase = packed
    n_tok, hi, ci = q.shape
    r = rows or ROWS
    if r not in ROWS_CHOICES:
        raise ValueError(f"FP8 index scores take {ROWS_CHOICES} rows per program, got {r}")
    block_e = 32 if INTERPRET else (block_e or BLOCK_E)
    groups = triton.cdiv(n_rows, r)
    n_split = max(1, min(triton.cdiv(scores.shape[1], block_e), triton.cdiv(programs, groups)))
    _score_kernel[(groups, n_split)](
        q, w, codes, kscales, kbase, meta.tok_seq, meta.positions, scores, row0, n_rows, hi, scores.stride(0),
        n_split, CI=ci, RATIO=ratio, BLOCK_H=max(16, triton.next_power_of_2(hi)), BLOCK_E=block_e, R=r,
        DOT_F32=INTERPRET, STAGES=1 if INTERPRET else (stages or STAGES), num_warps=warps or WARPS)


# FP8 index scores for the rows of sequences whose chunk has at least this many tokens (prefill chunks), on the
# measured GPU class only (fp8_table.MEASURED_CAPABILITY). Decided per sequence, not per call, so a sequence's
# numerics never depend on what it is batched with: decode and speculative-verify rows (1 .. k+1 per sequence)
# always keep the bf16 scores, also beside a prefill chunk. A prompt's own rows do depend on how it was chunked
# (the step budget, a prefix-cache hit leaving a short tail), as any shape-dependent kernel choice makes them.
# Measured on the H200: the 1M-token prompt 18,194 ->
# 24,370 tok/s (docs/benchmarks.md, session 6). V4_IDX_FP8_MIN_ROWS=<tokens> sets it (A/B switch, read once at
# import; 0 = off).
FP8_SCORE_MIN_ROWS: int | None = 512
_ENV_MIN_ROWS = os.environ.get("V4_IDX_FP8_MIN_ROWS")


def min_query_rows() -> int | None:
    """The chunk length from which a sequence's rows take the FP8 index scores (None: never)."""
    return FP8_SCORE_MIN_ROWS if _ENV_MIN_ROWS is None else (int(_ENV_MIN_ROWS) or None)


def fp8_sequences(q: torch.Tensor, meta: AttnMeta) -> list[bool]:
    """Per sequence of the batch: whether its rows take the FP8 index scores (the numerics choice of
    `kernels.indexer_topk(score_fp8=None)` on the Triton backend): chunks of >= min_query_rows() tokens on the
    measured GPU class; q [N, HI, cI] the indexer's query rows."""
    from .fp8_table import _on_measured_gpu

    lo = min_query_rows()
    qs = meta.query_start_host
    if lo is None or meta.max_query_len < lo or not _on_measured_gpu(q):
        return [False] * (len(qs) - 1)
    return [qs[b + 1] - qs[b] >= lo for b in range(len(qs) - 1)]


def row_segments(meta: AttnMeta, fp8: list[bool]) -> list[tuple[int, int, bool]]:
    """Flat row ranges [r0, r1) of consecutive sequences with the same choice -> [(r0, r1, fp8), ...] (one range
    for a batch that is all decode or all FP8)."""
    qs = meta.query_start_host
    segs: list[tuple[int, int, bool]] = []
    for b, use in enumerate(fp8):
        r0, r1 = qs[b], qs[b + 1]
        if r1 == r0:
            continue
        if segs and segs[-1][2] == use and segs[-1][1] == r0:
            segs[-1] = (segs[-1][0], r1, use)
        else:
            segs.append((r0, r1, use))
    return segs
