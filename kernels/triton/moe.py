"""Triton fused MoE: routed-expert grouped GEMMs over the block-aligned token->expert layout.

Kernel 1 (gate/up): h[pair] = silu(min(x W1^T, L)) * clamp(x W3^T, -L, L) * route_w[pair]   (bf16)
Kernel 2 (down + combine): out[token] += h[pair] W2^T   (fp32 atomics over the k slots of a token)
Expert weights bf16/fp32, FP8 128x128 block-scaled, or MXFP4 dequantized in the kernel (three
variants, common.FP4_MODES; benchmarks compare them).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import (act_quant_tile, dot_dtype, e8m0_to_f32, fp4_use_asm, load_fp4_split, load_w_tile, mma,
                     weight_args, zero_share)
from .moe_prefill import moe_experts_grouped, use_grouped
from .moe_prefill_fp8 import available as fp8_operands_available
from .routing import moe_align


@triton.jit
def _fp8_dot(aq, wq, DOT_F32: tl.constexpr):
    """[BM, BK] FP8 activations x [BN, BK] FP8 weights^T -> fp32 [BM, BN] (fp32 emulation in the
    interpreter, whose codes are already fp32 values)."""
    if DOT_F32:
        return tl.dot(aq, tl.trans(wq.to(tl.float32)), input_precision="ieee")
    return tl.dot(aq, tl.trans(wq))


@triton.jit(do_not_specialize=["P"], do_not_specialize_on_alignment=["sorted_ptr", "eids_ptr", "npad_ptr"])
def _moe_gemm_kernel(
    a_ptr, b_ptr, b2_ptr, bs_ptr, b2s_ptr, out_ptr, rw_ptr, sorted_ptr, eids_ptr, npad_ptr,
    N, K, P, limit,
    stride_am, stride_be, stride_bn, stride_bk, stride_se, stride_sn, stride_sk, stride_om,
    A_DIV: tl.constexpr, OUT_DIV: tl.constexpr, GATE_UP: tl.constexpr, WFMT: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr,
    DOT_T: tl.constexpr, DOT_F32: tl.constexpr, USE_ASM: tl.constexpr, ACT_FP8: tl.constexpr,
    zero_ptr, ZERO_PER, ZERO_N, ZERO: tl.constexpr,
):
    pid = tl.program_id(0)
    if ZERO:  # gate/up launch: clear the down kernel's fp32 output (no separate memset launch)
        zero_share(zero_ptr, pid, ZERO_PER, ZERO_N)
    npad = tl.load(npad_ptr)
    num_pid_m = tl.cdiv(npad, BM)
    num_pid_n = tl.cdiv(N, BN)
    if pid >= num_pid_m * num_pid_n:
        return
    in_group = GROUP_M * num_pid_n
    first_m = (pid // in_group) * GROUP_M
    gsize = tl.minimum(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % in_group) % gsize
    pid_n = (pid % in_group) // gsize

    e = tl.load(eids_ptr + pid_m).to(tl.int64)
    offs_m = pid_m * BM + tl.arange(0, BM)
    pair = tl.load(sorted_ptr + offs_m)
    mvalid = pair < P
    arow = (pair // A_DIV).to(tl.int64)
    offs_n = pid_n * BN + tl.arange(0, BN)
    nmask = offs_n < N
    offs_k = tl.arange(0, BK)
    b_base = b_ptr + e * stride_be
    bs_base = bs_ptr + e * stride_se
    if GATE_UP:
        b2_base = b2_ptr + e * stride_be
        b2s_base = b2s_ptr + e * stride_se
    acc = tl.zeros([BM, BN], dtype=tl.float32)
    acc2 = tl.zeros([BM, BN], dtype=tl.float32)
    arow_ptr = a_ptr + arow[:, None] * stride_am
    for k0 in range(0, K, BK):
        kk = k0 + offs_k
        a = tl.load(arow_ptr + kk[None, :], mask=mvalid[:, None] & (kk[None, :] < K), other=0.0)
        if ACT_FP8 and WFMT == 1:  # FP8 x FP8 MMA, activations per token in 1x128 blocks (BK == 128)
            aq, xs = act_quant_tile(a, DOT_F32)
            ws = e8m0_to_f32(tl.load(bs_base + (offs_n // 128) * stride_sn + (k0 // 128) * stride_sk,
                                     mask=nmask, other=0), 0)
            wq = tl.load(b_base + offs_n[:, None] * stride_bn + kk[None, :] * stride_bk,
                         mask=nmask[:, None] & (kk[None, :] < K), other=0).to(tl.float8e4nv, bitcast=True)
            acc += _fp8_dot(aq, wq, DOT_F32) * xs[:, None] * ws[None, :]  # both block scales on the partial
            if GATE_UP:
                ws2 = e8m0_to_f32(tl.load(b2s_base + (offs_n // 128) * stride_sn + (k0 // 128) * stride_sk,
                                          mask=nmask, other=0), 0)
                wq2 = tl.load(b2_base + offs_n[:, None] * stride_bn + kk[None, :] * stride_bk,
                              mask=nmask[:, None] & (kk[None, :] < K), other=0).to(tl.float8e4nv, bitcast=True)
                acc2 += _fp8_dot(aq, wq2, DOT_F32) * xs[:, None] * ws2[None, :]
        else:
            if ACT_FP8:  # other weight formats: the quantized activations in bf16 (exact) into the bf16 MMA
                aq, xs = act_quant_tile(a, DOT_F32)
                a = aq.to(tl.float32) * xs[:, None]
            a = a.to(DOT_T)
            if WFMT == 3:  # MXFP4, even/odd split: two dots, no nibble interleave
                a_e, a_o = tl.split(tl.reshape(a, (BM, BK // 2, 2)))
                lo, hi = load_fp4_split(b_base, bs_base, offs_n, nmask, k0, K, stride_bn, stride_bk, stride_sn,
                                        stride_sk, BN, BK, DOT_T, USE_ASM)
                acc = mma(a_o, hi, mma(a_e, lo, acc, DOT_F32), DOT_F32)
                if GATE_UP:
                    lo2, hi2 = load_fp4_split(b2_base, b2s_base, offs_n, nmask, k0, K, stride_bn, stride_bk,
                                              stride_sn, stride_sk, BN, BK, DOT_T, USE_ASM)
                    acc2 = mma(a_o, hi2, mma(a_e, lo2, acc2, DOT_F32), DOT_F32)
            else:
                b = load_w_tile(b_base, bs_base, offs_n, nmask, k0, K, stride_bn, stride_bk, stride_sn, stride_sk,
                                WFMT, BN, BK, DOT_T)
                acc = mma(a, b, acc, DOT_F32)
                if GATE_UP:
                    b2 = load_w_tile(b2_base, b2s_base, offs_n, nmask, k0, K, stride_bn, stride_bk, stride_sn,
                                     stride_sk, WFMT, BN, BK, DOT_T)
                    acc2 = mma(a, b2, acc2, DOT_F32)
    omask = mvalid[:, None] & nmask[None, :]
    orow = (pair // OUT_DIV).to(tl.int64)
    optrs = out_ptr + orow[:, None] * stride_om + offs_n[None, :]
    if GATE_UP:
        g = tl.minimum(acc, limit)
        v = tl.minimum(tl.maximum(acc2, -limit), limit)
        rw = tl.load(rw_ptr + pair, mask=mvalid, other=0.0)
        h = g / (1.0 + tl.exp(-g)) * v * rw[:, None]
        tl.store(optrs, h.to(out_ptr.dtype.element_ty), mask=omask)
    else:
        tl.atomic_add(optrs, acc, mask=omask, sem="relaxed")


def pick_config(num_pairs: int, num_experts: int, n_out: int, wfmt: int, gate_up: bool, interp: bool) -> dict:
    """Tile config by shape (no autotune: it needs a GPU and costs graph-capture time)."""
    if interp:
        return dict(BM=16, BN=32, BK=64, GROUP_M=4, num_warps=4, num_stages=1)
    per_expert = num_pairs / max(1, min(num_experts, num_pairs))
    if per_expert <= 16:  # decode: weight streaming, tiny M
        return dict(BM=16, BN=64 if n_out >= 4096 else 32, BK=128, GROUP_M=1, num_warps=4, num_stages=4)
    if per_expert <= 64:
        return dict(BM=64, BN=64, BK=128, GROUP_M=4, num_warps=4, num_stages=3)
    return dict(BM=128, BN=128, BK=64, GROUP_M=8, num_warps=8, num_stages=3)


DECODE_MAX_PAIRS_PER_EXPERT = 16  # swapped MXFP4 decode kernel up to this many pairs per expert (issue 11)


def use_decode_kernel(x, w1, w3, w2, ids, act_quant) -> bool:
    """MXFP4 experts at decode shapes take the swapped-operand kernel (triton/moe_decode.py)."""
    from .moe_decode import supports
    p, num_e = ids.numel(), w1.shape[0]
    return p <= DECODE_MAX_PAIRS_PER_EXPERT * min(num_e, p) and supports(x, w1, w3, w2, act_quant)


def _launch(a, w, w2, out, rw, sorted_ids, eids, npad, n_out, k_in, p, limit, a_div, out_div, gate_up, cfg,
            fp4_mode, act_quant=False, zero=None):
    data, scale, wfmt = weight_args(w, fp4_mode)
    data2, scale2, _ = weight_args(w2, fp4_mode) if w2 is not None else (data, scale, wfmt)
    use_asm = wfmt in (3, 6) and fp4_use_asm(w) and (w2 is None or fp4_use_asm(w2))
    if wfmt == 6 and not use_asm:  # interpreter, or a scale byte > 128: the plain interleave kernel
        wfmt = 2
    dot_t, dot_f32 = dot_dtype(a)
    if wfmt == 0:
        sse = ssn = ssk = 0
    else:
        sse, ssn, ssk = scale.stride()
    max_blocks = eids.numel()
    grid = (max_blocks * triton.cdiv(n_out, cfg["BN"]),)
    zero_n = zero.numel() if zero is not None else 0
    zero_per = triton.cdiv(triton.cdiv(zero_n, grid[0]), 1024) * 1024
    _moe_gemm_kernel[grid](
        a, data, data2, scale, scale2, out, rw, sorted_ids, eids, npad,
        n_out, k_in, p, float(limit),
        a.stride(0), data.stride(0), data.stride(1), data.stride(2), sse, ssn, ssk, out.stride(0),
        A_DIV=a_div, OUT_DIV=out_div, GATE_UP=gate_up, WFMT=wfmt,
        BM=cfg["BM"], BN=cfg["BN"], BK=cfg["BK"], GROUP_M=cfg["GROUP_M"], DOT_T=dot_t, DOT_F32=dot_f32,
        USE_ASM=use_asm, ACT_FP8=act_quant, zero_ptr=zero if zero is not None else rw, ZERO_PER=zero_per,
        ZERO_N=zero_n, ZERO=zero is not None, num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])


def moe_experts(x, w1, w3, w2, weights, ids, limit, config1=None, config2=None, fp4_mode="interleave",
                act_quant=False, decode_kernel=None):
    """Same contract as kernels.ref.moe.moe_experts -> [N, d] fp32. `fp4_mode`: MXFP4 kernel variant
    (common.FP4_MODES; benchmarks compare them). `act_quant`: FP8 activations per 1x128 block (the
    reference act_quant) into both GEMMs: FP8 x FP8 MMA for FP8 experts; for MXFP4 / bf16 experts the
    quantized activations feed the bf16 MMA (same products, exact in bf16). `decode_kernel`: the
    swapped-operand MXFP4 decode kernel (triton/moe_decode.py; None = by shape, `use_decode_kernel`)."""
    from .common import interpreting
    x = x.contiguous()
    n, d = x.shape
    k = ids.shape[1]
    num_e, inter = w1.shape[0], w1.shape[1]
    p = n * k
    if p == 0:
        return torch.zeros(n, d, dtype=torch.float32, device=x.device)
    if decode_kernel is None:  # auto: decode shapes of MXFP4 experts (explicit tiles / modes = this kernel)
        decode_kernel = (config1 is None and config2 is None and fp4_mode == "interleave"
                         and use_decode_kernel(x, w1, w3, w2, ids, act_quant))
    if decode_kernel:
        from .moe_decode import moe_experts_decode
        return moe_experts_decode(x, w1, w3, w2, weights, ids, limit)
    if config1 is None and config2 is None and fp4_mode == "interleave":
        fp8 = fp8_operands_available(x, act_quant)  # decided once: the size check and the path take the same
        if use_grouped(x, w1, ids, act_quant, fp8):
            return moe_experts_grouped(x, w1, w3, w2, weights, ids, limit, act_quant, fp8)  # prefill: moe_prefill.py
    out = torch.empty(n, d, dtype=torch.float32, device=x.device)  # zeroed by the gate/up launch
    wfmt = weight_args(w1)[2]
    interp = interpreting()
    c1 = dict(config1 or pick_config(p, num_e, inter, wfmt, True, interp))
    c2 = dict(config2 or pick_config(p, num_e, d, wfmt, False, interp))
    if act_quant:  # one activation block per K step
        c1["BK"] = c2["BK"] = 128
    rw = weights.reshape(-1).float().contiguous()
    s1, e1, np1 = moe_align(ids, num_e, c1["BM"])
    h = torch.empty(p, inter, dtype=x.dtype, device=x.device)
    _launch(x, w1, w3, h, rw, s1, e1, np1, inter, d, p, limit, k, 1, True, c1, fp4_mode, act_quant, zero=out)
    if c2["BM"] == c1["BM"]:
        s2, e2, np2 = s1, e1, np1
    else:
        s2, e2, np2 = moe_align(ids, num_e, c2["BM"])
    _launch(h, w2, None, out, rw, s2, e2, np2, d, inter, p, limit, 1, k, False, c2, fp4_mode, act_quant)
    return out
