"""Decode variants of the block linear (`_fp8_linear_kernel` VAR 1 = swap: weights as the MMA's left operand,
2 = CUDA-core GEMV for one row) against the torch twins, on every path that rides on the kernel: plain,
split-K (self-reducing), group axis (wo_a), dual weights with the SwiGLU / compressor epilogues, the RMSNorm
prologue (q_norm + wq_b), plain (bf16 / fp32) weights. CPU: interpreter, tiny shapes. GPU (`-m gpu`): every
dense V4-Flash shape at M = 1 / 16 / 64 for each variant and for the shipped pick."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

from kernels.quant_weight import QuantWeight  # noqa: E402
from kernels.ref import fp8_linear as ref  # noqa: E402
from kernels.ref import linear_glue as ref_lin  # noqa: E402
from tests.kernels.interp_util import interp_modules  # noqa: E402

TOL = dict(rtol=1e-4, atol=1e-4)


def _fp8(n, k, g):
    from kernels.codecs import quant_fp8_block
    wq, ws = quant_fp8_block(torch.randn(n, k, generator=g) * 0.05)
    return QuantWeight(wq, ws.view(torch.uint8), "fp8")


def _cfg(var, bn, split, bk=128):
    return dict(BM=1 if var == 2 else 16, BN=bn, BK=bk, GROUP_M=1, num_warps=4, num_stages=2, SPLIT_K=split, VAR=var)


@pytest.mark.parametrize("var,bn,split,bk", [(1, 32, 1, 128), (1, 64, 3, 64), (1, 32, 2, 256), (2, 32, 1, 128),
                                             (2, 16, 2, 64), (2, 8, 1, 256)])
@pytest.mark.parametrize("fmt", ["fp8", "plain"])
def test_variant_paths_interp(var, bn, split, bk, fmt):
    (fl,) = interp_modules("fp8_linear")
    k = 384
    ms = (1,) if var == 2 else (1, 5)
    cfg = _cfg(var, bn, split, bk)
    for m in ms:
        g = torch.Generator().manual_seed(m * 7 + var)

        def w(n):
            return _fp8(n, k, g) if fmt == "fp8" else torch.randn(n, k, generator=g) * 0.05
        x = torch.randn(m, k, generator=g)
        wl = w(256)
        y = torch.empty(m, 256)
        for _ in range(2):  # the split-K counters are back at zero after a launch
            fl.launch(x, wl, y, config=cfg)
            torch.testing.assert_close(y, ref_lin.linear(x, wl), **TOL)
        # group axis: 2 groups of 128 rows on column blocks of x
        xg = torch.randn(m, 2, k, generator=g)
        yg = torch.empty(m, 256)
        fl.launch(xg.view(m, 2 * k), wl, yg, groups=2, x_gs=k, w_gs=128, y_gs=128, config=cfg)
        torch.testing.assert_close(yg.view(m, 2, 128), ref_lin.grouped_linear(xg, wl, 2), **TOL)
        # dual weights: clamped SwiGLU (rounded like two separate linears), compressor score + bias
        w1, w3 = w(128), w(128)
        ys = torch.empty(m, 128)
        fl.launch(x * 20, w1, ys, w2=w3, epi=1, round_out=True, limit=0.7, config=cfg)
        torch.testing.assert_close(ys, ref_lin.swiglu_linear(x * 20, w1, w3, 0.7), **TOL)
        ape = torch.randn(4, 128, generator=g)
        pos = torch.arange(5, 5 + m)
        kv, sc = torch.empty(m, 128), torch.empty(m, 128)
        fl.launch(x, w1, kv, w2=w3, y2=sc, epi=2, tab=ape, idx=pos, config=cfg)
        want_kv, want_sc = ref_lin.compressor_project(x, w1, w3, ape, pos, 4)
        torch.testing.assert_close(kv, want_kv, **TOL)
        torch.testing.assert_close(sc, want_sc, **TOL)
        if fmt == "fp8":  # RMSNorm prologue
            nw = torch.randn(k, generator=g)
            yn = torch.empty(m, 256)
            fl.launch(x * 3, wl, yn, norm_weight=nw, norm_eps=1e-6, config=cfg)
            torch.testing.assert_close(yn, ref_lin.norm_linear(x * 3, nw, 1e-6, wl), **TOL)


def test_variant_tile_rules():
    """One block scale per tile and K step: BN / BK must divide 128; GEMV is one row per program;
    FP8 activations keep the token-tile kernel."""
    (fl,) = interp_modules("fp8_linear")
    g = torch.Generator().manual_seed(0)
    x, w, y = torch.randn(1, 256), _fp8(256, 256, g), torch.empty(1, 256)
    with pytest.raises(ValueError, match="divid"):
        fl.launch(x, w, y, config=_cfg(1, 256, 1))
    with pytest.raises(ValueError, match="BM 1"):
        fl.launch(x, w, y, config=dict(_cfg(2, 32, 1), BM=16))
    fl.launch(x, w, y, act_quant=True, config=_cfg(2, 32, 1))  # act_quant: token tiles (VAR 0, BM >= 16)
    torch.testing.assert_close(y, ref.fp8_linear(x, w.data, w.scale, True), **TOL)


# ---- GPU: V4-Flash dense shapes -----------------------------------------------------------------
SHAPES = {  # name: (N, K)
    "wq_a": (1024, 4096), "wq_b": (32768, 1024), "wkv": (512, 4096), "wo_b": (4096, 8192),
    "idx_wq_b": (8192, 1024), "shared_w13": (2048, 4096), "shared_w2": (4096, 2048), "mtp_proj": (4096, 4096),
}
GPU_CFGS = {"swap16": _cfg(1, 64, 4), "swap64": dict(_cfg(1, 128, 2), BM=64, num_stages=4),
            "swap_bk256_pf": dict(_cfg(1, 64, 2, 256), PREFETCH=8), "gemv": dict(_cfg(2, 32, 4), num_stages=4),
            "gemv_bk512_pf_pdl": dict(_cfg(2, 8, 2, 512), PREFETCH=8, PDL=True), "picked": None}


@pytest.mark.gpu
@pytest.mark.parametrize("name", list(SHAPES))
@pytest.mark.parametrize("m", [1, 16, 64])
@pytest.mark.parametrize("variant", list(GPU_CFGS))
def test_variant_gpu(name, m, variant):
    import kernels.triton.fp8_linear as tri
    if variant == "gemv" and m != 1:
        pytest.skip("one row per program")
    n, k = SHAPES[name]
    g = torch.Generator(device="cuda").manual_seed(m + n)
    x = torch.randn(m, k, device="cuda", generator=g).bfloat16()
    wq = (torch.randn(n, k, device="cuda", generator=g) * 100).clamp(-448, 448).to(torch.float8_e4m3fn)
    ws = torch.randint(117, 121, (n // 128, k // 128), device="cuda", generator=g, dtype=torch.uint8)
    y0 = ref.fp8_linear(x, wq, ws)
    y1 = tri.fp8_linear(x, wq, ws, False, None, GPU_CFGS[variant])
    assert y1.dtype == torch.bfloat16 and torch.isfinite(y1).all()
    assert ((y1.float() - y0.float()).norm() / y0.float().norm()).item() < 1e-2
    if variant != "picked":  # back to back in a CUDA graph (PDL: the next launch starts early), x rewritten
        xs = [torch.randn(m, k, device="cuda", generator=g).bfloat16() for _ in range(3)]
        ys = [torch.empty(m, n, device="cuda", dtype=torch.bfloat16) for _ in range(3)]
        tri.launch(xs[0], QuantWeight(wq, ws, "fp8"), ys[0], config=GPU_CFGS[variant])
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for i in range(3):
                if i:
                    xs[i].copy_(ys[i - 1][:, :k] if n >= k else xs[i])
                tri.launch(xs[i], QuantWeight(wq, ws, "fp8"), ys[i], config=GPU_CFGS[variant])
        graph.replay()
        torch.cuda.synchronize()
        want = ref.fp8_linear(xs[0], wq, ws)
        for i in range(3):
            assert ((ys[i].float() - want.float()).norm() / want.float().norm()).item() < 1e-2
            if i < 2:
                want = ref.fp8_linear(ys[i][:, :k] if n >= k else xs[i + 1], wq, ws)


@pytest.mark.gpu
@pytest.mark.parametrize("name", list(SHAPES))
@pytest.mark.parametrize("m", [100, 128, 200, 256])
def test_big_batch_table_gpu(name, m):
    """Decode batches of 65..256 rows through the measured table (buckets 128 / 256: token tiles and swap tiles
    with K splits) against the twin, at bucket edges and inside."""
    import kernels.triton.fp8_linear as tri
    n, k = SHAPES[name]
    g = torch.Generator(device="cuda").manual_seed(m + n)
    x = torch.randn(m, k, device="cuda", generator=g).bfloat16()
    wq = (torch.randn(n, k, device="cuda", generator=g) * 100).clamp(-448, 448).to(torch.float8_e4m3fn)
    ws = torch.randint(117, 121, (n // 128, k // 128), device="cuda", generator=g, dtype=torch.uint8)
    assert tri.pick_config(m, n, k, False, False) is not None
    y0 = ref.fp8_linear(x, wq, ws)
    y1 = tri.fp8_linear(x, wq, ws)
    assert ((y1.float() - y0.float()).norm() / y0.float().norm()).item() < 1e-2


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 16, 64, 128, 256])
def test_glue_decode_gpu(m, monkeypatch):
    """The glue paths at V4-Flash decode shapes through the shipped block-linear picks: q_norm + wq_b, grouped
    wo_a, SwiGLU (dual launch: K split from 65 rows); the scaled FP8 x FP8 path the table takes from 128 rows
    for some shapes is tested against its act_quant twin in test_fp8_scaled_mm.py."""
    import kernels.triton.fp8_table as ft
    import kernels.triton.linear_glue as tri
    monkeypatch.setattr(ft, "SCALED_MM_MIN_M", {})
    g = torch.Generator(device="cuda").manual_seed(m)

    def fp8(n, k):
        wq = (torch.randn(n, k, device="cuda", generator=g) * 100).clamp(-448, 448).to(torch.float8_e4m3fn)
        return QuantWeight(wq, torch.randint(117, 121, (n // 128, k // 128), device="cuda", generator=g,
                                             dtype=torch.uint8), "fp8")

    def rel(a, b):
        return ((a.float() - b.float()).norm() / b.float().norm()).item()
    x = torch.randn(m, 1024, device="cuda", generator=g).bfloat16()
    nw = torch.rand(1024, device="cuda", generator=g).bfloat16() + 0.5
    w = fp8(32768, 1024)
    assert rel(tri.norm_linear(x, nw, 1e-6, w), ref_lin.norm_linear(x, nw, 1e-6, w)) < 1e-2
    xg = torch.randn(m, 8, 4096, device="cuda", generator=g).bfloat16()
    w = fp8(8192, 4096)
    assert rel(tri.grouped_linear(xg, w, 8), ref_lin.grouped_linear(xg, w, 8)) < 1e-2
    x = torch.randn(m, 4096, device="cuda", generator=g).bfloat16() * 0.01
    w1, w3 = fp8(2048, 4096), fp8(2048, 4096)
    assert rel(tri.swiglu_linear(x, w1, w3, 10.0), ref_lin.swiglu_linear(x, w1, w3, 10.0)) < 2e-2
