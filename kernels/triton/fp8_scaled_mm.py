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

_SCALE_ATTR = "_v4serve_scale_f32_t"  # fp32 weight scales, kept on the weight's scale tensor (it outlives the
# QuantWeight handles, which models/layers.py makes per call)


def weight_scales_t(w: QuantWeight, contiguous: bool = False) -> torch.Tensor:
    """The weight's UE8M0 block scales as fp32 2^(S - 127), transposed to [ceil(K/128), ceil(N/128)] (a view of
    the [N/128, K/128] storage, or a contiguous copy). Computed once per scale tensor and version (an in-place
    update converts again); inference-mode tensors have no version counter and convert on every call."""
    st = w.scale
    try:
        key = (st._version, contiguous)
    except RuntimeError:
        key = None
    cache = getattr(st, _SCALE_ATTR, None)
    if key is not None and cache is not None and key in cache:
        return cache[key]
    f = torch.exp2(w.scale_u8().to(torch.float32) - 127.0)
    out = f.t().contiguous() if contiguous else f.t()
    if key is not None:
        if cache is None or any(k[0] != key[0] for k in cache):
            cache = {}
            setattr(st, _SCALE_ATTR, cache)
        cache[key] = out
    return out


def scaled_linear(x: torch.Tensor, w: QuantWeight, out_dtype: torch.dtype | None = None, mmajor: bool = True,
                  scale_b_contiguous: bool = False) -> torch.Tensor:
    """x [M, K] (bf16 / fp32) x FP8 weight [N, K] -> [M, N] in out_dtype (default x's dtype). `mmajor` /
    `scale_b_contiguous`: the scale layouts handed to the GEMM (the bench measures both)."""
    if not isinstance(w, QuantWeight) or w.fmt != "fp8":
        raise ValueError("scaled_linear takes an FP8 QuantWeight")
    if x.dim() != 2 or x.shape[1] != w.shape[1]:
        raise ValueError(f"x {tuple(x.shape)} does not match the weight {tuple(w.shape)}")
    q, s = act_quant(x, mmajor=mmajor)
    return torch._scaled_mm(q, w.data.t(), s, weight_scales_t(w, scale_b_contiguous),
                            out_dtype=out_dtype or x.dtype)
