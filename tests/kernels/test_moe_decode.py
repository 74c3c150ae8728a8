"""Swapped-operand MXFP4 MoE decode kernel (kernels/triton/moe_decode.py) vs the torch twin.

CPU: the Triton interpreter at tiny shapes (uniform, skewed and empty-expert routing; one tile per
pair and the block-aligned layout; both kernel variants). GPU (`-m gpu`): V4-Flash shapes (hidden 4096,
256 experts, top-6, intermediate 2048) at decode batches, and the dispatch `kernels.moe_experts`
picking it for decode shapes.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

from kernels.ref import moe as ref  # noqa: E402
from kernels.ref import routing as ref_routing  # noqa: E402
from tests.kernels.interp_util import interp_modules  # noqa: E402
from tests.kernels.test_moe_interp import _quant, _rand_experts, _rel, _routing  # noqa: E402


def _tiny(n: int, mode: str):
    g = torch.Generator().manual_seed(n)
    e, k, d, inter = 8, 2, 128, 128
    x = torch.randn(n, d, generator=g)
    w1, w3 = (torch.randn(e, inter, d, generator=g) * 0.15 for _ in range(2))
    w2 = torch.randn(e, d, inter, generator=g) * 0.15
    logits = torch.randn(n, e, generator=g)
    if mode == "skewed":
        logits[:, :2] += 5.0  # experts 0/1 take everything
    elif mode == "empty":
        logits[:, 3:] -= 30.0  # only experts 0-2 chosen; the rest stay empty
    weights, ids = ref_routing.moe_route(logits, k, 1.5)
    return x, [_quant(w, "fp4") for w in (w1, w3, w2)], weights, ids


@pytest.mark.parametrize("variant", ["bytes", "words"])
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("n,mode", [(1, "uniform"), (5, "uniform"), (9, "skewed"), (7, "empty")])
def test_moe_decode_interp(variant, aligned, n, mode):
    (md,) = interp_modules("moe_decode")
    x, (q1, q3, q2), weights, ids = _tiny(n, mode)
    if mode == "empty":
        assert int(ids.max()) < 3
    want = ref.moe_experts(x, q1, q3, q2, weights, ids, 1.0)
    cfg = dict(BT=16, BN=32, BK=64, num_warps=4, num_stages=1, ALIGNED=aligned, WORDS=variant == "words")
    cfg1 = dict(cfg, SPLIT_K=2 if n in (5, 7) else 1)  # gate/up: self-reducing split-K
    cfg2 = dict(cfg, SPLIT_K=2 if n % 2 else 1)  # down: K split over programs, atomic combine
    got = md.moe_experts_decode(x, q1, q3, q2, weights, ids, 1.0, cfg1, cfg2)
    if cfg1["SPLIT_K"] > 1:  # the arrival counters are back at zero
        assert int(md._counters(x.device, 1).abs().sum()) == 0
    assert got.shape == want.shape and got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_moe_decode_supports():
    """Only MXFP4 experts with bf16 (interpreter: fp32) activations and no FP8 activations."""
    (md,) = interp_modules("moe_decode")
    x, (q1, q3, q2), _, _ = _tiny(2, "uniform")
    assert md.supports(x, q1, q3, q2, False)
    assert not md.supports(x, q1, q3, q2, True)
    assert not md.supports(x, q1.dequant(), q3, q2, False)


_CACHE: dict = {}


@pytest.mark.gpu
@pytest.mark.parametrize("variant", ["bytes", "words"])
@pytest.mark.parametrize("mode", ["uniform", "skewed", "empty"])
@pytest.mark.parametrize("n", [1, 8, 64, 256])
def test_moe_decode_gpu(variant, mode, n):
    import kernels.triton.moe_decode as md
    if "w" not in _CACHE:
        _CACHE["w"] = _rand_experts("fp4")
    w1, w3, w2 = _CACHE["w"]
    torch.manual_seed(n)
    x = torch.randn(n, 4096, device="cuda").bfloat16()
    weights, ids = _routing(n, mode, n)
    want = ref.moe_experts(x, w1, w3, w2, weights, ids, 10.0)
    for aligned, split in (((False, 1), (True, 1), (False, 2)) if n <= 8 else ((True, 1),)):
        cfg = dict(md.decode_config(n * 6, 2048, True, False), ALIGNED=aligned, WORDS=variant == "words",
                   SPLIT_K=split)
        got = md.moe_experts_decode(x, w1, w3, w2, weights, ids, 10.0, cfg, cfg)
        torch.cuda.synchronize()
        assert torch.isfinite(got).all()
        assert _rel(got, want) < 1.5e-2, (aligned, split, _rel(got, want))


@pytest.mark.gpu
@pytest.mark.parametrize("n", [1, 64, 4096])
def test_moe_dispatch_gpu(n):
    """kernels.moe_experts on MXFP4 experts (decode batches take the swapped kernel) == the twin."""
    import kernels
    if "w" not in _CACHE:
        _CACHE["w"] = _rand_experts("fp4")
    w1, w3, w2 = _CACHE["w"]
    torch.manual_seed(n)
    x = torch.randn(n, 4096, device="cuda").bfloat16()
    weights, ids = _routing(n, "uniform", n)
    want = ref.moe_experts(x, w1, w3, w2, weights, ids, 10.0)
    got = kernels.moe_experts(x, w1, w3, w2, weights, ids, 10.0)
    assert _rel(got, want) < 1.5e-2


@pytest.mark.gpu
@pytest.mark.parametrize("words", [False, True])
def test_moe_decode_conversion_exhaustive_gpu(words):
    """Every MXFP4 byte in every position through the down-projection launch with identity tokens
    (out[i] = W[:, i]) == the twin's dequant, exactly; scale bytes <= 128 (packed PTX) and > 128 (fallback)."""
    import kernels.triton.moe_decode as md
    from kernels.quant_weight import QuantWeight
    from kernels.ref.quant import dequant
    from kernels.triton.routing import moe_align
    n_out, k_in = 256, 128
    rows = torch.arange(n_out)[:, None] * 64 + torch.arange(k_in // 2)[None, :]
    data = (rows % 256).to(torch.uint8).view(torch.int8)[None].cuda()
    for lo_s, hi_s in ((100, 128), (129, 140)):
        sc = torch.randint(lo_s, hi_s + 1, (1, n_out, k_in // 32), dtype=torch.uint8).cuda()
        w = QuantWeight(data, sc, "fp4")
        ident = torch.eye(k_in, device="cuda").bfloat16()
        ids = torch.zeros(k_in, 1, dtype=torch.int32, device="cuda")
        wts = torch.ones(k_in, device="cuda")
        cfg = dict(BT=16, BN=64, BK=128, num_warps=4, num_stages=2, ALIGNED=True, WORDS=words)
        out = torch.zeros(k_in, n_out, device="cuda")
        md._launch(ident, w, None, out, wts, ids.reshape(-1), moe_align(ids, 1, 16), n_out, k_in, k_in, 10.0, 1, 1,
                   False, cfg)
        torch.testing.assert_close(out, dequant(w, torch.float32)[0].T, rtol=0, atol=0)


@pytest.mark.gpu
@pytest.mark.parametrize("pdl", [0, 1])
@pytest.mark.parametrize("n", [1, 64])
def test_moe_decode_graph_gpu(pdl, n):
    """Captured in a CUDA graph (as the engine's decode step is) with and without programmatic dependent
    launch of the down kernel: replays over changing inputs == the twin."""
    import kernels.triton.moe_decode as md
    if "w" not in _CACHE:
        _CACHE["w"] = _rand_experts("fp4")
    w1, w3, w2 = _CACHE["w"]
    x = torch.randn(n, 4096, device="cuda").bfloat16()
    weights, ids = _routing(n, "uniform", 7)
    cfg = dict(md.decode_config(n * 6, 2048, True, False), PDL=pdl, WORDS=True)
    md.moe_experts_decode(x, w1, w3, w2, weights, ids, 10.0, cfg, cfg)  # compile + warm outside capture
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = md.moe_experts_decode(x, w1, w3, w2, weights, ids, 10.0, cfg, cfg)
    for seed in (1, 2):
        x.copy_(torch.randn(n, 4096, device="cuda").bfloat16())
        w_new, ids_new = _routing(n, "skewed", seed)
        weights.copy_(w_new)
        ids.copy_(ids_new)
        g.replay()
        torch.cuda.synchronize()
        want = ref.moe_experts(x, w1, w3, w2, weights, ids, 10.0)
        assert _rel(out, want) < 1.5e-2, (seed, _rel(out, want))
