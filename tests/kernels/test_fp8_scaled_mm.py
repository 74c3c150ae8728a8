"""FP8 activation quantization pass (kernels/triton/act_quant.py) and the FP8 x FP8 torch GEMM path
(kernels/triton/fp8_scaled_mm.py, dispatched by kernels/triton/fp8_table.use_scaled_mm).

CPU: the act_quant kernel under the interpreter against its twin (codes and scales bit-equal, both scale
layouts, rows that are not a tile multiple, all-zero blocks), the twin's fake-quantization identity, the
dispatch table, the input checks. GPU (`-m gpu`): scaled_linear against the act_quant twin at V4-Flash shapes,
row counts that are not a multiple of the GEMM's 4-row groups included, and kernels.linear taking it."""

from __future__ import annotations

import os
import types

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

from kernels.ref import quant as ref_quant  # noqa: E402
from tests.kernels.interp_util import interp_modules  # noqa: E402


@pytest.mark.parametrize("pad_to", [1, 4])
@pytest.mark.parametrize("m,dtype", [(1, torch.float32), (21, torch.bfloat16)])
def test_act_quant_interp(m, dtype, pad_to):
    if torch.cuda.is_available():
        pytest.skip("the GPU test covers the compiled kernel")
    (aq,) = interp_modules("act_quant")
    g = torch.Generator().manual_seed(m)
    x = (torch.randn(m, 384, generator=g) * torch.logspace(-3, 3, 384)).to(dtype)
    x[0, 128:256] = 0  # an all-zero block: amax floored at 1e-4
    q, s = aq.act_quant(x, pad_to=pad_to)
    mp = -(-m // pad_to) * pad_to
    q0, s0 = ref_quant.act_quant_codes(torch.cat([x, x.new_zeros(mp - m, 384)]))
    assert q.dtype == torch.float8_e4m3fn and s.shape == (mp, 3) and s.dtype == torch.float32
    assert s.stride() == (1, mp)  # M-major
    assert torch.equal(s, s0)
    assert torch.equal(q.view(torch.uint8), q0.view(torch.uint8))
    qt, st = ref_quant.act_quant(x, pad_to=pad_to)  # the twin pads the same way
    assert torch.equal(st, s) and torch.equal(qt.view(torch.uint8), q.view(torch.uint8))
    assert st.t().is_contiguous()


def test_act_quant_twin_identity_and_checks():
    x = torch.randn(3, 256) * 50
    q, s = ref_quant.act_quant_codes(x)
    fake = ref_quant.act_quant_fp8(x)
    assert torch.equal((q.float().unflatten(-1, (2, 128)) * s[..., None]).flatten(-2), fake)
    assert torch.all(torch.log2(s) == torch.round(torch.log2(s)))  # UE8M0: powers of two
    assert ((fake - x).abs() <= x.abs() * 2 ** -3 + 1e-6).all()
    from kernels.triton import act_quant
    with pytest.raises(ValueError, match="multiple of 128"):
        act_quant.act_quant(torch.zeros(2, 100))
    for impl in (act_quant.act_quant, ref_quant.act_quant):
        with pytest.raises(ValueError, match="pad_to"):
            impl(torch.zeros(2, 128), pad_to=0)


def test_scaled_mm_dispatch_table(monkeypatch):
    import kernels.triton.fp8_table as ft
    monkeypatch.setattr(ft, "_ENV_MIN_M", 0)

    def rows(m, device="cuda"):  # the fields the rule reads, standing for rows without needing a GPU
        return types.SimpleNamespace(is_cuda=device == "cuda", shape=(m, 4096), device=None)
    assert not ft.use_scaled_mm(rows(1 << 20), 3072, 4096)  # a shape the table does not list keeps the block linear
    monkeypatch.setitem(ft.SCALED_MM_MIN_M, (1024, 4096), 512)
    assert ft.use_scaled_mm(rows(512), 1024, 4096) and not ft.use_scaled_mm(rows(511), 1024, 4096)
    assert not ft.use_scaled_mm(rows(512, "cpu"), 1024, 4096)  # a CUDA op: never for CPU (interpreter) rows
    monkeypatch.setattr(ft, "_ENV_ACT_MIN_M", 0)
    assert not ft.use_act_fp8(rows(256), 3072, 4096)  # the block linear's FP8 x FP8 mode: only listed shapes
    monkeypatch.setitem(ft.ACT_FP8_MIN_M, (3072, 4096), 128)
    assert ft.use_act_fp8(rows(128), 3072, 4096) and not ft.use_act_fp8(rows(127), 3072, 4096)
    assert not ft.use_act_fp8(rows(128, "cpu"), 3072, 4096)
    for cap in ((8, 0), (10, 0)):  # measured on sm_90 only: other GPUs keep the bf16-activation block linear
        monkeypatch.setattr(ft, "capability", lambda device=None, cap=cap: cap)
        assert not ft.use_scaled_mm(rows(512), 1024, 4096) and not ft.use_act_fp8(rows(128), 3072, 4096)
    monkeypatch.setattr(ft, "capability", lambda device=None: (9, 0))
    monkeypatch.setattr(ft, "_ENV_MIN_M", 64)  # the experiment switch overrides the table for every shape
    assert ft.use_scaled_mm(rows(64), 3072, 4096) and not ft.use_scaled_mm(rows(63), 1024, 4096)
    monkeypatch.setattr(ft, "_ENV_MIN_M", 128)  # the experiment switch: every shape from 128 rows
    assert ft.use_scaled_mm(rows(128), 2048, 4096) and not ft.use_scaled_mm(rows(127), 1024, 4096)


def _fp8_weight(n, k, g):
    from kernels.quant_weight import QuantWeight
    w = (torch.randn(n, k, device="cuda", generator=g) * 100).clamp(-448, 448).to(torch.float8_e4m3fn)
    s = torch.randint(117, 121, (n // 128, k // 128), device="cuda", generator=g, dtype=torch.uint8)
    return QuantWeight(w, s, "fp8")


@pytest.mark.gpu
@pytest.mark.parametrize("m,n,k", [(1, 1024, 4096), (3, 512, 4096), (101, 4096, 8192), (256, 32768, 1024),
                                   (4094, 2048, 4096)])
def test_scaled_linear_gpu(m, n, k):
    """act_quant + torch._scaled_mm (blockwise 1x128 / 128x128) against the act_quant twin."""
    from kernels.ref.fp8_linear import fp8_linear as ref
    from kernels.triton.act_quant import act_quant
    from kernels.triton.fp8_scaled_mm import scaled_linear
    g = torch.Generator(device="cuda").manual_seed(m + n)
    x = torch.randn(m, k, device="cuda", generator=g).bfloat16()
    w = _fp8_weight(n, k, g)
    q, s = act_quant(x)
    q0, s0 = ref_quant.act_quant_codes(x)
    assert torch.equal(s, s0) and torch.equal(q.view(torch.uint8), q0.view(torch.uint8))
    y = scaled_linear(x, w)
    want = ref(x, w.data, w.scale, act_quant=True)
    assert y.dtype == torch.bfloat16 and y.shape == (m, n)
    assert ((y.float() - want.float()).norm() / want.float().norm()).item() < 1e-2


@pytest.mark.gpu
def test_linear_takes_scaled_mm_when_listed_gpu(monkeypatch):
    import kernels
    import kernels.triton.fp8_table as ft
    from kernels.ref.fp8_linear import fp8_linear as ref
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(2, 300, 4096, device="cuda", generator=g).bfloat16()
    w = _fp8_weight(1024, 4096, g)
    monkeypatch.setitem(ft.SCALED_MM_MIN_M, (1024, 4096), 512)
    y = kernels.linear(x, w)
    want = ref(x, w.data, w.scale, act_quant=True)
    assert y.shape == (2, 300, 1024)
    assert ((y.float() - want.float()).norm() / want.float().norm()).item() < 1e-2



def test_weight_scales_cached_on_the_scale_tensor():
    """The fp32 weight scales are converted once per scale tensor (QuantWeight handles are made per call), again
    after an in-place update."""
    from kernels.quant_weight import QuantWeight
    from kernels.triton.fp8_scaled_mm import weight_scales_t
    w = torch.zeros(256, 384, dtype=torch.float8_e4m3fn)
    sc = torch.tensor([[127, 128, 126], [120, 127, 130]], dtype=torch.uint8)
    a = weight_scales_t(QuantWeight(w, sc, "fp8"))
    assert a.shape == (3, 2) and torch.equal(a, torch.exp2(sc.float() - 127).t())
    assert weight_scales_t(QuantWeight(w, sc, "fp8")) is a  # a new handle, the same cached tensor
    sc.add_(1)
    b = weight_scales_t(QuantWeight(w, sc, "fp8"))
    assert b is not a and torch.equal(b, 2 * a)


@pytest.mark.gpu
@pytest.mark.parametrize("m", [3, 300])
def test_scaled_glue_gpu(m):
    """The glue ops' scaled variants (norm pass + GEMM, per-group GEMMs, two GEMMs + SwiGLU) against the twins
    with act_quant numerics, and the glue entry points taking them when the table lists the shape."""
    import kernels.triton.fp8_table as ft
    import kernels.triton.linear_glue as lg
    from kernels.ref.fp8_linear import fp8_linear as ref
    from kernels.ref.norm import rms_norm, swiglu
    from kernels.triton import fp8_scaled_mm as sm
    g = torch.Generator(device="cuda").manual_seed(m)

    def rel(a, b):
        return ((a.float() - b.float()).norm() / b.float().norm()).item()
    x = torch.randn(m, 1024, device="cuda", generator=g).bfloat16()
    nw = torch.rand(1024, device="cuda", generator=g).bfloat16() + 0.5
    w = _fp8_weight(4096, 1024, g)
    want = ref(rms_norm(x, nw, 1e-6), w.data, w.scale, act_quant=True)
    assert rel(sm.scaled_norm_linear(x, nw, 1e-6, w), want) < 1e-2
    xg = torch.randn(m, 8, 4096, device="cuda", generator=g).bfloat16()
    w = _fp8_weight(8192, 4096, g)
    want = torch.stack([ref(xg[:, j], w.data[j * 1024:(j + 1) * 1024], w.scale[j * 8:(j + 1) * 8], act_quant=True)
                        for j in range(8)], dim=1)
    assert rel(sm.scaled_grouped_linear(xg, w, 8), want) < 1e-2
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(ft.SCALED_MM_MIN_M, (8192, 4096), 1)
        assert rel(lg.grouped_linear(xg, w, 8), want) < 1e-2
    x = torch.randn(m, 4096, device="cuda", generator=g).bfloat16() * 0.01
    w1, w3 = _fp8_weight(2048, 4096, g), _fp8_weight(2048, 4096, g)
    want = swiglu(ref(x, w1.data, w1.scale, act_quant=True), ref(x, w3.data, w3.scale, act_quant=True), 10.0,
                  x.dtype)
    assert rel(sm.scaled_swiglu_linear(x, w1, w3, 10.0), want) < 2e-2
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(ft.SCALED_MM_MIN_M, (2048, 4096), 1)
        assert rel(lg.swiglu_linear(x, w1, w3, 10.0), want) < 2e-2


def _quant_weight_cpu(n, k, g):
    from kernels.quant_weight import QuantWeight
    w = (torch.randn(n, k, generator=g) * 100).clamp(-448, 448).to(torch.float8_e4m3fn)
    return QuantWeight(w, torch.randint(117, 121, (n // 128, k // 128), generator=g, dtype=torch.uint8), "fp8")


def test_block_linear_act_fp8_grouped_and_dual_interp():
    """The block linear's FP8 x FP8 mode (ACT_FP8) on the grouped and the dual SwiGLU launches that
    fp8_table.ACT_FP8_MIN_M can route to it, against the act_quant twins."""
    if torch.cuda.is_available():
        pytest.skip("the GPU test covers the compiled kernel")
    (fl,) = interp_modules("fp8_linear")
    from kernels.ref.fp8_linear import fp8_linear as ref
    from kernels.ref.norm import swiglu
    g = torch.Generator().manual_seed(7)

    def rel(a, b):
        return ((a.float() - b.float()).norm() / b.float().norm()).item()
    m, k, r, groups = 5, 256, 128, 2
    x = torch.randn(m, groups, k, generator=g).bfloat16()
    w = _quant_weight_cpu(groups * r, k, g)
    y = torch.empty(m, groups * r, dtype=torch.bfloat16)
    fl.launch(x.view(m, -1), w, y, groups=groups, x_gs=k, w_gs=r, y_gs=r, act_quant=True)
    want = torch.cat([ref(x[:, j], w.data[j * r:(j + 1) * r], w.scale[j:j + 1], act_quant=True)
                      for j in range(groups)], dim=1)
    assert rel(y, want) < 1e-2
    x = torch.randn(m, k, generator=g).bfloat16() * 0.01
    w1, w3 = _quant_weight_cpu(r, k, g), _quant_weight_cpu(r, k, g)
    y = torch.empty(m, r, dtype=torch.bfloat16)
    fl.launch(x, w1, y, w2=w3, epi=1, round_out=True, limit=10.0, act_quant=True)
    want = swiglu(ref(x, w1.data, w1.scale, act_quant=True), ref(x, w3.data, w3.scale, act_quant=True), 10.0,
                  x.dtype)
    assert rel(y, want) < 2e-2


@pytest.mark.gpu
@pytest.mark.parametrize("m", [3, 200])
def test_glue_takes_block_linear_act_fp8_when_listed_gpu(m, monkeypatch):
    """linear / grouped_linear / swiglu_linear route rows listed in ACT_FP8_MIN_M (and not in the scaled table)
    to the block linear's FP8 x FP8 mode: act_quant numerics."""
    import kernels.triton.fp8_table as ft
    import kernels.triton.linear_glue as lg
    from kernels.ref.fp8_linear import fp8_linear as ref
    from kernels.ref.norm import swiglu
    monkeypatch.setattr(ft, "SCALED_MM_MIN_M", {})
    monkeypatch.setattr(ft, "ACT_FP8_MIN_M", {(1024, 4096): 1, (8192, 4096): 1, (2048, 4096): 1})
    g = torch.Generator(device="cuda").manual_seed(m)

    def rel(a, b):
        return ((a.float() - b.float()).norm() / b.float().norm()).item()
    x = torch.randn(m, 4096, device="cuda", generator=g).bfloat16()
    w = _fp8_weight(1024, 4096, g)
    assert rel(lg.linear(x, w), ref(x, w.data, w.scale, act_quant=True)) < 1e-2
    xg = torch.randn(m, 8, 4096, device="cuda", generator=g).bfloat16()
    w = _fp8_weight(8192, 4096, g)
    want = torch.stack([ref(xg[:, j], w.data[j * 1024:(j + 1) * 1024], w.scale[j * 8:(j + 1) * 8], act_quant=True)
                        for j in range(8)], dim=1)
    assert rel(lg.grouped_linear(xg, w, 8), want) < 1e-2
    x = x * 0.01
    w1, w3 = _fp8_weight(2048, 4096, g), _fp8_weight(2048, 4096, g)
    want = swiglu(ref(x, w1.data, w1.scale, act_quant=True), ref(x, w3.data, w3.scale, act_quant=True), 10.0,
                  x.dtype)
    assert rel(lg.swiglu_linear(x, w1, w3, 10.0), want) < 2e-2
