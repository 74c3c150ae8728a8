"""Swapped-operand MXFP4 MoE decode kernel (kernels/triton/moe_decode.py) vs the torch twin.

CPU: the Triton interpreter at tiny shapes (uniform, skewed and empty-expert routing; one tile per
pair and the block-aligned layout). GPU (`-m gpu`): V4-Flash shapes (hidden 4096, 256 experts, top-6,
intermediate 2048) at decode batches with every shipped tile config, an exhaustive conversion check,
CUDA-graph capture, and the dispatch `kernels.moe_experts` picking it for decode shapes.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

from kernels.ref import moe as ref  # noqa: E402
from tests.kernels.interp_util import interp_modules  # noqa: E402
from tests.kernels.kernel_cases import tiny_moe  # noqa: E402
from tests.kernels.test_moe_interp import _quant, _rand_experts, _rel, _routing  # noqa: E402


def _tiny(n: int, mode: str):
    x, (w1, w3, w2), weights, ids = tiny_moe(n, 128, 128, mode)
    return x, [_quant(w, "fp4") for w in (w1, w3, w2)], weights, ids


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("n,mode", [(1, "uniform"), (5, "uniform"), (9, "skewed"), (7, "empty")])
def test_moe_decode_interp(aligned, n, mode):
    (md,) = interp_modules("moe_decode")
    x, (q1, q3, q2), weights, ids = _tiny(n, mode)
    if mode == "empty":
        assert int(ids.max()) < 3
    want = ref.moe_experts(x, q1, q3, q2, weights, ids, 1.0)
    cfg = dict(BT=16, BN=32, BK=128, num_warps=4, num_stages=1, ALIGNED=aligned)
    got = md.moe_experts_decode(x, q1, q3, q2, weights, ids, 1.0, cfg, cfg)
    assert got.shape == want.shape and got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("opts", [dict(SEQ=True), dict(SEQ=False)])
def test_moe_decode_variants_interp(opts):
    """The up matrix in its own K loop (SEQ, the shipped aligned tile) or in the gate's loop compute the same
    result, with a K of two tiles (both loops carry across k-steps)."""
    (md,) = interp_modules("moe_decode")
    x, (w1, w3, w2), weights, ids = tiny_moe(9, 256, 128, "skewed")
    q1, q3, q2 = [_quant(w, "fp4") for w in (w1, w3, w2)]
    want = ref.moe_experts(x, q1, q3, q2, weights, ids, 1.0)
    cfg = dict(BT=16, BN=32, BK=128, num_warps=4, num_stages=1, ALIGNED=True, **opts)
    got = md.moe_experts_decode(x, q1, q3, q2, weights, ids, 1.0, cfg, cfg)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_moe_decode_dispatch_interp():
    """The Triton moe_experts hands MXFP4 decode shapes to the swapped kernel, other shapes not."""
    (tm,) = interp_modules("moe")
    x, (q1, q3, q2), weights, ids = _tiny(3, "uniform")
    assert tm.use_decode_kernel(x, q1, q3, q2, ids, False)
    assert not tm.use_decode_kernel(x, q1, q3, q2, ids, True)  # FP8 activations: the grouped GEMM
    assert not tm.use_decode_kernel(x, q1.dequant(), q3, q2, ids, False)
    many = torch.zeros(17 * 8, 2, dtype=torch.int32)  # 34 pairs per expert: prefill tiles
    assert not tm.use_decode_kernel(torch.zeros(17 * 8, 128), q1, q3, q2, many, False)
    want = ref.moe_experts(x, q1, q3, q2, weights, ids, 1.0)
    torch.testing.assert_close(tm.moe_experts(x, q1, q3, q2, weights, ids, 1.0), want, rtol=1e-4, atol=1e-5)


_CACHE: dict = {}


def _flash_experts():
    if "w" not in _CACHE:
        _CACHE["w"] = _rand_experts("fp4")
    return _CACHE["w"]


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["uniform", "skewed", "empty"])
@pytest.mark.parametrize("n", [1, 4, 8, 64, 256])
def test_moe_decode_gpu(mode, n):
    """Both shipped configs (decode_config: one tile per pair / moe_align blocks) and the 4-warp wgmma tile at
    each batch and routing."""
    import kernels.triton.moe_decode as md
    w1, w3, w2 = _flash_experts()
    torch.manual_seed(n)
    x = torch.randn(n, 4096, device="cuda").bfloat16()
    weights, ids = _routing(n, mode, n)
    want = ref.moe_experts(x, w1, w3, w2, weights, ids, 10.0)
    cfgs = [md.decode_config(384), dict(BT=16, BN=64, BK=128, num_warps=2, num_stages=4, ALIGNED=True)]
    if n <= 8:
        cfgs.append(md.decode_config(6))
    for cfg in cfgs:
        got = md.moe_experts_decode(x, w1, w3, w2, weights, ids, 10.0, cfg, cfg)
        torch.cuda.synchronize()
        assert torch.isfinite(got).all()
        assert _rel(got, want) < 1.5e-2, (cfg, _rel(got, want))


@pytest.mark.gpu
@pytest.mark.parametrize("n", [1, 64, 4096])
def test_moe_dispatch_gpu(n):
    """kernels.moe_experts on MXFP4 experts (decode batches take the swapped kernel) == the twin."""
    import kernels
    import kernels.triton.moe as tm
    w1, w3, w2 = _flash_experts()
    torch.manual_seed(n)
    x = torch.randn(n, 4096, device="cuda").bfloat16()
    weights, ids = _routing(n, "uniform", n)
    assert tm.use_decode_kernel(x, w1, w3, w2, ids, False) == (n < 4096)
    want = ref.moe_experts(x, w1, w3, w2, weights, ids, 10.0)
    got = kernels.moe_experts(x, w1, w3, w2, weights, ids, 10.0)
    assert _rel(got, want) < 1.5e-2


@pytest.mark.gpu
def test_moe_decode_conversion_exhaustive_gpu():
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
        assert (w.max_scale_byte() <= 128) == (hi_s <= 128)
        ident = torch.eye(k_in, device="cuda").bfloat16()
        ids = torch.zeros(k_in, 1, dtype=torch.int32, device="cuda")
        wts = torch.ones(k_in, device="cuda")
        out = torch.zeros(k_in, n_out, device="cuda")
        md._launch(ident, w, None, out, wts, ids.reshape(-1), moe_align(ids, 1, 16), n_out, k_in, k_in, 10.0, 1, 1,
                   False, md.decode_config(384))
        torch.testing.assert_close(out, dequant(w, torch.float32)[0].T, rtol=0, atol=0)


@pytest.mark.gpu
@pytest.mark.parametrize("n", [1, 8, 64])
def test_moe_decode_graph_gpu(n):
    """Captured in a CUDA graph (as the engine's decode step is): replays over changing inputs == the twin."""
    import kernels.triton.moe as tm
    w1, w3, w2 = _flash_experts()
    x = torch.randn(n, 4096, device="cuda").bfloat16()
    weights, ids = _routing(n, "uniform", 7)
    tm.moe_experts(x, w1, w3, w2, weights, ids, 10.0)  # compile + warm outside the capture
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = tm.moe_experts(x, w1, w3, w2, weights, ids, 10.0)
    for seed in (1, 2):
        x.copy_(torch.randn(n, 4096, device="cuda").bfloat16())
        w_new, ids_new = _routing(n, "skewed", seed)
        weights.copy_(w_new)
        ids.copy_(ids_new)
        g.replay()
        torch.cuda.synchronize()
        want = ref.moe_experts(x, w1, w3, w2, weights, ids, 10.0)
        assert _rel(out, want) < 1.5e-2, (seed, _rel(out, want))

