"""Pure-torch twins of the mHC (hyper-connection) glue: pre-mix with Sinkhorn, post-mix, head collapse.

X: [N, hc, d] residual streams. `hc_pre` collapses them to the sub-layer input and returns the `post`
weights and the Sinkhorn-projected stream mixer `comb`; `hc_post` writes the sub-layer output back:
X'[j] = post[j] * o + sum_i comb[i, j] * X[i]. `hc_post_pre` is hc_post followed by the next site's
hc_pre (one fused pass on CUDA). `norm_weight` (optional) applies the sub-layer's RMSNorm to u.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .norm import rms_norm


def hc_mix(x: torch.Tensor, fn: torch.Tensor, eps: float) -> torch.Tensor:
    """Unweighted RMS of the flattened streams, then the `fn` projection (all fp32). -> [N, m]"""
    flat = x.flatten(1).float()
    flat = flat * torch.rsqrt(flat.square().mean(-1, keepdim=True) + eps)
    return F.linear(flat, fn.float())


def hc_pre(
    x: torch.Tensor,  # [N, hc, d] streams
    fn: torch.Tensor,  # [(2+hc)*hc, hc*d] mixer projection
    base: torch.Tensor,  # [(2+hc)*hc]
    scale: torch.Tensor,  # [3]
    hc: int,
    iters: int,  # Sinkhorn iterations
    hc_eps: float,
    norm_eps: float,  # eps of the stream RMS (and of the optional RMSNorm of u)
    norm_weight: torch.Tensor | None = None,  # [d]: u -> RMSNorm(u) with this weight
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> (u [N, d] in x.dtype, post [N, hc] fp32, comb [N, hc, hc] fp32)."""
    mix = hc_mix(x, fn, norm_eps)
    pre_w, post_w, comb_w = mix.split([hc, hc, hc * hc], dim=-1)
    base = base.float()
    pre_b, post_b, comb_b = base.split([hc, hc, hc * hc])
    scale = scale.float()
    pre = torch.sigmoid(pre_w * scale[0] + pre_b) + hc_eps
    post = 2 * torch.sigmoid(post_w * scale[1] + post_b)
    comb = torch.softmax(comb_w.view(-1, hc, hc) * scale[2] + comb_b.view(hc, hc), dim=-1) + hc_eps
    comb = comb / (comb.sum(dim=-2, keepdim=True) + hc_eps)
    for _ in range(iters - 1):
        comb = comb / (comb.sum(dim=-1, keepdim=True) + hc_eps)
        comb = comb / (comb.sum(dim=-2, keepdim=True) + hc_eps)
    u = (pre.unsqueeze(-1) * x.float()).sum(dim=1).to(x.dtype)
    if norm_weight is not None:
        u = rms_norm(u, norm_weight, norm_eps)
    return u, post, comb


def hc_post(o: torch.Tensor, x: torch.Tensor, post: torch.Tensor, comb: torch.Tensor) -> torch.Tensor:
    """o [N, d], x [N, hc, d] -> [N, hc, d]: destination j sums source streams i with comb[i, j]."""
    dt = x.dtype
    return post.to(dt).unsqueeze(-1) * o.unsqueeze(-2) + torch.matmul(comb.to(dt).transpose(-1, -2), x)


def hc_post_pre(o, x, post, comb, fn, base, scale, hc: int, iters: int, hc_eps: float, norm_eps: float,
                norm_weight=None):
    """hc_post(o, x, post, comb) then hc_pre of the result -> (x' [N, hc, d], u, post', comb')."""
    x = hc_post(o, x, post, comb)
    return (x,) + hc_pre(x, fn, base, scale, hc, iters, hc_eps, norm_eps, norm_weight)


def hc_head(
    x: torch.Tensor, fn: torch.Tensor, base: torch.Tensor, scale: torch.Tensor, hc_eps: float, norm_eps: float,
    norm_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Final collapse of the streams (no Sinkhorn): [N, hc, d] -> [N, d] (RMSNorm'ed if norm_weight)."""
    mix = hc_mix(x, fn, norm_eps)
    pre = torch.sigmoid(mix * scale.float() + base.float()) + hc_eps
    u = (pre.unsqueeze(-1) * x.float()).sum(dim=1).to(x.dtype)
    return u if norm_weight is None else rms_norm(u, norm_weight, norm_eps)
