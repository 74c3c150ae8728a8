"""Shared Triton helpers: weight-tile dequantization (bf16 / FP8 128x128 blocks / MXFP4) and UE8M0."""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@triton.jit
def e8m0_to_f32(s, OFFSET: tl.constexpr):
    """UE8M0 byte tensor (any int type) -> fp32 2^(S - 127 + OFFSET), built from the exponent bits."""
    return (((s.to(tl.int32) & 0xFF) + OFFSET) << 23).to(tl.float32, bitcast=True)


@triton.jit
def mma(a, b, acc, DOT_F32: tl.constexpr):
    if DOT_F32:
        return tl.dot(a, b, acc, input_precision="ieee")
    return tl.dot(a, b, acc)


@triton.jit
def load_w_tile(w_ptr, s_ptr, offs_n, nmask, k0, K, stride_n, stride_k, stride_sn, stride_sk,
                WFMT: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, DOT_T: tl.constexpr):
    """Weight tile W[offs_n, k0:k0+BK] -> [BK, BN] in DOT_T, block scale already applied.

    WFMT 0: plain float weights. 1: float8_e4m3fn bytes + UE8M0 [N/128, K/128] (BK divides 128, so
    one scale per column; powers of two, so the scaled value is exact in bf16). 2: MXFP4 (BK % 32 == 0).
    (An even/odd-nibble variant without the join/reshape measured 3-4x slower on the H200.)"""
    if WFMT == 2:
        # MXFP4: int8 [N, K/2] (low nibble = even k) + UE8M0 [N, K/32]. E2M1 -> fp16 bit trick:
        # (c&7)<<9 | sign<<15 is e2m1(c) * 2^-14; the 2^14 goes into the scale.
        kp = k0 // 2 + tl.arange(0, BK // 2)
        p = tl.load(w_ptr + offs_n[:, None] * stride_n + kp[None, :] * stride_k,
                    mask=nmask[:, None] & (kp[None, :] < K // 2), other=0)
        p = p.to(tl.int32) & 0xFF
        c = tl.join(p & 0xF, p >> 4).reshape(BN, BK)
        bits = ((c & 7) << 9) | ((c & 8) << 12)
        v = bits.to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
        ks = k0 // 32 + tl.arange(0, BK // 32)
        s = tl.load(s_ptr + offs_n[:, None] * stride_sn + ks[None, :] * stride_sk,
                    mask=nmask[:, None] & (ks[None, :] < K // 32), other=0)
        sf = e8m0_to_f32(s, 14)
        return tl.trans((v.reshape(BN, BK // 32, 32) * sf[:, :, None]).reshape(BN, BK).to(DOT_T))
    kk = k0 + tl.arange(0, BK)
    w = tl.load(w_ptr + offs_n[:, None] * stride_n + kk[None, :] * stride_k,
                mask=nmask[:, None] & (kk[None, :] < K), other=0)
    if WFMT == 1:
        s = tl.load(s_ptr + (offs_n // 128) * stride_sn + (k0 // 128) * stride_sk, mask=nmask, other=0)
        w = w.to(tl.float8e4nv, bitcast=True).to(DOT_T) * e8m0_to_f32(s, 0).to(DOT_T)[:, None]
    else:
        w = w.to(DOT_T)
    return tl.trans(w)


def dot_dtype(x: torch.Tensor):
    """(Triton dtype of the MMA operands, fp32-dot flag). The interpreter needs fp32 (bf16 dot bug)."""
    if interpreting() or x.dtype == torch.float32:
        return tl.float32, True
    return (tl.float16 if x.dtype == torch.float16 else tl.bfloat16), False


def weight_args(w):
    """(data tensor, scale u8 tensor or dummy, WFMT) for a plain tensor or a QuantWeight."""
    from ..quant_weight import QuantWeight
    if isinstance(w, QuantWeight):
        data = w.data.view(torch.uint8) if w.fmt == "fp8" else w.data
        return data, w.scale_u8(), (1 if w.fmt == "fp8" else 2)
    return w, w, 0
