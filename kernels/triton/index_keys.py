"""One tile of indexer keys read through a sequence's block table, in any key-store format (dense, FP8 + fp32
scale, MXFP4): the gather shared by the score kernels (triton/indexer.py) and the FP8 key packing of the
FP8 index scores (triton/indexer_fp8.py); and the row-group bookkeeping (`_group_rows`, `_group_pass`) of the
score kernels that let R rows share each key tile."""

from __future__ import annotations

import triton
import triton.language as tl

from .common import e2m1_f32, e8m0_to_f32


@triton.jit
def _key_tile(keys_ptr, tables_ptr, b, e, ok, table_stride, ROW, cols, CI: tl.constexpr, PB: tl.constexpr,
              KFMT: tl.constexpr, BLOCK_E: tl.constexpr, ALIGN: tl.constexpr):
    """Indexer keys e (BLOCK_E of them, `ok` = in range) of sequence b through its block table -> (keys
    [BLOCK_E, CI] (FP8 / fp32 / bf16 values), per-key scale fp32 [BLOCK_E] (1 unless FP8))."""
    blk = tl.load(tables_ptr + b * table_stride + e // PB, mask=ok, other=0).to(tl.int64)
    # (not (blk * PB + e % PB) * ROW: Triton 3.6's axis analysis keeps the divisibility (64) of the
    # contiguous e % PB through the add with blk * PB, so it emitted 16-byte loads for 132-byte FP8
    # rows -> "misaligned address" on the H200)
    row = blk * (PB * ROW) + (e % PB) * ROW
    if KFMT == 1:  # FP8 E4M3 + fp32 scale
        row = tl.multiple_of(row, ALIGN)  # gcd(row bytes, 16): 4 for 132-byte rows
        raw = tl.load(keys_ptr + row[:, None] + cols[None, :], mask=ok[:, None], other=0)
        k = raw.to(tl.float8e4nv, bitcast=True)
        sb = keys_ptr + row + CI  # fp32 scale, assembled from 4 bytes (no alignment assumption)
        s0 = tl.load(sb, mask=ok, other=0).to(tl.uint32)
        s1 = tl.load(sb + 1, mask=ok, other=0).to(tl.uint32)
        s2 = tl.load(sb + 2, mask=ok, other=0).to(tl.uint32)
        s3 = tl.load(sb + 3, mask=ok, other=0).to(tl.uint32)
        kscale = (s0 | (s1 << 8) | (s2 << 16) | (s3 << 24)).to(tl.float32, bitcast=True)
    elif KFMT == 2:  # MXFP4 (rotated keys; q arrives rotated): CI/2 code bytes + CI/32 UE8M0 scales
        row = tl.multiple_of(row, ALIGN)  # 4 for 68-byte rows (ci=128), 2 for 34-byte rows (ci=64)
        kp = tl.arange(0, CI // 2)
        raw = tl.load(keys_ptr + row[:, None] + kp[None, :], mask=ok[:, None], other=0).to(tl.int32) & 0xFF
        codes = tl.join(raw & 0xF, raw >> 4).reshape(BLOCK_E, CI)
        gs = tl.arange(0, CI // 32)
        sb = tl.load(keys_ptr + row[:, None] + CI // 2 + gs[None, :], mask=ok[:, None], other=0)
        k = (e2m1_f32(codes).reshape(BLOCK_E, CI // 32, 32) * e8m0_to_f32(sb, 14)[:, :, None]).reshape(BLOCK_E, CI)
        kscale = tl.full([BLOCK_E], 1.0, tl.float32)
    else:
        k = tl.load(keys_ptr + row[:, None] + cols[None, :], mask=ok[:, None], other=0.0)
        kscale = tl.full([BLOCK_E], 1.0, tl.float32)
    return k, kscale


@triton.jit
def _group_rows(tok_seq_ptr, pos_ptr, row0, g0, n_rows, HI, RATIO: tl.constexpr, R: tl.constexpr,
                BLOCK_H: tl.constexpr):
    """Rows g0 .. g0+R-1 of a score tile that share each key tile: per row j (jr, valid, sequence, limit
    (pos+1)//RATIO), and per column n of the fused q operand (row j = n // BLOCK_H, head h = n % BLOCK_H) its
    token, head, validity and sequence."""
    jr = tl.arange(0, R)
    rvalid = g0 + jr < n_rows
    seq_j = tl.load(tok_seq_ptr + row0 + g0 + jr, mask=rvalid, other=-1)
    lim_j = tl.where(rvalid, (tl.load(pos_ptr + row0 + g0 + jr, mask=rvalid, other=0) + 1) // RATIO, 0)
    cn = tl.arange(0, R * BLOCK_H)
    j_n = cn // BLOCK_H
    h_n = cn % BLOCK_H
    t_n = (row0 + g0 + j_n).to(tl.int64)
    valid_n = (g0 + j_n < n_rows) & (h_n < HI)
    seq_n = tl.load(tok_seq_ptr + t_n, mask=valid_n, other=-1)
    return jr, rvalid, seq_j, lim_j, t_n, h_n, valid_n, seq_n


@triton.jit
def _group_pass(p, jr, rvalid, seq_j, lim_j, g0, n_rows, first):
    """Pass p of a row group (one pass per sequence among its rows) -> (the sequence of row p, its rows of the
    group, their largest limit, whether this program scores in this pass: row p exists, no earlier pass took its
    sequence, and the program's first key tile is below the limit)."""
    bp = tl.sum(tl.where(jr == p, seq_j, 0), 0)
    dup = tl.sum(((jr < p) & rvalid & (seq_j == bp)).to(tl.int32), 0)
    act_j = rvalid & (seq_j == bp)
    limit = tl.max(tl.where(act_j, lim_j, 0), 0)
    return bp, act_j, limit, (g0 + p < n_rows) & (dup == 0) & (first < limit)
