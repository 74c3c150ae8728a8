"""Pure-torch helpers of the kernel twins: dequantize a QuantWeight (through kernels/codecs.py, the one
definition of the bit layouts) and the reference FP8 activation fake-quantization."""

from __future__ import annotations

import torch

from kernels.codecs import dequant_fp8_block, dequant_mxfp4


def dequant(w, dtype=torch.float32) -> torch.Tensor:
    """QuantWeight (FP8 128x128 blocks or MXFP4, any leading expert dims) or plain tensor -> dense `dtype`
    tensor (the codecs of kernels/codecs.py)."""
    if isinstance(w, torch.Tensor):
        return w.to(dtype)
    if w.fmt == "fp8":
        return dequant_fp8_block(w.data, w.scale, dtype=dtype)
    return dequant_mxfp4(w.data, w.scale, dtype=dtype)


def act_quant_fp8(x: torch.Tensor, block: int = 128) -> torch.Tensor:
    """Per-token 1x`block` FP8 E4M3 fake-quantization with UE8M0 (power-of-two) scales -> fp32 [.., K]."""
    xf = x.float()
    k = xf.shape[-1]
    pad = (-k) % block
    xp = torch.nn.functional.pad(xf, (0, pad)).unflatten(-1, (-1, block))
    amax = xp.abs().amax(-1, keepdim=True).clamp(min=1e-4)
    s = torch.exp2(torch.ceil(torch.log2(amax / 448.0)))
    q = (xp / s).to(torch.float8_e4m3fn).float() * s
    return q.flatten(-2)[..., :k]
