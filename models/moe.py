"""MoE FFN: sqrt-softplus router (bias-corrected top-k, or hash routing via `tid2eid`), routed
experts stacked per projection, and the shared expert. The expert compute goes through
`kernels.moe_experts` (Triton on CUDA later; the pure-torch twin now).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import kernels

from .config import ModelConfig
from .layers import Linear


class Gate(nn.Module):
    """Router. Hash layers: fixed experts per token id (`tid2eid`); others: top-k of scores + bias."""

    def __init__(self, cfg: ModelConfig, hash_routed: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(cfg.n_routed_experts, cfg.hidden_size))
        self.hash_routed = hash_routed
        if hash_routed:
            self.register_buffer("tid2eid", torch.zeros(cfg.vocab_size, cfg.num_experts_per_tok, dtype=torch.long))
        else:
            self.register_buffer("bias", torch.zeros(cfg.n_routed_experts, dtype=torch.float32))
        self.topk = cfg.num_experts_per_tok
        self.scale = cfg.routed_scaling_factor
        self.renorm = cfg.norm_topk_prob

    def forward(self, x: torch.Tensor, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [N, d] -> (weights [N, k] fp32, expert ids [N, k] int64)."""
        scores = F.softplus(F.linear(x.float(), self.weight.float())).sqrt()  # [N, E]
        if self.hash_routed:
            ids = self.tid2eid[input_ids].long()
        else:
            ids = torch.topk(scores + self.bias.float(), self.topk, dim=-1, sorted=False).indices
        w = scores.gather(1, ids)
        if self.renorm:
            w = w / (w.sum(dim=-1, keepdim=True) + 1e-20)
        return w * self.scale, ids


class SharedExpert(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d, i = cfg.hidden_size, cfg.moe_intermediate_size
        self.w1 = Linear(d, i)
        self.w2 = Linear(i, d)
        self.w3 = Linear(d, i)
        self.limit = cfg.swiglu_limit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.w1(x).float().clamp(max=self.limit)
        v = self.w3(x).float().clamp(-self.limit, self.limit)
        return self.w2((F.silu(g) * v).to(x.dtype))


class MoE(nn.Module):
    """Routed experts as stacked tensors: w1/w3 [E, I, d] (gate/up), w2 [E, d, I] (down).

    Checkpoint names `ffn.experts.{e}.w{1,2,3}.weight` map to row e of the stacks (see load_weights).
    """

    def __init__(self, cfg: ModelConfig, hash_routed: bool):
        super().__init__()
        e, d, i = cfg.n_routed_experts, cfg.hidden_size, cfg.moe_intermediate_size
        self.gate = Gate(cfg, hash_routed)
        self.experts_w1 = nn.Parameter(torch.empty(e, i, d))
        self.experts_w3 = nn.Parameter(torch.empty(e, i, d))
        self.experts_w2 = nn.Parameter(torch.empty(e, d, i))
        self.shared_experts = SharedExpert(cfg) if cfg.n_shared_experts else None
        self.limit = cfg.swiglu_limit

    def forward(self, x: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        weights, ids = self.gate(x, input_ids)
        y = kernels.moe_experts(x, self.experts_w1, self.experts_w3, self.experts_w2, weights, ids, self.limit)
        if self.shared_experts is not None:
            y = y + self.shared_experts(x).float()
        return y.to(x.dtype)
