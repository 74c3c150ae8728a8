"""Triton FP8 activation quantization (the reference act_quant) as a pass of its own.

x [M, K] (bf16 / fp32, K a multiple of 128) -> codes float8_e4m3fn [M, K] and UE8M0 power-of-two scales fp32,
one per 1x128 block: scale 2^ceil(log2(amax / 448)), amax >= 1e-4 (`common.act_quant_tile`, shared with the
block linear's in-kernel path). The scales are written M-major (storage [K/128, M], returned as the [M, K/128]
transposed view), the only layout cuBLASLt's blockwise-scaled GEMM takes (`fp8_scaled_mm.py`). One program per
(64-row tile, 128-column block). Twin: kernels.ref.quant.act_quant.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import act_quant_tile, interpreting


@triton.jit(do_not_specialize=["M", "MP"])
def _act_quant_kernel(x_ptr, q_ptr, s_ptr, M, MP, K, stride_xm, stride_qm, s_sm, s_sk, BM: tl.constexpr,
                      DOT_F32: tl.constexpr):
    pid_m = tl.program_id(0)
    kb = tl.program_id(1)
    rows = pid_m * BM + tl.arange(0, BM)
    rmask = rows < M
    omask = rows < MP  # rows M..MP-1: padding, zeros quantized
    r64 = rows.to(tl.int64)
    cols = kb * 128 + tl.arange(0, 128)
    a = tl.load(x_ptr + r64[:, None] * stride_xm + cols[None, :], mask=rmask[:, None], other=0.0)
    aq, xs = act_quant_tile(a, DOT_F32)
    tl.store(q_ptr + r64[:, None] * stride_qm + cols[None, :], aq.to(q_ptr.dtype.element_ty), mask=omask[:, None])
    tl.store(s_ptr + r64 * s_sm + kb * s_sk, xs, mask=omask)


def act_quant(x: torch.Tensor, pad_to: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] -> (codes float8_e4m3fn [Mp, K], scales fp32 [Mp, K/128], M-major storage); Mp = M rounded up to
    a multiple of pad_to (cuBLASLt's blockwise-scaled GEMM takes M-major scales only for whole groups of 4
    rows), the padding rows quantize zeros."""
    if x.dim() != 2 or x.shape[1] % 128:
        raise ValueError(f"act_quant takes [M, K] rows with K a multiple of 128, got {tuple(x.shape)}")
    if pad_to < 1:
        raise ValueError(f"act_quant pad_to must be >= 1, got {pad_to}")
    if x.stride(1) != 1:
        x = x.contiguous()
    m, k = x.shape
    mp = -(-m // pad_to) * pad_to
    q = torch.empty(mp, k, dtype=torch.float8_e4m3fn, device=x.device)
    kb = k // 128
    s = torch.empty(kb, mp, dtype=torch.float32, device=x.device).t()  # M-major: [Mp, K/128] view, strides (1, Mp)
    if mp:
        bm = 16 if interpreting() else 64
        _act_quant_kernel[(triton.cdiv(mp, bm), kb)](x, q, s, m, mp, k, x.stride(0), q.stride(0), 1, mp,
                                                     BM=bm, DOT_F32=interpreting(), num_warps=4)
    return q, s
