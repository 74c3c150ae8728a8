"""Triton linear glue on the block linear kernel (fp8_linear.launch): grouped projection in one launch
(group grid axis), dual-weight GEMMs with fused epilogues (SwiGLU; compressor score + positional bias),
fp32-output linears of plain weights, a scaled-output linear and an RMSNorm prologue (q_norm -> wq_b).
Same contracts as kernels.ref.linear_glue; self-reducing split-K, so every op is one launch and no host sync.
Plain, grouped, norm-prologue and SwiGLU FP8 linears take the FP8 x FP8 torch GEMM (fp8_scaled_mm.py,
act_quant numerics) where the measured table `fp8_table.SCALED_MM_MIN_M` says so, and the block linear's own
FP8 x FP8 mode where `fp8_table.ACT_FP8_MIN_M` does."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..quant_weight import QuantWeight
from . import fp8_linear as _fl  # module attribute: survives the tests' interpreter reload
from .fp8_table import use_act_fp8, use_fp32_out_mm, use_scaled_mm


def _plain_or_fp8(w):
    if isinstance(w, QuantWeight) and w.fmt != "fp8":
        raise NotImplementedError("dense linears take FP8 resident weights only")


def linear(x, weight, fp32=False):
    """Same contract as kernels.ref.linear_glue.linear (fp32: bf16 operands, fp32 accumulation and
    output: the same products as the twin's x.float(), whose values are exact in bf16)."""
    _plain_or_fp8(weight)
    if not isinstance(weight, QuantWeight) and not fp32:
        return F.linear(x, weight)
    x2 = _fl._rows(x)
    n = weight.shape[0]
    if not fp32 and isinstance(weight, QuantWeight) and use_scaled_mm(x2, n, weight.shape[1]):
        from .fp8_scaled_mm import scaled_linear  # FP8 x FP8 torch GEMM where measured faster (fp8_table.py)
        return scaled_linear(x2, weight).reshape(*x.shape[:-1], n)
    y = torch.empty(x2.shape[0], n, dtype=torch.float32 if fp32 else x.dtype, device=x.device)
    _fl.launch(x2, weight, y, act_quant=not fp32 and isinstance(weight, QuantWeight)
               and use_act_fp8(x2, n, weight.shape[1]))
    return y.reshape(*x.shape[:-1], n)


def logits_linear(x, weight):
    """Same contract as kernels.ref.linear_glue.logits_linear, except that on the rows the measured table
    `fp8_table.HEAD_FP32_OUT_MIN_M` lists the logits come out of one cuBLAS GEMM in fp32 (bf16 products,
    fp32 accumulation, no rounding to bf16 and no cast pass over [rows, vocab])."""
    if (not isinstance(weight, QuantWeight) and x.dim() == 2 and x.dtype == weight.dtype == torch.bfloat16
            and use_fp32_out_mm(x, *weight.shape)):
        return torch.mm(x, weight.t(), out_dtype=torch.float32)
    return linear(x, weight).float()


def grouped_linear(x, weight, groups):
    """Same contract as kernels.ref.linear_glue.grouped_linear: one launch, group = grid axis."""
    _plain_or_fp8(weight)
    n = x.shape[0]
    x2 = x.reshape(n, -1)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    r = weight.shape[0] // groups
    k = weight.shape[-1]
    if isinstance(weight, QuantWeight) and use_scaled_mm(x2, weight.shape[0], k):
        from .fp8_scaled_mm import scaled_grouped_linear
        return scaled_grouped_linear(x2.view(n, groups, k), weight, groups)
    y = torch.empty(n, groups * r, dtype=x.dtype, device=x.device)
    _fl.launch(x2, weight, y, groups=groups, x_gs=k, w_gs=r, y_gs=r,
               act_quant=isinstance(weight, QuantWeight) and use_act_fp8(x2, weight.shape[0], k))
    return y.view(n, groups, r)


def swiglu_linear(x, w1, w3, limit):
    """Same contract as kernels.ref.linear_glue.swiglu_linear: both GEMMs and the SwiGLU in one launch."""
    _plain_or_fp8(w1)
    x2 = _fl._rows(x)
    if isinstance(w1, QuantWeight) and use_scaled_mm(x2, w1.shape[0], w1.shape[1]):
        from .fp8_scaled_mm import scaled_swiglu_linear
        return scaled_swiglu_linear(x2, w1, w3, limit).reshape(*x.shape[:-1], w1.shape[0])
    y = torch.empty(x2.shape[0], w1.shape[0], dtype=x.dtype, device=x.device)
    _fl.launch(x2, w1, y, w2=w3, epi=1, round_out=True, limit=limit,
               act_quant=isinstance(w1, QuantWeight) and use_act_fp8(x2, w1.shape[0], w1.shape[1]))
    return y.reshape(*x.shape[:-1], w1.shape[0])


def compressor_project(x, wkv, wgate, ape, positions, ratio):
    """Same contract as kernels.ref.linear_glue.compressor_project: one dual launch, bias in the epilogue."""
    _plain_or_fp8(wkv)
    x2 = _fl._rows(x)
    n = wkv.shape[0]
    kv = torch.empty(x2.shape[0], n, dtype=torch.float32, device=x.device)
    score = torch.empty_like(kv)
    if ape.shape[0] != ratio:
        raise ValueError(f"ape has {ape.shape[0]} rows, ratio is {ratio}")
    _fl.launch(x2, wkv, kv, w2=wgate, y2=score, epi=2, tab=ape.float().contiguous(), idx=positions.contiguous())
    return kv, score


def linear_scaled(x, weight, alpha):
    """Same contract as kernels.ref.linear_glue.linear_scaled (rounded to x's dtype, then scaled, in fp32)."""
    _plain_or_fp8(weight)
    x2 = _fl._rows(x)
    y = torch.empty(x2.shape[0], weight.shape[0], dtype=torch.float32, device=x.device)
    _fl.launch(x2, weight, y, round_out=True, alpha=alpha)
    return y.reshape(*x.shape[:-1], weight.shape[0])


def norm_linear(x, norm_weight, eps, weight):
    """Same contract as kernels.ref.linear_glue.norm_linear: FP8 weights take the RMSNorm as the GEMM's
    prologue (one launch); plain weights: the norm kernel, then cuBLAS."""
    _plain_or_fp8(weight)
    if not isinstance(weight, QuantWeight):
        from . import norm
        return F.linear(norm.rms_norm(x, norm_weight, eps), weight)
    x2 = _fl._rows(x)
    if use_scaled_mm(x2, weight.shape[0], weight.shape[1]):
        from .fp8_scaled_mm import scaled_norm_linear
        return scaled_norm_linear(x2, norm_weight, eps, weight).reshape(*x.shape[:-1], weight.shape[0])
    y = torch.empty(x2.shape[0], weight.shape[0], dtype=x.dtype, device=x.device)
    _fl.launch(x2, weight, y, norm_weight=norm_weight, norm_eps=eps)
    return y.reshape(*x.shape[:-1], weight.shape[0])
