"""MoE FFN: sqrt-softplus router (bias-corrected top-k, or hash routing via `tid2eid`), routed
experts stacked per projection, and the shared expert. Routing and expert compute go through
`kernels.moe_route` / `kernels.moe_experts` (Triton on CUDA, the pure-torch twins on CPU).
"""

from __future__ import annotations

import torch
from torch import nn

import kernels

from .config import ModelConfig
from .layers import Linear
from .parallel import ExpertParallel, ParallelContext


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
        """x [N, d] -> (weights [N, k] fp32, expert ids [N, k] int32)."""
        logits = kernels.linear(x, self.weight, fp32=True)  # [N, E] fp32
        if self.hash_routed:
            return kernels.moe_route(logits, self.topk, self.scale, self.renorm, tid2eid=self.tid2eid,
                                     input_ids=input_ids)
        return kernels.moe_route(logits, self.topk, self.scale, self.renorm, bias=self.bias)


class SharedExpert(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d, i = cfg.hidden_size, cfg.moe_intermediate_size
        self.w1 = Linear(d, i)
        self.w2 = Linear(i, d)
        self.w3 = Linear(d, i)
        self.limit = cfg.swiglu_limit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = kernels.swiglu_linear(x, self.w1.quant_weight(), self.w3.quant_weight(), self.limit)  # one launch
        return self.w2(h)  # Linear -> kernels.linear (FP8 resident on CUDA)


class MoE(nn.Module):
    """Routed experts as stacked tensors: w1/w3 [E, I, d] (gate/up), w2 [E, d, I] (down).

    Checkpoint names `ffn.experts.{e}.w{1,2,3}.weight` map to row e of the stacks (see load_weights).
    """

    def __init__(self, cfg: ModelConfig, hash_routed: bool, tp: ParallelContext | None = None):
        super().__init__()
        tp = tp or ParallelContext()
        d, i = cfg.hidden_size, cfg.moe_intermediate_size
        e0, e1 = tp.split(cfg.n_routed_experts)  # expert parallelism: this rank's experts [e0, e1)
        e = e1 - e0
        self.gate = Gate(cfg, hash_routed)
        self.experts_w1 = nn.Parameter(torch.empty(e, i, d))
        self.experts_w3 = nn.Parameter(torch.empty(e, i, d))
        self.experts_w2 = nn.Parameter(torch.empty(e, d, i))
        # the shared expert is added once, on rank 0 (before the all-reduce)
        self.shared_experts = SharedExpert(cfg) if cfg.n_shared_experts and tp.rank == 0 else None
        # None: every expert is here; else global expert ids -> this rank's stacks, partial sum
        self.ep = ExpertParallel(e0, e1) if tp.enabled else None
        self.limit = cfg.swiglu_limit
        self.expert_fmt = None  # None: float stacks; "fp8" / "fp4": resident quantized (see make_resident)
        self._qw: dict[str, kernels.QuantWeight] = {}  # QuantWeight handles of the resident stacks

    def make_resident(self, fmt: str) -> None:
        """Swap the float stacks for uninitialised quantized ones + UE8M0 scale buffers `experts_wX_scale`
        (checkpoint `ffn.experts.{e}.wX.scale`): fp8 [E, N, K] + [E, N/128, K/128], or MXFP4 int8
        [E, N, K/2] + [E, N, K/32]."""
        for name in ("experts_w1", "experts_w3", "experts_w2"):
            p = getattr(self, name)
            e, n, k = p.shape
            dev = p.device
            if fmt == "fp8":
                data = torch.empty(e, n, k, dtype=torch.float8_e4m3fn, device=dev)
                scale = torch.empty(e, -(-n // 128), -(-k // 128), dtype=torch.uint8, device=dev)
            elif fmt == "fp4":
                data = torch.empty(e, n, k // 2, dtype=torch.int8, device=dev)
                scale = torch.empty(e, n, k // 32, dtype=torch.uint8, device=dev)
            else:
                raise ValueError(f"unknown expert format {fmt!r}")
            setattr(self, name, nn.Parameter(data, requires_grad=False))
            self.register_buffer(name + "_scale", scale)
        self.expert_fmt = fmt

    def _w(self, name: str):
        p = getattr(self, name)
        if self.expert_fmt is None:
            return p
        scale = getattr(self, name + "_scale")
        cached = self._qw.get(name)  # one handle per stack: it remembers its max scale byte (no re-sync)
        if cached is None or cached.data is not p or cached.scale is not scale:
            cached = self._qw[name] = kernels.QuantWeight(p, scale, self.expert_fmt)
        return cached

    def forward(self, x: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        weights, ids = self.gate(x, input_ids)
        experts = kernels.moe_experts if self.ep is None else self.ep.moe_experts
        y = experts(x, self._w("experts_w1"), self._w("experts_w3"), self._w("experts_w2"), weights, ids, self.limit)
        if self.shared_experts is not None:
            return kernels.add_cast(y, self.shared_experts(x), x.dtype)
        return y.to(x.dtype)
