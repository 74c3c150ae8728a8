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


def _act_quant_blocks(x: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """-> (codes float8_e4m3fn [.., nb, block] of x zero-padded to whole blocks, scales fp32 [.., nb, 1], K)."""
    xf = x.float()
    k = xf.shape[-1]
    xp = torch.nn.functional.pad(xf, (0, (-k) % block)).unflatten(-1, (-1, block))
    amax = xp.abs().amax(-1, keepdim=True).clamp(min=1e-4)
    s = torch.exp2(torch.ceil(torch.log2(amax / 448.0)))
    return (xp / s).to(torch.float8_e4m3fn), s, k


def act_quant_codes(x: torch.Tensor, block: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token 1x`block` FP8 E4M3 quantization with UE8M0 (power-of-two) scales, the reference act_quant:
    scale 2^ceil(log2(amax / 448)), amax >= 1e-4 -> (codes float8_e4m3fn [.., K], scales fp32 [.., ceil(K/block)])."""
    q, s, k = _act_quant_blocks(x, block)
    return q.flatten(-2)[..., :k], s.squeeze(-1)


def act_quant(x: torch.Tensor, pad_to: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Twin of kernels.triton.act_quant.act_quant: x [M, K] (K a multiple of 128) -> (codes float8_e4m3fn
    [Mp, K], scales fp32 [Mp, K/128], M-major storage); Mp = M rounded up to a multiple of `pad_to`, the
    padding rows quantize zeros (the blockwise-scaled GEMM wants whole groups of 4 rows)."""
    if x.dim() != 2 or x.shape[1] % 128:
        raise ValueError(f"act_quant takes [M, K] rows with K a multiple of 128, got {tuple(x.shape)}")
    if pad_to < 1:
        raise ValueError(f"act_quant pad_to must be >= 1, got {pad_to}")
    q, s = act_quant_codes(torch.nn.functional.pad(x, (0, 0, 0, (-x.shape[0]) % pad_to)))
    return q, s.t().contiguous().t()


def act_quant_fp8(x: torch.Tensor, block: int = 128) -> torch.Tensor:
    """Per-token 1x`block` FP8 E4M3 fake-quantization with UE8M0 (power-of-two) scales -> fp32 [.., K]."""
    q, s, k = _act_quant_blocks(x, block)
    return (q.float() * s).flatten(-2)[..., :k]
