"""Manifold-constrained hyper-connections (mHC): 4 residual streams mixed around each sub-layer.

X: [N, hc, d] residual streams. The pre-mix collapses them to the sub-layer input (RMSNorm'ed with the
sub-layer's norm) and yields the `post` weights and the Sinkhorn-projected stream mixer `comb`; the
post-mix writes the sub-layer output back: X'[j] = post[j] * o + sum_i comb[i, j] * X[i].

The post-mix of a sub-layer is deferred (`Pending`) and fused with the next site's pre-mix
(`kernels.hc_post_pre`: one pass over the streams on CUDA); `flush` applies a leftover one. The math
lives in kernels.ref.mhc (CPU, reference) and kernels/triton/mhc.py (CUDA).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

import kernels

from .config import ModelConfig


@dataclass
class Pending:
    """A sub-layer output whose post-mix into the streams has not been applied yet."""

    o: torch.Tensor  # [N, d] sub-layer output
    post: torch.Tensor  # [N, hc] fp32
    comb: torch.Tensor  # [N, hc, hc] fp32


@dataclass
class HcSite:
    """The mixer parameters of one site (`hc_attn_*` / `hc_ffn_*` of a block)."""

    fn: torch.Tensor  # [(2+hc)*hc, hc*d]
    base: torch.Tensor  # [(2+hc)*hc]
    scale: torch.Tensor  # [3]


def mix_in(x: torch.Tensor, pending: Pending | None, site: HcSite, cfg: ModelConfig, norm_weight: torch.Tensor):
    """Apply `pending` to x (if any), then the pre-mix of `site` -> (x, u normed, post, comb)."""
    args = (site.fn, site.base, site.scale, cfg.hc_mult, cfg.hc_sinkhorn_iters, cfg.hc_eps, cfg.rms_norm_eps,
            norm_weight)
    if pending is None:
        return (x,) + kernels.hc_pre(x, *args)
    return kernels.hc_post_pre(pending.o, x, pending.post, pending.comb, *args)


def flush(x: torch.Tensor, pending: Pending | None) -> torch.Tensor:
    """x with `pending` applied."""
    return x if pending is None else kernels.hc_post(pending.o, x, pending.post, pending.comb)


def hc_head(x: torch.Tensor, fn: torch.Tensor, base: torch.Tensor, scale: torch.Tensor, cfg: ModelConfig,
            norm_weight: torch.Tensor | None) -> torch.Tensor:
    """Final collapse of the streams (no Sinkhorn), then the final RMSNorm: [N, hc, d] -> [N, d]."""
    return kernels.hc_head(x, fn, base, scale, cfg.hc_eps, cfg.rms_norm_eps, norm_weight)
