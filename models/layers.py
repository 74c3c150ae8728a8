"""Small building blocks: RMSNorm, interleaved partial RoPE (with YaRN), plain linear weights.

The norm / RoPE math runs in kernels (`rms_norm`, `rope`, `norm_rope`; twins in kernels/ref/norm.py)."""

from __future__ import annotations

import math

import torch
from torch import nn

import kernels

from .config import ModelConfig, YarnConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kernels.rms_norm(x, self.weight, self.eps)


class Linear(nn.Module):
    """y = x W^T with W stored [out, in] under the official name `<module>.weight`.

    Resident FP8 (`make_fp8_resident`): `weight` holds float8_e4m3fn [out, in] and the buffer `scale`
    its UE8M0 bytes [ceil(out/128), ceil(in/128)] (checkpoint name `<module>.scale`); the product then
    runs through kernels.fp8_linear. All paths go through kernels.linear.
    """

    def __init__(self, in_features: int, out_features: int, fp32: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.fp32 = fp32  # compute in fp32 (reference does this for compressor and router)
        self.register_buffer("scale", None)  # UE8M0 bytes once the weight is FP8-resident

    def make_fp8_resident(self) -> None:
        """Swap the float weight for an (uninitialised) FP8 weight + UE8M0 scale buffer on its device."""
        out_f, in_f = self.weight.shape
        dev = self.weight.device
        self.weight = nn.Parameter(torch.empty(out_f, in_f, dtype=torch.float8_e4m3fn, device=dev),
                                   requires_grad=False)
        self.register_buffer("scale", torch.empty(-(-out_f // 128), -(-in_f // 128), dtype=torch.uint8, device=dev))

    def quant_weight(self):
        return kernels.QuantWeight(self.weight, self.scale, "fp8") if self.scale is not None else self.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kernels.linear(x, self.quant_weight(), self.fp32)


def rope_inv_freq(rope_dim: int, base: float, yarn: YarnConfig | None) -> torch.Tensor:
    """[rope_dim/2] inverse frequencies; YaRN blends interpolated/extrapolated ones (no mscale)."""
    inv = 1.0 / (base ** (torch.arange(0, rope_dim, 2, dtype=torch.float64) / rope_dim))
    if yarn is None:
        return inv.float()

    def corr_dim(n_rot: float) -> float:
        return rope_dim * math.log(yarn.original_max_position_embeddings / (n_rot * 2 * math.pi)) / (2 * math.log(base))

    low = max(math.floor(corr_dim(yarn.beta_fast)), 0)
    high = min(math.ceil(corr_dim(yarn.beta_slow)), rope_dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(rope_dim // 2, dtype=torch.float64) - low) / (high - low)).clamp(0, 1)
    inv = (inv / yarn.factor) * ramp + inv * (1 - ramp)
    return inv.float()


class Rope(nn.Module):
    """Interleaved RoPE on the trailing `rope_dim` channels: pairs (x[2i], x[2i+1]) rotate together."""

    def __init__(self, rope_dim: int, base: float, yarn: YarnConfig | None):
        super().__init__()
        self.rope_dim = rope_dim
        self.register_buffer("inv_freq", rope_inv_freq(rope_dim, base, yarn), persistent=False)

    def cos_sin(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions.float()[:, None] * self.inv_freq.to(positions.device)[None, :]  # [N, r/2]
        return freqs.cos(), freqs.sin()


def make_ropes(cfg: ModelConfig) -> tuple[Rope, Rope]:
    """(main rope for sliding-only layers: theta, no YaRN; compress rope: compress theta + YaRN)."""
    return (
        Rope(cfg.qk_rope_head_dim, cfg.rope_theta, None),
        Rope(cfg.qk_rope_head_dim, cfg.compress_rope_theta, cfg.yarn),
    )
