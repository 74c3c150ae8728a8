"""Shared inputs of the kernel benchmarks (bench/kernels.py and the entry files it installs): V4-Flash MoE
expert weights in each format drawn on the GPU, routings, expert bytes, and the dense FP8 linear shapes.
The entry files import these, not bench/kernels.py (which imports them to register their entries)."""

from __future__ import annotations

import torch

D, E, TOPK, INTER = 4096, 256, 6, 2048


def _experts(fmt: str):
    from kernels.quant_weight import QuantWeight
    g = torch.Generator(device="cuda").manual_seed(0)
    ws = []
    for n, k in ((INTER, D), (INTER, D), (D, INTER)):
        if fmt == "bf16":
            ws.append((torch.randn(E, n, k, device="cuda", generator=g) * 0.02).bfloat16())
        elif fmt == "fp8":
            data = (torch.randn(E, n, k, device="cuda", generator=g) * 100).clamp(-448, 448).to(torch.float8_e4m3fn)
            ws.append(QuantWeight(data, torch.randint(117, 121, (E, n // 128, k // 128), device="cuda", generator=g,
                                                      dtype=torch.uint8), "fp8"))
        else:
            data = torch.randint(-128, 128, (E, n, k // 2), device="cuda", generator=g, dtype=torch.int8)
            ws.append(QuantWeight(data, torch.randint(118, 123, (E, n, k // 32), device="cuda", generator=g,
                                                      dtype=torch.uint8), "fp4"))
    return ws


def _expert_bytes(ws) -> float:
    tot = 0
    for w in ws:
        tot += w.nbytes() if hasattr(w, "nbytes") and callable(w.nbytes) else w.numel() * w.element_size()
    return tot / E


def _routings(n: int, mode: str, count: int, seed: int = 0):
    from kernels.ref.routing import moe_route
    out = []
    for i in range(count):
        g = torch.Generator(device="cuda").manual_seed(seed + 1000 * i + n)
        logits = torch.randn(n, E, device="cuda", generator=g)
        if mode == "skewed":
            logits += torch.linspace(3.0, -3.0, E, device="cuda")[torch.randperm(E, device="cuda", generator=g)]
        x = (torch.randn(n, D, device="cuda", generator=g)).bfloat16()
        w, ids = moe_route(logits, TOPK, 1.5)
        out.append((x, w, ids))
    return out


FP8_SHAPES = {  # V4-Flash dense linears (N, K)
    "wq_a": (1024, 4096), "wq_b": (32768, 1024), "wkv": (512, 4096), "wo_b": (4096, 8192),
    "idx_wq_b": (8192, 1024), "shared_w13": (2048, 4096), "shared_w2": (4096, 2048), "mtp_proj": (4096, 4096),
}
