"""Fused MoE (routed experts, clamped SwiGLU, combine) with bf16 / FP8 128x128 / MXFP4 expert weights:
Triton vs the torch twin kernels.ref.moe.

CPU: TRITON_INTERPRET=1 set in os.environ at import (collection) time when no GPU is present; the
Triton modules are imported lazily by kernels/ and reloaded by `interp_util.interp_modules` if they were jitted
without the interpreter (see tests/kernels/test_routing.py). GPU (`-m gpu`): V4-Flash shapes
(hidden 4096, 256 experts, top-6, intermediate 2048), uniform / skewed / empty-expert routing,
batch 1..4096; engine logits with resident FP8/MXFP4 weights vs the dequantized path.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

from kernels.quant_weight import QuantWeight  # noqa: E402
from kernels.ref import moe as ref  # noqa: E402
from kernels.ref import routing as ref_routing  # noqa: E402
from tests.kernels.interp_util import interp_modules  # noqa: E402
from tests.kernels.kernel_cases import tiny_moe  # noqa: E402


def _quant(w: torch.Tensor, fmt: str):
    """Float stack [E, N, K] -> QuantWeight via the checkpoint codecs (CPU)."""
    from kernels.codecs import pack_mxfp4, quant_fp8_block
    if fmt == "bf16":
        return w
    f = quant_fp8_block if fmt == "fp8" else pack_mxfp4
    data, scale = zip(*[f(x) for x in w])
    return QuantWeight(torch.stack(data), torch.stack(scale), fmt)


def _rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm().clamp(min=1e-12)).item()


@pytest.mark.parametrize("fmt", ["bf16", "fp8", "fp4", "fp4-split", "fp8-act8", "fp4-act8", "bf16-act8"])
@pytest.mark.parametrize("n,skew", [(1, False), (6, False), (9, True)])
def test_moe_interp(fmt, n, skew):
    (tri,) = interp_modules("moe")
    d = 64
    x, (w1, w3, w2), weights, ids = tiny_moe(n, d, 32, "skewed" if skew else "uniform")
    fmt, _, mode = fmt.partition("-")
    act8 = mode == "act8"
    mode = "" if act8 else mode
    q1, q3, q2 = (_quant(w, fmt) for w in (w1, w3, w2))
    out_ref = ref.moe_experts(x, q1, q3, q2, weights, ids, 1.0, act_quant=act8)
    out = tri.moe_experts(x, q1, q3, q2, weights, ids, 1.0, fp4_mode=mode or "interleave", act_quant=act8)
    if act8:  # the FP8 rounding of the activations must really happen (vs the unquantized result)
        plain = ref.moe_experts(x, q1, q3, q2, weights, ids, 1.0)
        assert _rel(out_ref, plain) > 1e-4
    assert out.shape == (n, d) and out.dtype == torch.float32
    torch.testing.assert_close(out, out_ref, rtol=1e-4, atol=1e-5)


def test_moe_resident_twin_cpu(tmp_path):
    """Resident quantized weights (kernels' QuantWeight path, twins on CPU) == dequantize-at-load."""
    from models.config import tiny_config
    from models.loading import load_model
    from models.synthetic import write_synthetic_checkpoint

    write_synthetic_checkpoint(tiny_config(), tmp_path, seed=0, quantize=True)
    m0 = load_model(tmp_path, "cpu", torch.float32)
    m1 = load_model(tmp_path, "cpu", torch.float32, resident_quant=True)
    assert m1.layers[1].ffn.expert_fmt in ("fp4", "fp8") and m1.layers[0].attn.wq_a.weight.dtype == torch.float8_e4m3fn
    ids = torch.arange(12) * 37 % 512
    torch.testing.assert_close(m1.logits(ids), m0.logits(ids), rtol=1e-5, atol=1e-5)


# ---- GPU: V4-Flash shapes -----------------------------------------------------------------------
D, E, K, I = 4096, 256, 6, 2048


def _rand_experts(fmt: str, seed: int = 0):
    """Random V4-Flash expert stacks in `fmt`, generated on the GPU (valid codes, realistic scales)."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    out = []
    for n, kdim in ((I, D), (I, D), (D, I)):
        if fmt == "bf16":
            out.append((torch.randn(E, n, kdim, device="cuda", generator=g) * 0.02).bfloat16())
        elif fmt == "fp8":
            data = (torch.randn(E, n, kdim, device="cuda", generator=g) * 100).clamp(-448, 448).to(torch.float8_e4m3fn)
            sc = torch.randint(117, 121, (E, n // 128, kdim // 128), device="cuda", generator=g, dtype=torch.uint8)
            out.append(QuantWeight(data, sc, "fp8"))
        else:
            data = torch.randint(-128, 128, (E, n, kdim // 2), device="cuda", generator=g, dtype=torch.int8)
            sc = torch.randint(118, 123, (E, n, kdim // 32), device="cuda", generator=g, dtype=torch.uint8)
            out.append(QuantWeight(data, sc, "fp4"))
    return out


def _routing(n: int, mode: str, seed: int):
    g = torch.Generator(device="cuda").manual_seed(seed)
    logits = torch.randn(n, E, device="cuda", generator=g)
    if mode == "skewed":  # Zipf-like expert popularity
        logits += torch.linspace(3.0, -3.0, E, device="cuda")
    elif mode == "empty":  # only 16 experts ever chosen
        logits[:, 16:] = -30.0
    return ref_routing.moe_route(logits, K, 1.5)


@pytest.mark.gpu
@pytest.mark.parametrize("fmt", ["fp4", "fp4-interleave_asm", "fp4-split", "fp8", "bf16", "fp8-act8", "fp4-act8"])
@pytest.mark.parametrize("mode", ["uniform", "skewed", "empty"])
@pytest.mark.parametrize("n", [1, 4, 64, 333, 4096])
def test_moe_gpu(fmt, mode, n):
    import kernels.triton.moe as tri
    fmt, _, fp4_mode = fmt.partition("-")
    act8 = fp4_mode == "act8"
    fp4_mode = "" if act8 else fp4_mode
    if (fmt != "fp4" or fp4_mode or act8) and n in (4, 333):
        pytest.skip("batch sweep runs on the shipped MXFP4 format / default kernel only")
    key = (fmt,)
    if _CACHE.get("key") != key:
        _CACHE.clear()
        _CACHE.update(key=key, w=_rand_experts(fmt))
    w1, w3, w2 = _CACHE["w"]
    torch.manual_seed(n)
    x = torch.randn(n, D, device="cuda").bfloat16()
    weights, ids = _routing(n, mode, n)
    if mode == "empty":
        assert int(ids.max()) < 16
    out_ref = ref.moe_experts(x, w1, w3, w2, weights, ids, 10.0, act_quant=act8)
    out = tri.moe_experts(x, w1, w3, w2, weights, ids, 10.0, fp4_mode=fp4_mode or "interleave", act_quant=act8)
    torch.cuda.synchronize()
    assert torch.isfinite(out).all()
    assert _rel(out, out_ref) < 1.5e-2, _rel(out, out_ref)


_CACHE: dict = {}


@pytest.mark.gpu
def test_engine_resident_logits_gpu(tmp_path):
    from models.config import tiny_config
    from models.loading import load_model, weight_bytes
    from models.synthetic import write_synthetic_checkpoint

    write_synthetic_checkpoint(tiny_config(), tmp_path, seed=0, quantize=True)
    res = load_model(tmp_path, "cuda", torch.bfloat16)
    deq = load_model(tmp_path, "cuda", torch.bfloat16, resident_quant=False)
    assert res.layers[1].ffn.expert_fmt is not None
    assert weight_bytes(res) < weight_bytes(deq)
    ids = torch.arange(40, device="cuda") * 37 % 512
    a, b = res.logits(ids), deq.logits(ids)
    assert torch.isfinite(a).all()
    assert _rel(a, b) < 3e-2, _rel(a, b)
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() > 0.9


@pytest.mark.gpu
def test_fp4_asm_conversion_exhaustive_gpu():
    """Every MXFP4 byte in every position through the packed PTX conversion == the twin's dequant
    (exact), for scale bytes <= 128 (asm path) and > 128 (fp16-trick fallback)."""
    import kernels.triton.moe as tri
    from kernels.ref.quant import dequant
    n_out, k_in = 256, 64
    rows = torch.arange(n_out)[:, None] * 32 + torch.arange(k_in // 2)[None, :]
    data = (rows % 256).to(torch.uint8).view(torch.int8)[None].cuda()  # each byte value in each column
    for lo_s, hi_s in ((100, 128), (129, 140)):
        sc = torch.randint(lo_s, hi_s + 1, (1, n_out, k_in // 32), dtype=torch.uint8).cuda()
        w = QuantWeight(data, sc, "fp4")
        assert (w.max_scale_byte() <= 128) == (hi_s <= 128)
        ident = torch.eye(k_in, device="cuda").bfloat16()  # token i = e_i -> out[i] = W[:, i]
        ids = torch.zeros(k_in, 1, dtype=torch.int32, device="cuda")
        wts = torch.ones(k_in, device="cuda")
        cfg = dict(BM=16, BN=32, BK=64, GROUP_M=1, num_warps=4, num_stages=2)
        s1, e1, np1 = tri.moe_align(ids, 1, 16)
        out = torch.zeros(k_in, n_out, device="cuda")
        want = dequant(w, torch.float32)[0].T  # [K, N]
        for mode in ("split", "interleave_asm"):
            out.zero_()
            tri._launch(ident, w, None, out, wts, s1, e1, np1, n_out, k_in, k_in, 10.0, 1, 1, False, cfg, mode)
            torch.testing.assert_close(out, want, rtol=0, atol=0)
