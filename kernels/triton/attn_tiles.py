"""Tile-level pieces of the sparse-attention kernels (triton/attention.py, the gathering kernel; triton/attention_hca.py,
packed HCA entries for prefill): one entry tile's columns dequantized once, window-slot addressing, the base-2
online-softmax update, the output / split-partial write (optionally inverse-roped), and the split merge."""

from __future__ import annotations

import os

import triton
import triton.language as tl

from .common import rope_pair

# FP8 entries with V4's 64-dim rope: 1 = read every 64-column block unmasked as E4M3 bytes and the rope block once
# as bf16; 0 = the column-masked loads of both over the whole width (the measured kernels). sm_90 SASS of the CSA
# decode kernel (FP8 entries, 32-key tiles): 6,272 -> 4,264 instructions, 316 -> 252 global loads, 528 -> 328 B
# of stack, the same tile values (interpreter tests). Off until timed on the GPU (FP8 KV at batch 64 is 2.5 %
# behind bf16 KV): V4_ATTN_FP8_ROPE_BLOCK=1 for the A/B (read once at import).
FP8_ROPE_BLOCK = tl.constexpr(os.environ.get("V4_ATTN_FP8_ROPE_BLOCK", "0") == "1")


@triton.jit
def _load_cols(ptr, valid, c0, DW: tl.constexpr, NOPE: tl.constexpr, R: tl.constexpr, FP8: tl.constexpr,
               DOT_DT: tl.constexpr):
    """Gather columns [c0, c0 + DW) of rows at byte/element addresses `ptr` [BN] -> [BN, DW] in DOT_DT
    (dequantized once; for FP8 entries c0 and DW are whole 64-column scale blocks)."""
    cols = c0 + tl.arange(0, DW)
    if FP8 and R == 64 and FP8_ROPE_BLOCK:  # V4's layout: one 64-column rope block after whole 64-column E4M3 blocks
        NB: tl.constexpr = DW // 64
        BN: tl.constexpr = ptr.shape[0]
        blk = c0 // 64 + tl.arange(0, NB)
        lane = tl.arange(0, 64)
        # every block read as 64 E4M3 bytes without a column mask (the rope block's bytes are the first 32 of its
        # bf16 values: read, then replaced below), and the rope block once as 64 bf16 values
        raw = tl.load(ptr[:, None, None] + (blk[:, None] * 64 + lane[None, :])[None, :, :], mask=valid[:, None, None],
                      other=0)  # [BN, NB, 64]
        sc = tl.load(ptr[:, None] + (NOPE + 2 * R) + blk[None, :], mask=valid[:, None] & (blk[None, :] < NOPE // 64),
                     other=127)  # [BN, NB] UE8M0, one per 64 dims
        v = raw.to(tl.float8e4nv, bitcast=True).to(tl.float32) * tl.exp2(sc.to(tl.float32) - 127.0)[:, :, None]
        rptr = (ptr + NOPE).to(tl.pointer_type(tl.bfloat16))
        rv = tl.load(rptr[:, None] + lane[None, :], mask=valid[:, None] & (c0 + DW > NOPE), other=0.0)  # [BN, 64]
        v = tl.where((blk >= NOPE // 64)[None, :, None], rv.to(tl.float32)[:, None, :], v)
        return tl.reshape(v, [BN, DW]).to(DOT_DT)
    elif FP8:
        is_nope = cols < NOPE
        raw = tl.load(ptr[:, None] + cols[None, :], mask=valid[:, None] & is_nope[None, :], other=0)
        v8 = raw.to(tl.float8e4nv, bitcast=True).to(tl.float32)
        NB: tl.constexpr = DW // 64
        blk = c0 // 64 + tl.arange(0, NB)
        sc = tl.load(ptr[:, None] + (NOPE + 2 * R) + blk[None, :], mask=valid[:, None] & (blk[None, :] < NOPE // 64),
                     other=127)  # [BN, NB] UE8M0, one per 64 dims
        f = tl.exp2(sc.to(tl.float32) - 127.0)
        BN: tl.constexpr = ptr.shape[0]
        v8 = tl.reshape(tl.reshape(v8, [BN, NB, 64]) * f[:, :, None], [BN, DW])
        rptr = (ptr + NOPE).to(tl.pointer_type(tl.bfloat16))
        rv = tl.load(rptr[:, None] + (cols[None, :] - NOPE), mask=valid[:, None] & (cols[None, :] >= NOPE), other=0.0)
        tile = tl.where(is_nope[None, :], v8, rv.to(tl.float32))
        return tile.to(DOT_DT)
    else:
        tile = tl.load(ptr[:, None] + cols[None, :], mask=valid[:, None], other=0.0)
        return tile.to(DOT_DT)


@triton.jit
def _token_query(t, q_ptr, tok_seq_ptr, pos_ptr, ctx_ptr, qstart_ptr, slot_ptr, H, BLOCK_H: tl.constexpr,
                 D: tl.constexpr, DOT_DT: tl.constexpr):
    """Token t's sequence b, position, its sequence's chunk start (context length), first flat row and slot, and
    its query heads q [BLOCK_H, D] in the dot dtype (rows >= H zero) with their mask."""
    b = tl.load(tok_seq_ptr + t)
    pos = tl.load(pos_ptr + t)
    start = tl.load(ctx_ptr + b)
    qs = tl.load(qstart_ptr + b)
    slot = tl.load(slot_ptr + b).to(tl.int64)
    heads = tl.arange(0, BLOCK_H)
    hmask = heads < H
    cols = tl.arange(0, D)
    q = tl.load(q_ptr + (t.to(tl.int64) * H + heads[:, None]) * D + cols[None, :], mask=hmask[:, None], other=0.0)
    return b, pos, start, qs, slot, heads, hmask, q.to(DOT_DT)


@triton.jit
def _window_ptr(ring_ptr, cur_ptr, j, pos, start, qs, slot, W: tl.constexpr, ROW: tl.constexpr):
    """Window slots j [BN] of a token at `pos` -> (row addresses, valid): slot j is position p = pos-W+1+j, read
    from the sequence's ring (p before the chunk start) or from the chunk's own packed rows."""
    p = pos - W + 1 + j
    win = (j < W) & (p >= 0)
    from_ring = win & (p < start)
    ring_row = (slot * W + (p % W)) * ROW
    cur_row = (qs + p - start).to(tl.int64) * ROW
    return tl.where(from_ring, ring_ptr + ring_row, cur_ptr + cur_row), win


@triton.jit
def _attend(q, kt, vt, valid, m_i, l_i, acc, sm_scale_log2, DOT_DT: tl.constexpr):
    """One key tile kt [BN, D] with its value columns vt [BN, DV] (K = V: vt is kt or a slice of its row) into
    the base-2 online softmax state (m_i, l_i [BH], acc [BH, DV])."""
    s = tl.dot(q, tl.trans(kt)) * sm_scale_log2  # [BH, BN] (log2 units)
    s = tl.where(valid[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m_i - m_safe)
    pr = tl.exp2(s - m_safe[:, None])
    l_i = l_i * alpha + tl.sum(pr, 1)
    acc = acc * alpha[:, None] + tl.dot(pr.to(DOT_DT), vt)
    return m_new, l_i, acc


@triton.jit
def _rope_out(o, t, c0, cos_ptr, sin_ptr, cs_stride, D: tl.constexpr, R: tl.constexpr):
    """Inverse RoPE of the output tile o [rows, DV] fp32 (columns [c0, c0 + DV) of token t's rows): pairs
    (2i, 2i+1) among the last R of D columns, angle i - (D - R)/2 of token t's cos / sin [.., R/2] fp32
    (kernels.ref.norm.rope(inverse=True), without the bf16 rounding in between)."""
    BR: tl.constexpr = o.shape[0]
    DV: tl.constexpr = o.shape[1]
    ev, od = tl.split(tl.reshape(o, [BR, DV // 2, 2]))  # even / odd columns [rows, DV / 2]
    j = c0 // 2 + tl.arange(0, DV // 2) - (D - R) // 2  # angle index of each column pair (< 0: not rotated)
    rm = j >= 0
    cs = tl.load(cos_ptr + t.to(tl.int64) * cs_stride + j, mask=rm, other=1.0)[None, :]
    sn = tl.load(sin_ptr + t.to(tl.int64) * cs_stride + j, mask=rm, other=0.0)[None, :]
    a, b = rope_pair(ev, od, cs, -sn)
    return tl.reshape(tl.join(a, b), [BR, DV])


@triton.jit
def _write_out(m_i, l_i, acc, t, sp, c0, heads, hmask, H, sink_ptr, out_ptr, part_acc_ptr, part_ml_ptr,
               cos_ptr, sin_ptr, cs_stride, NSPLIT: tl.constexpr, D: tl.constexpr, DV: tl.constexpr,
               R: tl.constexpr, ROPE_OUT: tl.constexpr):
    """Columns [c0, c0+DV) of token t's output (sink in the denominator; ROPE_OUT: inverse-roped, `_rope_out`),
    or split sp's partial (m, l, acc) for `_combine_kernel` (the c0 = 0 slice writes (m, l))."""
    ocols = c0 + tl.arange(0, DV)
    if NSPLIT == 1:
        sink = tl.load(sink_ptr + heads, mask=hmask, other=0.0) * 1.4426950408889634
        mm = tl.maximum(m_i, sink)
        den = l_i * tl.exp2(m_i - mm) + tl.exp2(sink - mm)
        o = acc * (tl.exp2(m_i - mm) / den)[:, None]
        if ROPE_OUT:
            o = _rope_out(o, t, c0, cos_ptr, sin_ptr, cs_stride, D, R)
        tl.store(out_ptr + (t.to(tl.int64) * H + heads[:, None]) * D + ocols[None, :], o.to(out_ptr.dtype.element_ty),
                 mask=hmask[:, None])
    else:
        base = (t.to(tl.int64) * NSPLIT + sp) * H
        tl.store(part_acc_ptr + (base + heads[:, None]) * D + ocols[None, :], acc, mask=hmask[:, None])
        mlmask = hmask & (c0 == 0)  # every slice has the same (m, l): the first one writes them
        tl.store(part_ml_ptr + (base + heads) * 2, m_i, mask=mlmask)
        tl.store(part_ml_ptr + (base + heads) * 2 + 1, l_i, mask=mlmask)


@triton.jit
def _combine_kernel(part_acc_ptr, part_ml_ptr, sink_ptr, out_ptr, H, cos_ptr, sin_ptr, cs_stride,
                    NSPLIT: tl.constexpr, NS_P2: tl.constexpr, D: tl.constexpr, R: tl.constexpr = 0,
                    ROPE_OUT: tl.constexpr = False):
    t = tl.program_id(0)
    h = tl.program_id(1)
    sidx = tl.arange(0, NS_P2)
    smask = sidx < NSPLIT
    base = (t.to(tl.int64) * NSPLIT + sidx) * H + h
    m = tl.load(part_ml_ptr + base * 2, mask=smask, other=float("-inf"))
    l = tl.load(part_ml_ptr + base * 2 + 1, mask=smask, other=0.0)
    sink = tl.load(sink_ptr + h) * 1.4426950408889634
    mm = tl.maximum(tl.max(m, 0), sink)
    wgt = tl.exp2(m - mm)
    den = tl.sum(l * wgt, 0) + tl.exp2(sink - mm)
    cols = tl.arange(0, D)
    a = tl.load(part_acc_ptr + base[:, None] * D + cols[None, :], mask=smask[:, None], other=0.0)
    o = tl.sum(a * wgt[:, None], 0) / den
    if ROPE_OUT:
        o = tl.reshape(_rope_out(tl.reshape(o, [1, D]), t, 0, cos_ptr, sin_ptr, cs_stride, D, R), [D])
    tl.store(out_ptr + (t.to(tl.int64) * H + h) * D + cols, o.to(out_ptr.dtype.element_ty))
