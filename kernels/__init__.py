"""Public kernel entry points. Each op has a pure-torch twin (`kernels.ref`) used on CPU and as the
reference; Triton implementations (`kernels.triton`) are used on CUDA once they exist.

`set_backend("ref" | "triton" | "auto")` overrides the choice (tests compare both).
"""

from __future__ import annotations

import torch

from .ref import moe as _ref_moe

_BACKEND = "auto"


def set_backend(name: str) -> None:
    global _BACKEND
    if name not in ("auto", "ref", "triton"):
        raise ValueError(f"unknown kernel backend {name!r}")
    _BACKEND = name


def get_backend() -> str:
    return _BACKEND


def moe_experts(x, w1, w3, w2, weights, ids, limit: float) -> torch.Tensor:
    """Routed experts (clamped SwiGLU) and weighted combine -> [N, d] fp32. See kernels.ref.moe."""
    return _ref_moe.moe_experts(x, w1, w3, w2, weights, ids, limit)
