"""Triton device functions that write one packed FP8 KV entry (the layout of kernels/ref/kv_fp8.py: NOPE e4m3
bytes, R bf16 rope values, NOPE/64 UE8M0 scale bytes, zero pad to a multiple of 8 bytes). Shared by the
attention kv_pack, the fused kv_norm + rope + pack (norm.py) and the compressor's entry store."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def store_entry_fp8(x, row_ptr, D: tl.constexpr, NOPE: tl.constexpr, R: tl.constexpr, mask):
    """Quantize one entry x [D] fp32 (rope = last R dims) into the packed row at row_ptr (uint8); the pad
    bytes are not written (pools are zeroed at allocation)."""
    NB: tl.constexpr = D // 64
    x2 = tl.reshape(x, [NB, 64])
    blk = tl.arange(0, NB)
    lane = tl.arange(0, 64)
    amax = tl.max(tl.abs(x2), 1)
    amax = tl.maximum(amax, 1e-30)
    e = tl.ceil(tl.log2(amax / 448.0))
    e = tl.minimum(tl.maximum(e, -127.0), 127.0)
    qv = x2 * tl.exp2(-e)[:, None]
    qv = tl.minimum(tl.maximum(qv, -448.0), 448.0)
    qb = qv.to(tl.float8e4nv).to(tl.uint8, bitcast=True)
    is_nope = blk < NOPE // 64
    tl.store(row_ptr + blk[:, None] * 64 + lane[None, :], qb, mask=is_nope[:, None] & mask)
    tl.store(row_ptr + NOPE + 2 * R + blk, (e + 127.0).to(tl.uint8), mask=is_nope & mask)
    rptr = (row_ptr + NOPE).to(tl.pointer_type(tl.bfloat16))
    tl.store(rptr + (blk[:, None] * 64 + lane[None, :] - NOPE), x2.to(tl.bfloat16),
             mask=(blk[:, None] * 64 + lane[None, :] >= NOPE) & mask)


@triton.jit
def store_entry_fp8_row(x, row_ptr, D: tl.constexpr, NOPE: tl.constexpr, R: tl.constexpr, ROW: tl.constexpr):
    """store_entry_fp8 into a fresh (uninitialised) ROW-byte row: the pad bytes (fewer than 8) written as 0."""
    store_entry_fp8(x, row_ptr, D, NOPE, R, True)
    PAD0: tl.constexpr = NOPE + 2 * R + NOPE // 64
    k = tl.arange(0, 8)
    tl.store(row_ptr + PAD0 + k, tl.zeros([8], dtype=tl.uint8), mask=PAD0 + k < ROW)
