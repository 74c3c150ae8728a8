"""Pure-torch twins of the linear glue ops: dense linear entry, grouped projection (wo_a), the shared
expert's gate/up + clamped SwiGLU, the compressor's paired projections + positional bias, and a
linear followed by a scale (indexer head weights). Weights: plain tensors or QuantWeight (fp8)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..quant_weight import QuantWeight
from .fp8_linear import fp8_linear
from .norm import rms_norm, swiglu


def linear(x: torch.Tensor, weight, fp32: bool = False) -> torch.Tensor:
    """y = x W^T: QuantWeight (fp8) -> fp8_linear; plain tensor -> F.linear. `fp32`: computed and
    returned in fp32 (x.float())."""
    if isinstance(weight, QuantWeight):
        if weight.fmt != "fp8":
            raise NotImplementedError("dense linears take FP8 resident weights only")
        y = fp8_linear(x.float() if fp32 else x, weight.data, weight.scale)
        return y.float() if fp32 else y
    if fp32:
        return F.linear(x.float(), weight.float())
    return F.linear(x, weight)


def logits_linear(x: torch.Tensor, weight) -> torch.Tensor:
    """The LM head: x [S, d] W^T -> [S, vocab] fp32 logits, computed as `linear` (x's dtype out) then cast."""
    return linear(x, weight).float()


def grouped_linear(x: torch.Tensor, weight, groups: int) -> torch.Tensor:
    """x [N, g, K], weight [g*r, K] (group j = rows [j*r, (j+1)*r)) -> [N, g, r] in x's dtype."""
    n = x.shape[0]
    r = weight.shape[0] // groups
    if isinstance(weight, QuantWeight):  # whole 128x128 scale blocks per group
        rb = r // 128
        return torch.stack([fp8_linear(x[:, j], weight.data[j * r:(j + 1) * r], weight.scale[j * rb:(j + 1) * rb])
                            for j in range(groups)], dim=1)
    w = weight.view(groups, r, -1)
    return torch.einsum("ngk,grk->ngr", x.reshape(n, groups, -1), w)


def swiglu_linear(x: torch.Tensor, w1, w3, limit: float) -> torch.Tensor:
    """Shared-expert hidden: silu(min(x W1^T, L)) * clamp(x W3^T, -L, L) -> x's dtype."""
    return swiglu(linear(x, w1), linear(x, w3), limit, x.dtype)


def compressor_project(x: torch.Tensor, wkv, wgate, ape: torch.Tensor, positions: torch.Tensor, ratio: int):
    """-> (kv = x Wkv^T, score = x Wgate^T + ape[pos % ratio]), both fp32 [N, coff*c]."""
    kv = linear(x, wkv, fp32=True)
    score = linear(x, wgate, fp32=True) + ape.float()[positions % ratio]
    return kv, score


def linear_scaled(x: torch.Tensor, weight, alpha: float) -> torch.Tensor:
    """linear(x, W) (in x's dtype) -> fp32 * alpha."""
    return linear(x, weight).float() * alpha


def norm_linear(x: torch.Tensor, norm_weight: torch.Tensor, eps: float, weight) -> torch.Tensor:
    """linear(RMSNorm(x) with norm_weight, W) in x's dtype (q_norm -> wq_b)."""
    return linear(rms_norm(x, norm_weight, eps), weight)
