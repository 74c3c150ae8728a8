"""Pure-torch dequantization used by the kernel twins (any leading dims; the codecs' bit layouts and
E2M1 table are kernels/codecs.py's)."""

from __future__ import annotations

import torch

from kernels.codecs import E2M1_TABLE as _E2M1


def e8m0_float(scale: torch.Tensor) -> torch.Tensor:
    """UE8M0 bytes -> fp32 2^(S-127) (exact)."""
    raw = scale.view(torch.uint8) if scale.dtype != torch.uint8 else scale
    return torch.ldexp(torch.ones(raw.shape, device=raw.device), raw.to(torch.int32) - 127)


def dequant_fp8(data: torch.Tensor, scale: torch.Tensor, dtype=torch.float32, block: int = 128) -> torch.Tensor:
    n, k = data.shape[-2:]
    s = e8m0_float(scale).repeat_interleave(block, -2).repeat_interleave(block, -1)[..., :n, :k]
    return (data.float() * s).to(dtype)


def dequant_fp4(data: torch.Tensor, scale: torch.Tensor, dtype=torch.float32, block: int = 32) -> torch.Tensor:
    u = data.view(torch.uint8)
    codes = torch.stack([u & 0xF, u >> 4], dim=-1).flatten(-2).long()
    vals = _E2M1.to(data.device)[codes]
    return (vals * e8m0_float(scale).repeat_interleave(block, -1)).to(dtype)


def dequant(w, dtype=torch.float32) -> torch.Tensor:
    """QuantWeight or plain tensor -> dense `dtype` tensor."""
    if isinstance(w, torch.Tensor):
        return w.to(dtype)
    if w.fmt == "fp8":
        return dequant_fp8(w.data, w.scale, dtype)
    return dequant_fp4(w.data, w.scale, dtype)


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
