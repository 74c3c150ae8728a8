"""FP8 block-scaled linear (FP8 E4M3 weights + UE8M0 128x128 scales; bf16 activations, optionally
quantized per 1x128 in the kernel): Triton vs the torch twin kernels.ref.fp8_linear.

CPU: TRITON_INTERPRET=1 set in os.environ at import (collection) time when no GPU is present; Triton
modules are imported lazily by kernels/ and reloaded here if they were jitted without it.
GPU (`-m gpu`): the V4-Flash dense shapes at decode and prefill M.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

from kernels.ref import fp8_linear as ref  # noqa: E402
from tests.kernels.interp_util import interp_modules  # noqa: E402


def _rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm().clamp(min=1e-12)).item()


@pytest.mark.parametrize("m,n,k", [(1, 96, 256), (5, 160, 200), (20, 64, 128)])
@pytest.mark.parametrize("act_quant", [False, True])
def test_fp8_linear_interp(m, n, k, act_quant):
    from kernels.codecs import quant_fp8_block
    (tri,) = interp_modules("fp8_linear")
    g = torch.Generator().manual_seed(m * n + k)
    x = torch.randn(m, k, generator=g)
    wq, ws = quant_fp8_block(torch.randn(n, k, generator=g) * 0.05)
    y0 = ref.fp8_linear(x, wq, ws, act_quant)
    y1 = tri.fp8_linear(x, wq, ws, act_quant)
    assert y1.shape == (m, n) and y1.dtype == x.dtype
    torch.testing.assert_close(y1, y0, rtol=1e-4, atol=1e-4)


def test_linear_dispatch_cpu():
    """kernels.linear on a QuantWeight uses the twin on CPU and matches dequantize-then-F.linear."""
    import kernels
    from kernels.codecs import dequant_fp8_block, quant_fp8_block
    wq, ws = quant_fp8_block(torch.randn(64, 128) * 0.05)
    x = torch.randn(3, 128)
    y = kernels.linear(x, kernels.QuantWeight(wq, ws.view(torch.uint8), "fp8"))
    torch.testing.assert_close(y, x @ dequant_fp8_block(wq, ws).T, rtol=1e-5, atol=1e-5)


# ---- GPU: V4-Flash dense shapes -----------------------------------------------------------------
SHAPES = {  # name: (N, K)
    "wq_a": (1024, 4096), "wq_b": (32768, 1024), "wkv": (512, 4096), "wo_b": (4096, 8192),
    "idx_wq_b": (8192, 1024), "shared_w13": (2048, 4096), "shared_w2": (4096, 2048), "mtp_proj": (4096, 4096),
}


@pytest.mark.gpu
@pytest.mark.parametrize("name", list(SHAPES))
@pytest.mark.parametrize("m", [1, 16, 64, 300, 4096])
@pytest.mark.parametrize("act_quant", [False, True])
def test_fp8_linear_gpu(name, m, act_quant):
    import kernels.triton.fp8_linear as tri
    n, k = SHAPES[name]
    g = torch.Generator(device="cuda").manual_seed(m + n)
    x = torch.randn(m, k, device="cuda", generator=g).bfloat16()
    wq = (torch.randn(n, k, device="cuda", generator=g) * 100).clamp(-448, 448).to(torch.float8_e4m3fn)
    ws = torch.randint(117, 121, (n // 128, k // 128), device="cuda", generator=g, dtype=torch.uint8)
    y0 = ref.fp8_linear(x, wq, ws, act_quant)
    y1 = tri.fp8_linear(x, wq, ws, act_quant)
    assert y1.dtype == torch.bfloat16 and torch.isfinite(y1).all()
    assert _rel(y1, y0) < (2e-2 if act_quant else 1e-2)
