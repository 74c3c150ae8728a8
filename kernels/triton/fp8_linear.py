"""Triton FP8 block-scaled linear: y = x @ (W_fp8 * 2^(S-127))^T, scales per 128x128 weight tile.

Activations bf16 (dequantized weight tiles feed a bf16 MMA), or quantized in the kernel per token in
1x128 blocks with UE8M0 scales (ACT_FP8: FP8 x FP8 MMA, the reference act_quant numerics).
Decode (small M) uses narrow N tiles plus split-K (fp32 atomics) so every SM streams weights.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import act_quant_tile, dot_dtype, e8m0_to_f32, interpreting, load_w_tile, mma


@triton.jit
def _fp8_linear_kernel(x_ptr, w_ptr, s_ptr, y_ptr, M, N, K, stride_xm, stride_wn, stride_sn, stride_ym,
                       K_PER_SPLIT, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                       GROUP_M: tl.constexpr, SPLIT_K: tl.constexpr, ACT_FP8: tl.constexpr,
                       DOT_T: tl.constexpr, DOT_F32: tl.constexpr):
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    num_pid_m = tl.cdiv(M, BM)
    num_pid_n = tl.cdiv(N, BN)
    in_group = GROUP_M * num_pid_n
    first_m = (pid // in_group) * GROUP_M
    gsize = tl.minimum(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % in_group) % gsize
    pid_n = (pid % in_group) // gsize
    offs_m = pid_m * BM + tl.arange(0, BM)
    mmask = offs_m < M
    offs_n = pid_n * BN + tl.arange(0, BN)
    nmask = offs_n < N
    xrow = offs_m.to(tl.int64) * stride_xm
    acc = tl.zeros([BM, BN], dtype=tl.float32)
    k_lo = pid_k * K_PER_SPLIT
    k_hi = tl.minimum(k_lo + K_PER_SPLIT, K)
    for k0 in range(k_lo, k_hi, BK):
        kk = k0 + tl.arange(0, BK)
        a = tl.load(x_ptr + xrow[:, None] + kk[None, :], mask=mmask[:, None] & (kk[None, :] < K), other=0.0)
        if ACT_FP8:
            aq, xs = act_quant_tile(a, DOT_F32)  # per-token 1x128 blocks (BK == 128)
            kw = k0 + tl.arange(0, BK)
            wq = tl.load(w_ptr + offs_n[:, None] * stride_wn + kw[None, :],
                         mask=nmask[:, None] & (kw[None, :] < K), other=0).to(tl.float8e4nv, bitcast=True)
            s = tl.load(s_ptr + (offs_n // 128) * stride_sn + k0 // 128, mask=nmask, other=0)
            ws = e8m0_to_f32(s, 0)
            if DOT_F32:
                d = tl.dot(aq, tl.trans(wq.to(tl.float32)), input_precision="ieee")
            else:
                d = tl.dot(aq, tl.trans(wq))
            acc += d * xs[:, None] * ws[None, :]
        else:
            b = load_w_tile(w_ptr, s_ptr, offs_n, nmask, k0, K, stride_wn, 1, stride_sn, 1, 1, BN, BK, DOT_T)
            acc = mma(a.to(DOT_T), b, acc, DOT_F32)
    yptrs = y_ptr + offs_m.to(tl.int64)[:, None] * stride_ym + offs_n[None, :]
    ymask = mmask[:, None] & nmask[None, :]
    if SPLIT_K > 1:
        tl.atomic_add(yptrs, acc, mask=ymask, sem="relaxed")
    else:
        tl.store(yptrs, acc.to(y_ptr.dtype.element_ty), mask=ymask)


NUM_SMS = 132


def pick_config(m: int, n: int, k: int, act_fp8: bool, interp: bool) -> dict:
    if interp:
        cfg = dict(BM=16, BN=32, BK=128 if act_fp8 else 64, GROUP_M=4, num_warps=4, num_stages=1, SPLIT_K=1)
        if k >= 256:
            cfg["SPLIT_K"] = 2
        return cfg
    if m <= 64:  # decode: stream the weight once, fill the SMs with N tiles x K splits
        # (H200 sweep, docs/benchmarks.md: split-K only pays for K >= 4096 -- its memset + fp32
        # atomics + cast cost more than the extra parallelism at K <= 2048; wider N tiles for M > 16)
        bm = 16 if m <= 16 else (32 if m <= 32 else 64)
        wide = n >= 64 * 2 * NUM_SMS
        if k <= 2048:
            bn = 64 if wide else (16 if (m > 16 and n <= 4096) else 32)
            return dict(BM=bm, BN=bn, BK=128, GROUP_M=1, num_warps=4, num_stages=6 if (m <= 16 and not wide) else 4,
                        SPLIT_K=1)
        bn = 64 if (wide or (m > 16 and n >= 2048)) else 32
        tiles = triton.cdiv(m, bm) * triton.cdiv(n, bn)
        split = 1
        while tiles * split < 2 * NUM_SMS and k // (split * 2) >= 512 and (bn == 32 or split < 4):
            split *= 2
        return dict(BM=bm, BN=bn, BK=128, GROUP_M=1, num_warps=4, num_stages=4, SPLIT_K=split)
    if m <= 256:
        return dict(BM=64, BN=128, BK=128, GROUP_M=8, num_warps=4, num_stages=4, SPLIT_K=1)
    return dict(BM=128, BN=128, BK=128 if act_fp8 else 64, GROUP_M=8, num_warps=8, num_stages=3, SPLIT_K=1)


def fp8_linear(x, w, scale, act_quant=False, out_dtype=None, config=None):
    """Same contract as kernels.ref.fp8_linear.fp8_linear."""
    out_dtype = out_dtype or x.dtype
    lead = x.shape[:-1]
    k = x.shape[-1]
    x2 = x.reshape(-1, k)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    m, n = x2.shape[0], w.shape[0]
    interp = interpreting()
    cfg = dict(config or pick_config(m, n, k, act_quant, interp))
    if act_quant:
        cfg["BK"] = 128
    split = cfg["SPLIT_K"]
    k_per = triton.cdiv(triton.cdiv(k, split), 128) * 128
    split = triton.cdiv(k, k_per)
    if split > 1:
        y = torch.zeros(m, n, dtype=torch.float32, device=x.device)
    else:
        y = torch.empty(m, n, dtype=out_dtype, device=x.device)
    if m == 0:
        return y.to(out_dtype).reshape(*lead, n)
    dot_t, dot_f32 = dot_dtype(x2)
    su8 = scale.view(torch.uint8) if scale.dtype != torch.uint8 else scale
    grid = (triton.cdiv(m, cfg["BM"]) * triton.cdiv(n, cfg["BN"]), split)
    _fp8_linear_kernel[grid](
        x2, w.view(torch.uint8), su8, y, m, n, k, x2.stride(0), w.stride(0), su8.stride(0), y.stride(0), k_per,
        BM=cfg["BM"], BN=cfg["BN"], BK=cfg["BK"], GROUP_M=cfg["GROUP_M"], SPLIT_K=split, ACT_FP8=act_quant,
        DOT_T=dot_t, DOT_F32=dot_f32, num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    if y.dtype != out_dtype:
        y = y.to(out_dtype)
    return y.reshape(*lead, n)
