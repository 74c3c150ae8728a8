"""FP8 x FP8 block linear through torch's blockwise-scaled GEMM (cuBLASLt on Hopper): the DeepSeek recipe.

y [M, N] = (act_quant(x) [M, K] with 1x128 UE8M0 scales) @ (W [N, K] FP8 with 128x128 UE8M0 scales)^T, fp32
accumulation, out in x's dtype: `torch._scaled_mm(codes, W^T, scale_a (BlockWise1x128), scale_b
(BlockWise128x128))`. The activation pass is `act_quant.py` (one launch); the weight's fp32 scales are made
once per weight and kept on its scale tensor. Numerics are the reference act_quant ones (the twin is
kernels.ref.fp8_linear.fp8_linear(..., act_quant=True)), not the bf16-activation block linear's.

Which calls take it is a measured choice (`fp8_table.use_scaled_mm`; bench entry `fp8_scaled_mm` in
bench/fp8_entries.py): at prefill and large decode batches the Triton block linear dequantizes weights into
bf16 MMAs (~230-350 TFLOP/s measured), FP8 tensor-core GEMMs go past that.
"""

from __future__ import annotations

import torch

from ..quant_weight import QuantWeight
from .act_quant import act_quant
from .common import derived

# cuBLASLt's blockwise-scaled GEMM (measured on H200, torch 2.11 cu130) takes the activation scales M-major with
# M a multiple of 4 and the weight scales as the [K/128, N/128] transposed view; the other layouts are refused
# ("Invalid scaling configuration" / CUBLAS_STATUS_NOT_SUPPORTED). Activations are quantized into whole groups
# of ROW_MULTIPLE rows (zero padding) and the output is sliced back.
ROW_MULTIPLE = 4


def weight_scales_t(w: QuantWeight) -> torch.Tensor:
    """The weight's UE8M0 block scales as fp32 2^(S - 127), the transposed [ceil(K/128), ceil(N/128)] view of
    the [N/128, K/128] storage, once per scale tensor (`common.derived`: the QuantWeight handles are made per
    call by models/layers.py, the scale tensor outlives them)."""
    return derived(w.scale, "_v4serve_scale_f32_t", lambda: torch.exp2(w.scale_u8().to(torch.float32) - 127.0).t())


def _check(x: torch.Tensor, w: QuantWeight) -> None:
    if not isinstance(w, QuantWeight) or w.fmt != "fp8":
        raise ValueError("the scaled FP8 GEMM takes an FP8 QuantWeight")
    if x.dim() != 2 or x.shape[1] != w.shape[1]:
        raise ValueError(f"x {tuple(x.shape)} does not match the weight {tuple(w.shape)}")


def _quant(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return act_quant(x, pad_to=ROW_MULTIPLE)


def _gemm(q: torch.Tensor, s: torch.Tensor, w: QuantWeight, out_dtype: torch.dtype, m: int,
          rows: slice | None = None) -> torch.Tensor:
    """codes [Mp, K] with scales [Mp, K/128] x weight rows `rows` (whole 128-row blocks) -> [m, rows] out_dtype
    (the first m of the Mp padded rows)."""
    data, sc = w.data, weight_scales_t(w)
    if rows is not None:
        data, sc = data[rows], sc[:, rows.start // 128:rows.stop // 128]
    y = torch._scaled_mm(q, data.t(), s, sc, out_dtype=out_dtype)
    return y if y.shape[0] == m else y[:m]


def scaled_linear(x: torch.Tensor, w: QuantWeight, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """x [M, K] (bf16 / fp32) x FP8 weight [N, K] -> [M, N] in out_dtype (default x's dtype)."""
    _check(x, w)
    return _gemm(*_quant(x), w, out_dtype or x.dtype, x.shape[0])


def scaled_norm_linear(x: torch.Tensor, norm_weight: torch.Tensor, eps: float, w: QuantWeight) -> torch.Tensor:
    """linear(RMSNorm(x), W) (kernels.ref.linear_glue.norm_linear's contract, act_quant numerics): the norm pass,
    then the scaled GEMM."""
    from .norm import rms_norm
    return scaled_linear(rms_norm(x, norm_weight, eps), w)


def scaled_grouped_linear(x: torch.Tensor, w: QuantWeight, groups: int) -> torch.Tensor:
    """x [N, g, K] x weight [g*r, K] (group j = rows [j*r, (j+1)*r), r a multiple of 128) -> [N, g, r] in x's
    dtype (kernels.ref.linear_glue.grouped_linear's contract): per group one quantization pass and one GEMM."""
    n, g, k = x.shape
    r = w.shape[0] // groups
    if r % 128:
        raise ValueError(f"grouped FP8 linear: {r} rows per group is not whole 128-row scale blocks")
    y = torch.empty(n, g, r, dtype=x.dtype, device=x.device)
    for j in range(groups):  # act_quant reads group j's rows in place (row stride g*K)
        y[:, j] = _gemm(*_quant(x[:, j]), w, x.dtype, n, slice(j * r, (j + 1) * r))
    return y


def scaled_swiglu_linear(x: torch.Tensor, w1: QuantWeight, w3: QuantWeight, limit: float) -> torch.Tensor:
    """silu(min(x W1^T, L)) * clamp(x W3^T, -L, L) (kernels.ref.linear_glue.swiglu_linear's contract: each GEMM
    rounded to x's dtype first): one quantization pass shared by both GEMMs, then the one-pass SwiGLU kernel."""
    from .norm import swiglu
    _check(x, w1)
    q, s = _quant(x)
    m = x.shape[0]
    return swiglu(_gemm(q, s, w1, x.dtype, m), _gemm(q, s, w3, x.dtype, m), limit, x.dtype)
