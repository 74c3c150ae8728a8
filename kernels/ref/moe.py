"""Pure-torch twin of the fused MoE: routed experts with clamped SwiGLU, weighted combine.

Expert weights are plain tensors (bf16/fp32 stacks) or `QuantWeight` stacks (fp8 128x128 blocks or
MXFP4); quantized experts are dequantized per touched expert to the activation dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .quant import act_quant_fp8, dequant


def _expert(w, e: int, dtype: torch.dtype) -> torch.Tensor:
    return w[e] if isinstance(w, torch.Tensor) and w.dtype == dtype else dequant(w[e], dtype)


def moe_experts(
    x: torch.Tensor,  # [N, d] activations
    w1,  # [E, I, d] gate projections (tensor or QuantWeight)
    w3,  # [E, I, d] up projections
    w2,  # [E, d, I] down projections
    weights: torch.Tensor,  # [N, k] fp32 routing weights (already renormalised and scaled)
    ids: torch.Tensor,  # [N, k] int expert ids
    limit: float,  # SwiGLU clamp: gate <= limit, -limit <= up <= limit
    act_quant: bool = False,  # FP8 activations (1x128 UE8M0 blocks) into both GEMMs, as act_quant does
) -> torch.Tensor:
    """-> [N, d] fp32: sum_k weights[:, k] * expert_{ids[:, k]}(x). Loops over the experts hit.
    With `act_quant` the GEMM inputs (x, and h after SwiGLU and the routing weight, rounded to x's dtype)
    are fake-quantized per row in 1x128 FP8 blocks; the products are the same as FP8 x FP8 MMA's."""
    n, k = ids.shape
    num_e = w1.shape[0]
    out = torch.zeros(n, x.shape[1], dtype=torch.float32, device=x.device)
    flat_ids = ids.reshape(-1).long()
    order = torch.argsort(flat_ids, stable=True)
    counts = torch.bincount(flat_ids, minlength=num_e).tolist()
    tok = order // k
    wsel = weights.reshape(-1)[order].float()
    if act_quant:
        x = act_quant_fp8(x).to(x.dtype)  # exact in bf16 (3 mantissa bits, power-of-two scales)
    start = 0
    for e, c in enumerate(counts):
        if c == 0:
            continue
        rows = tok[start:start + c]
        xe = x[rows]
        g = F.linear(xe, _expert(w1, e, x.dtype)).float().clamp(max=limit)
        v = F.linear(xe, _expert(w3, e, x.dtype)).float().clamp(-limit, limit)
        h = (F.silu(g) * v * wsel[start:start + c, None]).to(x.dtype)
        if act_quant:
            h = act_quant_fp8(h).to(x.dtype)
        out.index_add_(0, rows, F.linear(h, _expert(w2, e, x.dtype)).float())
        start += c
    return out
