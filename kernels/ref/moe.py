"""Pure-torch twin of the fused MoE: routed experts with clamped SwiGLU, weighted combine."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def moe_experts(
    x: torch.Tensor,  # [N, d] activations
    w1: torch.Tensor,  # [E, I, d] gate projections
    w3: torch.Tensor,  # [E, I, d] up projections
    w2: torch.Tensor,  # [E, d, I] down projections
    weights: torch.Tensor,  # [N, k] fp32 routing weights (already renormalised and scaled)
    ids: torch.Tensor,  # [N, k] int64 expert ids
    limit: float,  # SwiGLU clamp: gate <= limit, -limit <= up <= limit
) -> torch.Tensor:
    """-> [N, d] fp32: sum_k weights[:, k] * expert_{ids[:, k]}(x). Loops over the experts hit."""
    n, k = ids.shape
    out = torch.zeros(n, x.shape[1], dtype=torch.float32, device=x.device)
    flat_ids = ids.reshape(-1)
    order = torch.argsort(flat_ids, stable=True)
    counts = torch.bincount(flat_ids, minlength=w1.shape[0]).tolist()
    tok = order // k
    wsel = weights.reshape(-1)[order]
    start = 0
    for e, c in enumerate(counts):
        if c == 0:
            continue
        rows = tok[start:start + c]
        xe = x[rows]
        g = F.linear(xe, w1[e]).float().clamp(max=limit)
        v = F.linear(xe, w3[e]).float().clamp(-limit, limit)
        h = (F.silu(g) * v * wsel[start:start + c, None]).to(x.dtype)
        out.index_add_(0, rows, F.linear(h, w2[e]).float())
        start += c
    return out
