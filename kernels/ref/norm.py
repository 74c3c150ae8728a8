"""Pure-torch twins of the normalisation / RoPE glue (RMSNorm, weightless rms, interleaved partial
RoPE, their fusions) and small elementwise glue (clamped SwiGLU, add + cast)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .kv_fp8 import hadamard


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """RMS normalisation over the last dim in fp32, times `weight` (None: weightless), in x's dtype."""
    xf = x.float()
    y = xf * torch.rsqrt(xf.square().mean(-1, keepdim=True) + eps)
    if weight is not None:
        y = weight.float() * y
    return y.to(x.dtype)


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, inverse: bool = False) -> torch.Tensor:
    """Rotate pairs (x[2i], x[2i+1]) of the trailing 2*cos.shape[-1] dims of x [N, ..., D];
    cos/sin [N, r/2] broadcast over the middle dims; inverse = conjugate rotation. New tensor."""
    r = 2 * cos.shape[-1]
    shape = (cos.shape[0],) + (1,) * (x.dim() - 2) + (r // 2,)
    c, s = cos.view(shape), sin.view(shape)
    if inverse:
        s = -s
    rot = x[..., -r:].float().unflatten(-1, (r // 2, 2))
    x0, x1 = rot[..., 0], rot[..., 1]
    out = torch.stack((x0 * c - x1 * s, x0 * s + x1 * c), dim=-1).flatten(-2).to(x.dtype)
    return torch.cat((x[..., :-r], out), dim=-1)


def norm_rope(
    x: torch.Tensor,  # [N, D] or [N, H, D]
    weight: torch.Tensor | None,  # [D] RMSNorm weight (None: weightless rms)
    eps: float | None,  # None: no normalisation
    cos: torch.Tensor | None,  # [N, r/2] (None: no rotation)
    sin: torch.Tensor | None,
    inverse: bool = False,
    out_dtype: torch.dtype | None = None,
    rotate: bool = False,  # then each row times the Hadamard matrix H (kv_fp8.hadamard), in fp32
) -> torch.Tensor:
    """rms_norm over the last dim (per head), then RoPE of the trailing r dims, then (rotate) the row
    rotated by H, then a cast to `out_dtype`; each step but the rotation rounds to x's dtype as the
    separate ops do (the rotation is rounded once, to the output dtype)."""
    y = x if eps is None else rms_norm(x, weight, eps)
    if cos is not None:
        y = rope(y, cos, sin, inverse)
    if rotate:
        return (y.float() @ hadamard(y.shape[-1], y.device)).to(out_dtype or x.dtype)
    return y if out_dtype is None else y.to(out_dtype)


def swiglu(g: torch.Tensor, v: torch.Tensor, limit: float, out_dtype: torch.dtype) -> torch.Tensor:
    """silu(min(g, limit)) * clamp(v, -limit, limit) in fp32 -> out_dtype."""
    if g.shape != v.shape:
        raise ValueError(f"swiglu gate {tuple(g.shape)} and value {tuple(v.shape)} differ")
    g = g.float().clamp(max=limit)
    v = v.float().clamp(-limit, limit)
    return (F.silu(g) * v).to(out_dtype)


def add_cast(a: torch.Tensor, b: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    """(a + b.float()).to(out_dtype), a fp32."""
    return (a + b.float()).to(out_dtype)
