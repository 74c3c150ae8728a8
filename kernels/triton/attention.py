"""Triton sparse attention over window ring + compressed entries (decode and chunked prefill).

One program = one query token x all its heads (BLOCK_H >= 16 rows of one tl.dot) x one split of
its entry list. The entry list of token t is [W window slots | compressed entries]: window slot j
is position p = pos-W+1+j (read from the slot's ring if p < chunk start, else from the chunk's own
packed rows `kv_cur`); compressed entry = topk_idx[t, j-W] (CSA, -1 = none) or j-W (HCA, valid
while < (pos+1)//ratio), addressed through the block table. Each tile of BLOCK_N entries is
gathered (index -> address) and dequantized ONCE into a [BLOCK_N, D] tile that serves as K for
s = q @ K^T and as V for acc += p @ V (K = V), online softmax in base 2, per-head sink added to
the denominator at the end. Long lists (HCA at long context, small batch) are split over
NSPLIT programs whose partial (m, l, acc) are merged by `_combine_kernel`.

Storage format: dense rows (bf16/fp16/fp32) or packed FP8 uint8 rows (kernels/ref/kv_fp8.py):
NOPE e4m3 bytes, R bf16 rope values, NOPE/64 UE8M0 scale bytes.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from kernels.attn_meta import AttnMeta
from kernels.kv_format import check_kernel_dims

from . import attention_hca as hca
from .attn_tiles import _attend, _combine_kernel, _load_cols, _token_query, _window_ptr, _write_out
from .device_info import num_sms
from .kv_entry import store_entry_fp8_row
from .norm import norm_rope, norm_rope_pack, rope

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def _cfg(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


@triton.jit(do_not_specialize=["table_stride", "topk_stride", "split_len"],
            do_not_specialize_on_alignment=["topk_ptr", "tables_ptr", "tok_seq_ptr", "pos_ptr", "qstart_ptr",
                                            "ctx_ptr", "slot_ptr"])
def _sparse_attn_kernel(
    q_ptr, cur_ptr, ring_ptr, pool_ptr, topk_ptr, tables_ptr, tok_seq_ptr, pos_ptr, qstart_ptr, ctx_ptr,
    slot_ptr, sink_ptr, out_ptr, part_acc_ptr, part_ml_ptr, cos_ptr, sin_ptr,
    H, table_stride, topk_stride, split_len, sm_scale_log2, cs_stride,
    W: tl.constexpr, ROW: tl.constexpr, PB: tl.constexpr, RATIO: tl.constexpr, K: tl.constexpr,
    HAS_POOL: tl.constexpr, HAS_TOPK: tl.constexpr, NSPLIT: tl.constexpr,
    D: tl.constexpr, NOPE: tl.constexpr, R: tl.constexpr, FP8: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr, DOT_DT: tl.constexpr, DSPLIT: tl.constexpr,
    ROPE_OUT: tl.constexpr = False,
):
    """One program: one token x one split of its keys x one 1/DSPLIT slice of the value columns (DSPLIT > 1
    recomputes the full-width scores in every slice's program for a DSPLIT-times smaller accumulator)."""
    t = tl.program_id(0)
    sp = tl.program_id(1)
    DV: tl.constexpr = D // DSPLIT
    if DSPLIT == 1:
        c0 = 0
    else:
        c0 = tl.program_id(2) * DV
    b, pos, start, qs, slot, heads, hmask, q = _token_query(t, q_ptr, tok_seq_ptr, pos_ptr, ctx_ptr, qstart_ptr,
                                                            slot_ptr, H, BLOCK_H, D, DOT_DT)

    if HAS_POOL:
        if HAS_TOPK:
            total = W + K
        else:
            total = W + (pos + 1) // RATIO
    else:
        total = W
    lo = sp * split_len
    hi = tl.minimum(lo + split_len, total)

    m_i = tl.full([BLOCK_H], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_H], tl.float32)
    acc = tl.zeros([BLOCK_H, DV], tl.float32)
    offs = tl.arange(0, BLOCK_N)
    for j0 in range(lo, hi, BLOCK_N):
        j = j0 + offs
        ptr, valid = _window_ptr(ring_ptr, cur_ptr, j, pos, start, qs, slot, W, ROW)
        if HAS_POOL:
            is_c = (j >= W) & (j < hi)
            if HAS_TOPK:
                e = tl.load(topk_ptr + t.to(tl.int64) * topk_stride + (j - W), mask=is_c, other=-1)
                c_ok = is_c & (e >= 0)
            else:
                e = j - W
                c_ok = is_c
            e = tl.where(c_ok, e, 0)
            blk = tl.load(tables_ptr + b.to(tl.int64) * table_stride + e // PB, mask=c_ok, other=0).to(tl.int64)
            pool_row = (blk * PB + e % PB) * ROW
            ptr = tl.where(c_ok, pool_ptr + pool_row, ptr)
            valid = valid | c_ok
        kt = _load_cols(ptr, valid, 0, D, NOPE, R, FP8, DOT_DT)  # [BN, D]
        if DSPLIT == 1:
            vt = kt
        else:  # this program's value columns (the row was just read: L1 / L2)
            vt = _load_cols(ptr, valid, c0, DV, NOPE, R, FP8, DOT_DT)  # [BN, DV]
        m_i, l_i, acc = _attend(q, kt, vt, valid, m_i, l_i, acc, sm_scale_log2, DOT_DT)

    _write_out(m_i, l_i, acc, t, sp, c0, heads, hmask, H, sink_ptr, out_ptr, part_acc_ptr, part_ml_ptr,
               cos_ptr, sin_ptr, cs_stride, NSPLIT, D, DV, R, ROPE_OUT)


def _fmt(store: torch.Tensor, c: int, rope_dim: int):
    """-> (FP8 entries?, nope dims, rope dims) of a ring / pool store; FP8 needs whole 64-dim scale
    blocks of nope dims (the engine checks this at build time, kv_format.check_kernel_dims)."""
    if store.dtype != torch.uint8:
        return False, c, rope_dim
    check_kernel_dims("fp8", c, rope_dim, "cuda")
    return True, c - rope_dim, rope_dim


def _num_splits(n_tok: int, max_total: int, block_n: int) -> int:
    forced = _cfg("V4_ATTN_NSPLIT", 0)
    if forced:
        return max(1, min(forced, triton.cdiv(max_total, block_n)))
    sms = num_sms()
    if n_tok >= sms or max_total <= 4 * block_n:
        return 1
    return max(1, min(triton.cdiv(2 * sms, n_tok), triton.cdiv(max_total, 4 * block_n), 64))


# value-column slices per program (1 = the whole 512-wide accumulator in one program, the measured default);
# V4_ATTN_DSPLIT=2 halves the accumulator (each half recomputes the scores): 2 and 4 measured slower on the H200
# (docs/benchmarks.md, session 5)
DSPLIT = _cfg("V4_ATTN_DSPLIT", 1)
# FP8 entries alone (A/B switches): V4_ATTN_DSPLIT_FP8 and V4_ATTN_BLOCK_N_FP8 override DSPLIT and the key tile
# for FP8 KV only (sm_90 stack per thread, bf16 / FP8: 32-key tiles 304 / 528 B at DSPLIT 1, 16-key tiles 48 / 96
# B). Session 10, batch 64: FP8 KV 11.606 ms at the defaults, 11.711 with 16-key tiles, 11.911 with 16-key tiles
# and 2 slices, so both stay at the shared defaults
DSPLIT_FP8 = _cfg("V4_ATTN_DSPLIT_FP8", DSPLIT)
BLOCK_N = _cfg("V4_ATTN_BLOCK_N", 32)  # keys per tile (both read at import)
BLOCK_N_FP8 = _cfg("V4_ATTN_BLOCK_N_FP8", BLOCK_N)
# `out_rope` (the inverse RoPE of the output) in the kernels' output write instead of its own norm.rope pass
# (a launch per layer and a read + write of the [N, 64, 512] output); off (V4_ATTN_ROPE_OUT=1 turns it on, read
# at import). Session 11, one H200: decode at batch 64 11.35-11.37 against 11.43-11.51 ms (bf16 KV) and
# 11.36-11.45 against 11.48-11.51 (FP8 KV), batch 1 and 256 within noise; the 1M-token prompt 33,002 against
# 32,468-32,479 tok/s in its second round (one run). Off again since session 12: on the GPU the whole-model
# logits (test_model_logits_triton_vs_torch) drift further from the fp32 truth with it than with the separate
# pass (bf16 KV: relative error 0.142 against 0.115; fp8 KV: top-1 0.807 against 0.847, under the test's bound),
# while the kernel-level parity passes: a GPU-only path (likely the packed HCA prefill) is suspect
# (docs/benchmarks.md, session 12)
ROPE_OUT = _cfg("V4_ATTN_ROPE_OUT", 0) == 1


def sparse_attention(q, kv_cur, ring, pool, topk_idx, meta: AttnMeta, sink, *, ratio: int, scale: float,
                     rope_dim: int, out_rope=None, nsplit: int | None = None, block_n: int | None = None,
                     num_warps: int | None = None, dsplit: int | None = None, hca_packed: bool | None = None,
                     rope_out: bool | None = None):
    """hca_packed: an HCA layer's entries packed once per call, then read contiguously (triton/attention_hca.py);
    None = attention_hca.use_packed_hca (prefill-sized chunks on the measured GPU class). out_rope (cos, sin):
    the output inverse-roped (the twin's contract), in the output write when rope_out (None = ROPE_OUT), else
    by norm.rope after."""
    n_tok, h, c = q.shape
    fuse = out_rope is not None and (ROPE_OUT if rope_out is None else rope_out)
    if out_rope is not None and not fuse:
        out = sparse_attention(q, kv_cur, ring, pool, topk_idx, meta, sink, ratio=ratio, scale=scale,
                               rope_dim=rope_dim, nsplit=nsplit, block_n=block_n, num_warps=num_warps, dsplit=dsplit,
                               hca_packed=hca_packed)
        return rope(out, out_rope[0], out_rope[1], inverse=True)
    out = torch.empty_like(q)
    if n_tok == 0:
        return out
    if fuse:
        cos, sin = (t.float().contiguous() for t in out_rope)
        if cos.shape != (n_tok, rope_dim // 2) or sin.shape != cos.shape:
            raise ValueError(f"out_rope: cos / sin of shape {(n_tok, rope_dim // 2)} expected, got "
                             f"{tuple(cos.shape)} / {tuple(sin.shape)}")
    else:
        cos = sin = sink
    assert c & (c - 1) == 0, "head_dim must be a power of two"
    fp8, nope, r = _fmt(ring, c, rope_dim)
    w = ring.shape[1]
    row = ring.shape[2]
    has_pool = pool is not None
    has_topk = topk_idx is not None
    k = topk_idx.shape[1] if has_topk else 0
    pb = pool.shape[1] if has_pool else 1
    if has_pool and has_topk:
        max_total = w + k
    elif has_pool:
        max_total = w + meta.max_seq_len // ratio
    else:
        max_total = w
    bn = block_n or (16 if INTERPRET else (BLOCK_N_FP8 if fp8 else BLOCK_N))
    ns = nsplit or _num_splits(n_tok, max_total, bn)
    split_len = triton.cdiv(triton.cdiv(max_total, ns), bn) * bn
    block_h = max(16, triton.next_power_of_2(h))
    dot_dt = tl.float32 if (INTERPRET or q.dtype == torch.float32) else tl.bfloat16
    if ns > 1:
        part_acc = torch.empty((n_tok, ns, h, c), dtype=torch.float32, device=q.device)
        part_ml = torch.empty((n_tok, ns, h, 2), dtype=torch.float32, device=q.device)
    else:
        part_acc = part_ml = out
    dummy = kv_cur
    tables = meta.block_tables
    topk_t = topk_idx if has_topk else meta.tok_seq
    ds = dsplit or (DSPLIT_FP8 if fp8 else DSPLIT)
    if ds not in (1, 2, 4) or (fp8 and c // ds % 64) or c // ds < 16:
        raise ValueError(f"dsplit {ds}: 1, 2 or 4 slices of whole 64-column blocks of the {c}-wide entries")
    if has_pool and not has_topk:
        if hca_packed and ds != 1:
            raise ValueError("the packed HCA path keeps the whole value width in one program (dsplit 1)")
        if (ds == 1 and hca.use_packed_hca(meta, ratio, q)) if hca_packed is None else hca_packed:
            return hca.hca_prefill_attention(q, kv_cur, ring, pool, meta, sink, ratio=ratio, scale=scale, fp8=fp8,
                                             nope=nope, rope_dim=r, nsplit=nsplit or _num_splits(n_tok, max_total,
                                                                                                  hca.BLOCK_N),
                                             out_rope=(cos, sin) if fuse else None)
    _sparse_attn_kernel[(n_tok, ns, ds)](
        q.contiguous(), kv_cur, ring, pool if has_pool else dummy, topk_t, tables, meta.tok_seq, meta.positions,
        meta.query_start, meta.context_lens, meta.slot_ids, sink.float().contiguous(), out, part_acc, part_ml,
        cos, sin, h, tables.stride(0), topk_t.stride(0) if has_topk else 0, split_len, scale * 1.4426950408889634,
        cos.stride(0) if fuse else 0,
        W=w, ROW=row, PB=pb, RATIO=max(ratio, 1), K=k, HAS_POOL=has_pool, HAS_TOPK=has_topk, NSPLIT=ns,
        D=c, NOPE=nope, R=r, FP8=fp8, BLOCK_H=block_h, BLOCK_N=bn, DOT_DT=dot_dt, DSPLIT=ds, ROPE_OUT=fuse,
        num_warps=num_warps or _cfg("V4_ATTN_WARPS", 8), num_stages=_cfg("V4_ATTN_STAGES", 2),
    )
    if ns > 1:
        _combine_kernel[(n_tok, h)](part_acc, part_ml, sink.float().contiguous(), out, h, cos, sin,
                                    cos.stride(0) if fuse else 0, NSPLIT=ns, NS_P2=triton.next_power_of_2(ns), D=c,
                                    R=r, ROPE_OUT=fuse, num_warps=4)
    return out


# ---- packing and window store ---------------------------------------------------------------

@triton.jit
def _pack_kernel(x_ptr, out_ptr, ROW: tl.constexpr, D: tl.constexpr, NOPE: tl.constexpr, R: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    x = tl.load(x_ptr + t * D + tl.arange(0, D)).to(tl.float32)
    store_entry_fp8_row(x, out_ptr + t * ROW, D, NOPE, R, ROW)


def kv_pack(kv, ring, rope_dim: int):
    if ring.dtype != torch.uint8:
        return kv.to(ring.dtype).contiguous()
    n, c = kv.shape
    row = ring.shape[-1]
    out = torch.empty((n, row), dtype=torch.uint8, device=kv.device)  # every byte written, the pad as 0
    if n:
        _pack_kernel[(n,)](kv.contiguous(), out, ROW=row, D=c, NOPE=c - rope_dim, R=rope_dim, num_warps=4)
    return out


def kv_entries(x, weight, eps, cos, sin, ring, rope_dim: int):
    """Same contract as kernels.ref.attention.kv_entries: one kernel (kv_norm + rope, then the ring's
    format; FP8 rows packed in the same kernel)."""
    if ring.dtype != torch.uint8:
        return norm_rope(x, weight, eps, cos, sin, out_dtype=ring.dtype)
    return norm_rope_pack(x, weight, eps, cos, sin, ring.shape[-1], rope_dim)


@triton.jit(do_not_specialize_on_alignment=["tok_seq_ptr", "pos_ptr", "qstart_ptr", "slot_ptr"])
def _window_store_kernel(cur_ptr, ring_ptr, tok_seq_ptr, pos_ptr, qstart_ptr, slot_ptr,
                         W: tl.constexpr, ROW: tl.constexpr, BLOCK: tl.constexpr):
    t = tl.program_id(0)
    b = tl.load(tok_seq_ptr + t)
    pos = tl.load(pos_ptr + t)
    qs = tl.load(qstart_ptr + b)
    qe = tl.load(qstart_ptr + b + 1)
    if qe - 1 - t < W:
        slot = tl.load(slot_ptr + b).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        v = tl.load(cur_ptr + t.to(tl.int64) * ROW + cols, mask=cols < ROW)
        tl.store(ring_ptr + (slot * W + pos % W) * ROW + cols, v, mask=cols < ROW)


def window_store(kv_cur, ring, meta: AttnMeta) -> None:
    n = kv_cur.shape[0]
    if n == 0:
        return
    w, row = ring.shape[1], ring.shape[2]
    _window_store_kernel[(n,)](kv_cur, ring, meta.tok_seq, meta.positions, meta.query_start, meta.slot_ids,
                               W=w, ROW=row, BLOCK=triton.next_power_of_2(row), num_warps=4)
