"""Pure-torch twin of the FP8 block-scaled linear."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels.codecs import dequant_fp8_block

from .quant import act_quant_fp8


def fp8_linear(x: torch.Tensor, w: torch.Tensor, scale: torch.Tensor, act_quant: bool = False,
               out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """y = x @ dequant(w)^T. x [..., K] (bf16/fp32), w float8_e4m3fn [N, K], scale e8m0 [ceil(N/128), ceil(K/128)].

    `act_quant`: x is first fake-quantized per token in 1x128 FP8 blocks (UE8M0 scales), as the
    reference's act_quant does. Math in fp32; result in `out_dtype` (default x.dtype)."""
    xf = act_quant_fp8(x) if act_quant else x.float()
    y = F.linear(xf, dequant_fp8_block(w, scale, dtype=torch.float32))
    return y.to(out_dtype or x.dtype)
