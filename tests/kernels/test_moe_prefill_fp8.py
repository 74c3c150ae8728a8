"""FP8 operands for the MoE prefill (kernels/triton/moe_prefill_fp8.py): the E4M3 expert copy times its row
scale equals the MXFP4 codec's value wherever a group is within 2^14 of its row's largest (and rounds on the
E4M3 grid below that); row-quantized activations equal torch's own E4M3 cast; the whole path stays within
FP8-activation error of the bf16 twin, and equals a torch emulation of the same operands closely
(interpreter on CPU: tiny shapes; GPU: V4-Flash widths through torch._scaled_grouped_mm)."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

from kernels.codecs import dequant_mxfp4  # noqa: E402
from kernels.quant_weight import QuantWeight  # noqa: E402
from kernels.ref import moe as ref  # noqa: E402
from kernels.ref import routing as ref_routing  # noqa: E402
from tests.kernels.interp_util import interp_modules  # noqa: E402


def _rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm().clamp(min=1e-12)).item()


def _weights(dev, e, n, k, lo=118, hi=123, seed=0):
    g = torch.Generator(device=dev).manual_seed(seed)
    data = torch.randint(-128, 128, (e, n, k // 2), device=dev, generator=g, dtype=torch.int8)
    sc = torch.randint(lo, hi, (e, n, k // 32), device=dev, generator=g, dtype=torch.uint8)
    return QuantWeight(data, sc, "fp4")


def _e4m3(v: torch.Tensor) -> torch.Tensor:
    return v.float().to(torch.float8_e4m3fn).float()


def _modules():
    return interp_modules("moe_prefill_fp8", "moe_prefill") if not torch.cuda.is_available() else [
        __import__("kernels.triton.moe_prefill_fp8", fromlist=["x"]), __import__("kernels.triton.moe_prefill",
                                                                                  fromlist=["x"])]


@pytest.mark.parametrize("dev", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_dequant_e4m3_normal_tiles_bit_exact(dev):
    """Scale bytes within 5 of their row's largest: every tile takes the all-normal branch; the bytes equal
    torch's own E4M3 cast of the codec's values divided by the row scale (signed zeros included)."""
    if (dev == "cuda") != torch.cuda.is_available():
        pytest.skip("interpreter on CPU, the real cast on the GPU")
    fp8, _ = _modules()
    w = _weights(dev, 2, 8, 256, lo=119, hi=124)
    codes, rs = fp8.dequant_mxfp4_e4m3(w)
    want = (dequant_mxfp4(w.data, w.scale, dtype=torch.float32) / rs[..., None]).to(torch.float8_e4m3fn)
    assert codes.dtype == torch.float8_e4m3fn
    assert torch.equal(codes.view(torch.uint8), want.view(torch.uint8))
    other, _ = fp8.dequant_mxfp4_e4m3(w, (2, 16, 2))  # a bench sweep's tile: the same bytes
    assert torch.equal(other.view(torch.uint8), codes.view(torch.uint8))
    with pytest.raises(ValueError, match="whole 1x32 groups"):
        fp8.dequant_mxfp4_e4m3(w, (2, 6, 2))


@pytest.mark.parametrize("dev", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_dequant_e4m3_exact_within_range_and_rounded_below(dev):
    if (dev == "cuda") != torch.cuda.is_available():
        pytest.skip("interpreter on CPU, the real cast on the GPU")
    fp8, _ = _modules()
    w = _weights(dev, 3, 8, 128, lo=110, hi=125)
    sc = w.scale.clone()
    sc[0, 0, :] = 124
    sc[0, 0, 1] = 124 - 11  # the lowest group whose values are all normal in E4M3 (the fast tiles)
    sc[0, 0, 2] = 124 - 14  # the lowest exact group: 0.5 x 2^(S - M + 6) = 2^-9, E4M3's subnormal step
    sc[0, 1, :] = 124
    sc[0, 1, 2] = 124 - 15  # below E4M3's exact range: rounded on its subnormal grid
    sc[1, 2, :] = 0  # a row of zero scale bytes
    w = QuantWeight(w.data, sc, "fp4")
    codes, rs = fp8.dequant_mxfp4_e4m3(w)
    assert codes.shape == (3, 8, 128) and rs.shape == (3, 8) and rs.dtype == torch.float32
    got = codes.float() * rs[..., None]
    want = dequant_mxfp4(w.data, w.scale, dtype=torch.float32)
    assert codes.float().abs().max() <= 384
    # the bytes are torch's E4M3 cast (round to nearest even, subnormals included) of value / row scale
    cast = (want / rs[..., None]).to(torch.float8_e4m3fn)
    assert torch.equal(codes.view(torch.uint8), cast.view(torch.uint8))
    mx = sc.amax(-1).int()
    in_range = (sc.int() - mx[..., None] >= -14).repeat_interleave(32, dim=-1)
    assert torch.equal(got[in_range], want[in_range])
    low = ~in_range
    assert low.any() and not torch.equal(got[low], want[low])  # the 2^-15 group does round
    # rounded to the grid spacing of E4M3's subnormals (2^-9 in code units) times the row scale
    assert ((got[low] - want[low]).abs() <= (2.0 ** -10) * rs[..., None].expand_as(got)[low] + 1e-30).all()


@pytest.mark.parametrize("gather", [False, True])
def test_row_quant_matches_torch_cast(gather):
    if torch.cuda.is_available():
        pytest.skip("interpreter test (the GPU case runs in the path test)")
    fp8, _ = _modules()
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(9, 200, generator=g) * torch.logspace(-3, 2, 9)[:, None]).bfloat16()
    x[4] = 0
    tok = torch.tensor([8, 0, 0, 4, 3, 7], dtype=torch.int32) if gather else None
    codes, s = fp8.row_quant(x, tok)
    rows = x.float()[tok.long()] if gather else x.float()
    want_s = rows.abs().amax(-1).clamp(min=1e-4) / 448.0
    assert torch.allclose(s, want_s, rtol=1e-6, atol=0)
    assert torch.equal(codes.float(), _e4m3(rows / s[:, None]))
    assert codes.float().abs().max() <= 448


def _route(dev, n, e, k, mode, seed=1):
    g = torch.Generator(device=dev).manual_seed(seed)
    logits = torch.randn(n, e, device=dev, generator=g)
    if mode == "skewed":
        logits += torch.linspace(3.0, -3.0, e, device=dev)
    elif mode == "empty":
        logits[:, e // 3:] = -30.0
    return ref_routing.moe_route(logits, k, 1.5)


def _emulated(x, ws, weights, ids, limit, fp8):
    """Torch: the same E4M3 operands and row scales, products in fp32, h rounded to bf16 like the kernels."""
    n, k = ids.shape
    out = torch.zeros(n, x.shape[1], dtype=torch.float32, device=x.device)
    deq = [fp8.dequant_mxfp4_e4m3(w) for w in ws]
    wf = [c.float() * r[..., None] for c, r in deq]
    xq, xs = fp8.row_quant(x)
    xa = xq.float() * xs[:, None]
    for t in range(n):
        for j in range(k):
            e = int(ids[t, j])
            gt = (xa[t] @ wf[0][e].t()).bfloat16().float().clamp(max=limit)
            up = (xa[t] @ wf[1][e].t()).bfloat16().float().clamp(-limit, limit)
            h = (gt / (1 + torch.exp(-gt)) * up * weights[t, j].float()).bfloat16()
            hq, hs = fp8.row_quant(h[None])
            out[t] += ((hq.float() * hs[:, None])[0] @ wf[2][e].t()).bfloat16().float()
    return out


@pytest.mark.parametrize("n,mode", [(1, "uniform"), (9, "uniform"), (12, "skewed")])
def test_fp8_path_interp(n, mode):
    if torch.cuda.is_available():
        pytest.skip("interpreter test")
    fp8, tp = _modules()
    e, k, d, inter = 8, 3, 128, 64
    ws = [_weights("cpu", e, r, c, seed=s) for s, (r, c) in enumerate(((inter, d), (inter, d), (d, inter)))]
    weights, ids = _route("cpu", n, e, k, mode)
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(5)).bfloat16()
    got = tp.moe_experts_grouped(x, *ws, weights, ids, 10.0, fp8_operands=True)
    assert got.dtype == torch.float32 and got.shape == (n, d)
    assert _rel(got, _emulated(x, ws, weights, ids, 10.0, fp8)) < 2e-3
    twin = ref.moe_experts(x, *ws, weights, ids, 10.0)
    err = _rel(got, twin)
    assert 1e-3 < err < 6e-2, err  # FP8 activations: a real, bounded change against the bf16 twin
    with pytest.raises(ValueError, match="MXFP4 experts and bf16 activations"):
        tp.moe_experts_grouped(x, *ws, weights, ids, 10.0, act_quant=True, fp8_operands=True)


def test_switch_takes_the_measured_gpu_class_only(monkeypatch):
    """`auto` (the default) takes the FP8 operands on CUDA devices of fp8_table.MEASURED_CAPABILITY only; `1` on
    any CUDA device, `0` never; CPU tensors and act_quant always keep the bf16 path."""
    from types import SimpleNamespace
    fp8, _ = _modules()
    if "V4_MOE_PREFILL_FP8" not in os.environ:
        assert fp8.SWITCH == "auto"
    if not hasattr(torch, "_scaled_grouped_mm"):
        monkeypatch.setattr(torch, "_scaled_grouped_mm", object(), raising=False)
    cap = {"v": (9, 0)}
    monkeypatch.setattr(fp8, "capability", lambda device: cap["v"])
    x = SimpleNamespace(is_cuda=True, device=torch.device("cuda", 0))
    cpu = torch.zeros(1, 8, dtype=torch.bfloat16)
    for switch, on_h200, on_other in (("auto", True, False), ("1", True, True), ("0", False, False)):
        monkeypatch.setattr(fp8, "SWITCH", switch)
        cap["v"] = (9, 0)
        assert fp8.available(x, False) == on_h200, switch
        assert not fp8.available(x, True)  # act_quant keeps the bf16 path
        assert not fp8.available(cpu, False)
        cap["v"] = (8, 0)
        assert fp8.available(x, False) == on_other, switch


def test_grouped_threshold_follows_the_operands(monkeypatch):
    """With FP8 operands the grouped path starts at 96 pairs per expert (measured: 4,096 tokens x top-6 over 256
    experts), with bf16 operands at 192; the room check counts the E4M3 stack at one byte an element."""
    from types import SimpleNamespace
    fp8, tp = _modules()
    monkeypatch.setattr(tp, "interpreting", lambda: False)
    monkeypatch.setattr(tp, "allocatable_bytes", lambda device: 100 << 30)
    if not hasattr(torch, "_grouped_mm"):
        monkeypatch.setattr(torch, "_grouped_mm", object(), raising=False)
    x = SimpleNamespace(is_cuda=True, dtype=torch.bfloat16, shape=(4096, 4096), device=torch.device("cuda", 0))
    w1 = SimpleNamespace(fmt="fp4", shape=(256, 2048, 4096))
    for fp8_on, want in ((True, True), (False, False)):
        monkeypatch.setattr(fp8, "available", lambda x, act_quant, on=fp8_on: on)
        assert tp.use_grouped(x, w1, SimpleNamespace(shape=(4096, 6))) == want
        assert not tp.use_grouped(x, w1, SimpleNamespace(shape=(4095, 6)))
        assert tp.use_grouped(x, w1, SimpleNamespace(shape=(8192, 6)))
    assert tp.transient_bytes(8192, 6, 4096, 2048, 256, 1) == tp.transient_bytes(8192, 6, 4096, 2048, 256) - (
        256 * 2048 * 4096)


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["uniform", "skewed", "empty"])
def test_fp8_path_gpu(mode):
    fp8, tp = _modules()
    e, k, d, inter, n = 32, 6, 4096, 2048, 1024  # 192 pairs per expert
    ws = [_weights("cuda", e, r, c, seed=s) for s, (r, c) in enumerate(((inter, d), (inter, d), (d, inter)))]
    weights, ids = _route("cuda", n, e, k, mode)
    x = torch.randn(n, d, device="cuda", generator=torch.Generator(device="cuda").manual_seed(5)).bfloat16()
    got = tp.moe_experts_grouped(x, *ws, weights, ids, 10.0, fp8_operands=True)
    bf16 = tp.moe_experts_grouped(x, *ws, weights, ids, 10.0, fp8_operands=False)
    assert torch.isfinite(got).all()
    err = _rel(got, bf16)
    assert err < 6e-2, err
    sub = torch.arange(0, n, 97, device="cuda")  # the emulation loops over tokens: a subset
    emu = _emulated(x[sub], ws, weights[sub], ids[sub], 10.0, fp8)
    # h is rounded to bf16 and then to E4M3 (3 mantissa bits): the GEMMs' fp32 summation order (cuBLAS vs torch)
    # flips some roundings, as test_moe_interp's GPU bound for FP8 activations (1.5e-2) allows; measured 5.9e-3
    assert _rel(got[sub], emu) < 1.5e-2
