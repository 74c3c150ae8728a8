"""Triton compress-and-store: gated pooling (CSA overlapped / HCA) + RMSNorm + RoPE + paged write,
then the tail-ring update. Decode and prefill use the same two kernels.

_emit_kernel   grid (B, max new entries per sequence): program (b, k) closes entry first_b + k if
               the chunk completes it. Rows (positions) come from the slot's tail ring when before
               the chunk start, else from the chunk's projected rows. Per-channel online softmax
               over the m (HCA) or 2m (CSA: A-half of block i-1 + B-half of block i) rows. Each
               channel is computed together with its RoPE partner (channel ^ 1) so the rotation
               needs no register shuffles. Writes a dense row or a packed FP8 row
               (main entry: 584-byte layout; indexer key: FP8 + fp32 scale).
_tail_kernel   grid (N,): the last coff*m tokens of each chunk -> tail rings (after _emit_kernel).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from kernels.ref.kv_fp8 import check_key_store
from kernels.attn_meta import AttnMeta

from .kv_entry import store_entry_fp8

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


@triton.jit
def _pool_rows(kv_ptr, sc_ptr, kt_ptr, st_ptr, slot, qs, start, p0, n_rows, ch, chp, cmask, ch_off,
               RING: tl.constexpr, WIDTH: tl.constexpr, m, l, a, mp, lp, ap):
    """Online per-channel softmax-pool of rows at positions p0 .. p0+n_rows-1 (channels ch + ch_off)."""
    for i in range(0, n_rows):
        p = p0 + i
        in_tail = p < start
        toff = (slot * RING + p % RING) * WIDTH + ch_off
        coff_ = (qs + p - start).to(tl.int64) * WIDTH + ch_off
        if in_tail:
            s = tl.load(st_ptr + toff + ch, mask=cmask)
            v = tl.load(kt_ptr + toff + ch, mask=cmask)
            sp = tl.load(st_ptr + toff + chp, mask=cmask)
            vp = tl.load(kt_ptr + toff + chp, mask=cmask)
        else:
            s = tl.load(sc_ptr + coff_ + ch, mask=cmask)
            v = tl.load(kv_ptr + coff_ + ch, mask=cmask)
            sp = tl.load(sc_ptr + coff_ + chp, mask=cmask)
            vp = tl.load(kv_ptr + coff_ + chp, mask=cmask)
        mn = tl.maximum(m, s)
        al = tl.exp(m - mn)
        pe = tl.exp(s - mn)
        l = l * al + pe
        a = a * al + pe * v
        m = mn
        mnp = tl.maximum(mp, sp)
        alp = tl.exp(mp - mnp)
        pep = tl.exp(sp - mnp)
        lp = lp * alp + pep
        ap = ap * alp + pep * vp
        mp = mnp
    return m, l, a, mp, lp, ap


@triton.jit
def _store_key_fp4(x, ch, row_ptr, C: tl.constexpr, C_P2: tl.constexpr):
    """Indexer key x [C] -> MXFP4 row (kernels/ref/kv_fp8.pack_index_key_fp4): y = x @ H (normalized
    Hadamard, H[i, j] = (-1)^popcount(i & j) / sqrt(C), generated in registers), one 32-column group at
    a time (= one UE8M0 scale 2^ceil(log2(amax/6))), E2M1 codes rounded to nearest, ties to even code."""
    for g in tl.static_range(C_P2 // 32):
        j = g * 32 + tl.arange(0, 32)
        par = ch[:, None] & j[None, :]
        par = par ^ (par >> 4)
        par = par ^ (par >> 2)
        par = par ^ (par >> 1)
        sign = (1 - 2 * (par & 1)).to(tl.float32)
        y = tl.sum(x[:, None] * sign, 0) * (1.0 / tl.sqrt(C * 1.0))  # [32]
        amax = tl.maximum(tl.max(tl.abs(y), 0), 2.0 ** -120)
        bits = tl.div_rn(amax, 6.0).to(tl.int32, bitcast=True)
        ex = ((bits >> 23) & 0xFF) - 127 + ((bits & 0x7FFFFF) != 0).to(tl.int32)  # exact ceil(log2(amax / 6))
        v = y * ((127 - ex) << 23).to(tl.float32, bitcast=True)  # y * 2^-ex
        a = tl.minimum(tl.abs(v), 6.0)
        code = ((a > 0.25).to(tl.int32) + (a >= 0.75).to(tl.int32) + (a > 1.25).to(tl.int32)
                + (a >= 1.75).to(tl.int32) + (a > 2.5).to(tl.int32) + (a >= 3.5).to(tl.int32)
                + (a > 5.0).to(tl.int32))
        code = code + 8 * ((v < 0) & (code > 0)).to(tl.int32)
        lo, hi = tl.split(tl.reshape(code, (16, 2)))
        tl.store(row_ptr + g * 16 + tl.arange(0, 16), (lo | (hi << 4)).to(tl.uint8))
        tl.store(row_ptr + C // 2 + g, (ex + 127).to(tl.uint8))


@triton.jit(do_not_specialize=["table_stride"],
            do_not_specialize_on_alignment=["tables_ptr", "qstart_ptr", "ctx_ptr", "slot_ptr"])
def _emit_kernel(kv_ptr, sc_ptr, kt_ptr, st_ptr, normw_ptr, invf_ptr, pool_ptr, tables_ptr, qstart_ptr, ctx_ptr,
                 slot_ptr, table_stride, eps,
                 M: tl.constexpr, COFF: tl.constexpr, C: tl.constexpr, C_P2: tl.constexpr, R: tl.constexpr,
                 PB: tl.constexpr, ROW: tl.constexpr, FP8: tl.constexpr, INDEX_KEY: tl.constexpr,
                 KEY_FP4: tl.constexpr):
    b = tl.program_id(0)
    k = tl.program_id(1)
    start = tl.load(ctx_ptr + b)
    qs = tl.load(qstart_ptr + b)
    n = tl.load(qstart_ptr + b + 1) - qs
    e = start // M + k
    if e < (start + n) // M:
        slot = tl.load(slot_ptr + b).to(tl.int64)
        RING: tl.constexpr = COFF * M
        WIDTH: tl.constexpr = COFF * C
        ch = tl.arange(0, C_P2)
        cmask = ch < C
        chp = ch ^ 1
        m = tl.full([C_P2], float("-inf"), tl.float32)
        l = tl.zeros([C_P2], tl.float32)
        a = tl.zeros([C_P2], tl.float32)
        mp = tl.full([C_P2], float("-inf"), tl.float32)
        lp = tl.zeros([C_P2], tl.float32)
        ap = tl.zeros([C_P2], tl.float32)
        if COFF == 2:
            if e > 0:  # A-halves [:C] of block e-1
                m, l, a, mp, lp, ap = _pool_rows(kv_ptr, sc_ptr, kt_ptr, st_ptr, slot, qs, start, (e - 1) * M, M,
                                                 ch, chp, cmask, 0, RING, WIDTH, m, l, a, mp, lp, ap)
            m, l, a, mp, lp, ap = _pool_rows(kv_ptr, sc_ptr, kt_ptr, st_ptr, slot, qs, start, e * M, M,
                                             ch, chp, cmask, C, RING, WIDTH, m, l, a, mp, lp, ap)
        else:
            m, l, a, mp, lp, ap = _pool_rows(kv_ptr, sc_ptr, kt_ptr, st_ptr, slot, qs, start, e * M, M,
                                             ch, chp, cmask, 0, RING, WIDTH, m, l, a, mp, lp, ap)
        x = tl.where(cmask, a / l, 0.0)
        xp = tl.where(cmask, ap / lp, 0.0)
        rstd = tl.rsqrt(tl.sum(x * x, 0) / C + eps)
        x = x * rstd * tl.load(normw_ptr + ch, mask=cmask, other=0.0).to(tl.float32)
        xp = xp * rstd * tl.load(normw_ptr + chp, mask=cmask, other=0.0).to(tl.float32)
        is_rope = ch >= C - R
        fi = tl.where(is_rope, (ch - (C - R)) // 2, 0)
        freq = (e * M).to(tl.float32) * tl.load(invf_ptr + fi, mask=is_rope, other=0.0)
        cs = tl.cos(freq)
        sn = tl.sin(freq)
        odd = (ch % 2) == 1
        rot = tl.where(odd, xp * sn + x * cs, x * cs - xp * sn)
        x = tl.where(is_rope, rot, x)
        blk = tl.load(tables_ptr + b.to(tl.int64) * table_stride + e // PB).to(tl.int64)
        row_ptr = pool_ptr + (blk * PB + e % PB) * ROW
        if FP8:
            if KEY_FP4:
                _store_key_fp4(x, ch, row_ptr, C, C_P2)
            elif INDEX_KEY:
                amax = tl.maximum(tl.max(tl.abs(x), 0), 1e-30)
                scale = amax / 448.0
                qv = tl.minimum(tl.maximum(x / scale, -448.0), 448.0)
                tl.store(row_ptr + ch, qv.to(tl.float8e4nv).to(tl.uint8, bitcast=True), mask=cmask)
                tl.store((row_ptr + C).to(tl.pointer_type(tl.float32)), scale)
            else:
                store_entry_fp8(x, row_ptr, C, C - R, R, True)
        else:
            tl.store(row_ptr + ch, x.to(pool_ptr.dtype.element_ty), mask=cmask)


@triton.jit(do_not_specialize_on_alignment=["tok_seq_ptr", "pos_ptr", "qstart_ptr", "slot_ptr"])
def _tail_kernel(kv_ptr, sc_ptr, kt_ptr, st_ptr, tok_seq_ptr, pos_ptr, qstart_ptr, slot_ptr,
                 RING: tl.constexpr, WIDTH: tl.constexpr, BLOCK: tl.constexpr):
    t = tl.program_id(0)
    b = tl.load(tok_seq_ptr + t)
    qe = tl.load(qstart_ptr + b + 1)
    if qe - 1 - t < RING:
        pos = tl.load(pos_ptr + t)
        slot = tl.load(slot_ptr + b).to(tl.int64)
        dst = (slot * RING + pos % RING) * WIDTH
        src = t.to(tl.int64) * WIDTH
        for c0 in range(0, WIDTH, BLOCK):
            cols = c0 + tl.arange(0, BLOCK)
            cm = cols < WIDTH
            tl.store(kt_ptr + dst + cols, tl.load(kv_ptr + src + cols, mask=cm), mask=cm)
            tl.store(st_ptr + dst + cols, tl.load(sc_ptr + src + cols, mask=cm), mask=cm)


def compress_and_store(kv, score, kv_tail, score_tail, norm_weight, inv_freq, pool, meta: AttnMeta, *, ratio: int,
                       overlap: bool, eps: float, index_keys: str | None = None) -> None:
    n_tok = kv.shape[0]
    if n_tok == 0:
        return
    coff = 2 if overlap else 1
    width = kv.shape[1]
    c = width // coff
    r = 2 * inv_freq.numel()
    kv = kv.float().contiguous()
    score = score.float().contiguous()
    max_new = (meta.max_query_len + ratio - 1) // ratio + 1
    fp8 = pool.dtype == torch.uint8
    if index_keys is not None:  # indexer keys in the named format (kernels/ref/kv_fp8.py)
        check_key_store(pool, c, index_keys)
    key_fp4 = index_keys == "fp4"
    if key_fp4 and c & (c - 1):
        raise ValueError(f"MXFP4 indexer keys need a power-of-two index_head_dim, got {c}")
    _emit_kernel[(meta.num_seqs, max_new)](
        kv, score, kv_tail, score_tail, norm_weight.float().contiguous(), inv_freq.float().contiguous(), pool,
        meta.block_tables, meta.query_start, meta.context_lens, meta.slot_ids, meta.block_tables.stride(0), eps,
        M=ratio, COFF=coff, C=c, C_P2=triton.next_power_of_2(c), R=r, PB=pool.shape[1], ROW=pool.shape[2],
        FP8=fp8, INDEX_KEY=index_keys is not None, KEY_FP4=key_fp4, num_warps=4,
    )
    _tail_kernel[(n_tok,)](kv, score, kv_tail, score_tail, meta.tok_seq, meta.positions, meta.query_start,
                           meta.slot_ids, RING=coff * ratio, WIDTH=width,
                           BLOCK=min(1024, triton.next_power_of_2(width)), num_warps=4)
