"""Fused glue kernels (mHC pre/post/head, RMSNorm + RoPE, grouped / dual-weight / split-K linears)
against their torch twins in the Triton interpreter (tiny shapes, fp32)."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

from kernels import QuantWeight  # noqa: E402
from kernels.ref import linear_glue as ref_lin  # noqa: E402
from kernels.ref import mhc as ref_mhc  # noqa: E402
from kernels.ref import norm as ref_norm  # noqa: E402
from tests.kernels.interp_util import interp_modules  # noqa: E402

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="interpreter tests run on CPU")


def _mhc_inputs(n, hc, d, seed, mix=None):
    g = torch.Generator().manual_seed(seed)
    mix = mix or (2 + hc) * hc
    x = torch.randn(n, hc, d, generator=g)
    fn = torch.randn(mix, hc * d, generator=g) * 0.1
    base = torch.randn(mix, generator=g) * 0.5
    scale = torch.rand(3 if mix > hc else 1, generator=g) + 0.5
    return g, x, fn, base, scale


@pytest.mark.parametrize("n,hc,d", [(1, 4, 32), (5, 4, 48), (3, 2, 64)])
@pytest.mark.parametrize("norm", [False, True])
def test_hc_pre_interp(n, hc, d, norm):
    (tri,) = interp_modules("mhc")
    g, x, fn, base, scale = _mhc_inputs(n, hc, d, n * d + hc)
    w = torch.randn(d, generator=g) if norm else None
    ref = ref_mhc.hc_pre(x, fn, base, scale, hc, 20, 1e-6, 1e-6, w)
    out = tri.hc_pre(x, fn, base, scale, hc, 20, 1e-6, 1e-6, w)
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert out[2].sum(-2).sub(1).abs().max() < 1e-3  # Sinkhorn ran: columns sum to one


@pytest.mark.parametrize("n,hc,d", [(2, 4, 32), (17, 4, 40)])
def test_hc_post_and_post_pre_interp(n, hc, d):
    (tri,) = interp_modules("mhc")
    g, x, fn, base, scale = _mhc_inputs(n, hc, d, 7 * n + d)
    o = torch.randn(n, d, generator=g)
    post = torch.rand(n, hc, generator=g) * 2
    comb = torch.rand(n, hc, hc, generator=g)
    torch.testing.assert_close(tri.hc_post(o, x, post, comb), ref_mhc.hc_post(o, x, post, comb), rtol=1e-5,
                               atol=1e-5)
    w = torch.randn(d, generator=g)
    ref = ref_mhc.hc_post_pre(o, x, post, comb, fn, base, scale, hc, 20, 1e-6, 1e-6, w)
    out = tri.hc_post_pre(o, x, post, comb, fn, base, scale, hc, 20, 1e-6, 1e-6, w)
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("presplit", [False, True])
@pytest.mark.parametrize("post", [False, True])
def test_hc_mix_bf16_split_interp(post, presplit, monkeypatch):
    """bf16 streams take the split-fn path of the mix kernel (fn = three exact bf16 parts, exact products;
    split in the kernel, or once per call by _split_fn_kernel as the prefill tiles do): the projection is
    fp32-accurate, so post/comb match the twin run on the kernel's own X' tightly."""
    tri, pre = interp_modules("mhc", "mhc_prefill")
    monkeypatch.setattr(tri, "PREFILL_ROWS", 1)
    monkeypatch.setattr(pre, "mix_config", lambda n, dtype=None: (16, 16, 4, 1, presplit))
    n, hc, d = 5, 4, 48
    g, x, fn, base, scale = _mhc_inputs(n, hc, d, 5)
    x = x.bfloat16()
    w = torch.randn(d, generator=g)
    if post:
        o = torch.randn(n, d, generator=g).bfloat16()
        p, c = torch.rand(n, hc, generator=g) * 2, torch.rand(n, hc, hc, generator=g)
        xo, u, p1, c1 = tri.hc_post_pre(o, x, p, c, fn, base, scale, hc, 20, 1e-6, 1e-6, w)
        assert xo.dtype == torch.bfloat16
        torch.testing.assert_close(xo.float(), ref_mhc.hc_post(o.float(), x.float(), p, c), rtol=1e-2, atol=1e-2)
    else:
        xo = x
        u, p1, c1 = tri.hc_pre(x, fn, base, scale, hc, 20, 1e-6, 1e-6, w)
    _, part, sq, _ = tri._mix(xo, fn)
    exact = (xo.flatten(1).double() @ fn.double().T)
    torch.testing.assert_close(part.sum(0)[:, :fn.shape[0]].double(), exact, rtol=1e-6, atol=1e-6)
    u0, p0, c0 = ref_mhc.hc_pre(xo, fn, base, scale, hc, 20, 1e-6, 1e-6, w)
    torch.testing.assert_close(p1, p0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(c1, c0, rtol=1e-5, atol=1e-5)
    assert ((u.float() - u0.float()).norm() / u0.float().norm()) < 1e-2


@pytest.mark.parametrize("n,hc,d", [(5, 4, 48), (17, 4, 40), (3, 2, 64)])
def test_hc_prefill_mix_fp32_interp(n, hc, d, monkeypatch):
    """The prefill mix kernel (mhc_prefill.py, taken from PREFILL_ROWS rows on) on fp32 streams (3xTF32
    dots): hc_pre and hc_post_pre equal the twins as the decode kernel does."""
    (tri, _) = interp_modules("mhc", "mhc_prefill")
    monkeypatch.setattr(tri, "PREFILL_ROWS", 1)
    g, x, fn, base, scale = _mhc_inputs(n, hc, d, 3 * n + d)
    w = torch.randn(d, generator=g)
    for a, b in zip(tri.hc_pre(x, fn, base, scale, hc, 20, 1e-6, 1e-6, w),
                    ref_mhc.hc_pre(x, fn, base, scale, hc, 20, 1e-6, 1e-6, w)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    o = torch.randn(n, d, generator=g)
    post, comb = torch.rand(n, hc, generator=g) * 2, torch.rand(n, hc, hc, generator=g)
    for a, b in zip(tri.hc_post_pre(o, x, post, comb, fn, base, scale, hc, 20, 1e-6, 1e-6, w),
                    ref_mhc.hc_post_pre(o, x, post, comb, fn, base, scale, hc, 20, 1e-6, 1e-6, w)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("head", [False, True])
def test_hc_finish_rows_interp(head):
    """The prefill finish kernel (BR rows per program) == the one-row kernel, ragged last program included."""
    (tri, _) = interp_modules("mhc", "mhc_prefill")
    n, hc, d = 5, 4, 48
    g, x, fn, base, scale = _mhc_inputs(n, hc, d, 9, mix=hc if head else None)
    w = torch.randn(d, generator=g)
    _, part, sq, split = tri._mix(x, fn)
    one = tri._finish(x, part, sq, split, base, scale, w, 20, 1e-6, 1e-6, head)
    for br in (2, 4):
        rows = tri._finish(x, part, sq, split, base, scale, w, 20, 1e-6, 1e-6, head, br=br)
        for a, b in zip(rows, one) if not head else zip(rows[:1], one[:1]):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("norm", [False, True])
def test_hc_head_interp(norm):
    (tri,) = interp_modules("mhc")
    g, x, fn, base, scale = _mhc_inputs(3, 4, 32, 11, mix=4)
    w = torch.randn(32, generator=g) if norm else None
    torch.testing.assert_close(tri.hc_head(x, fn, base, scale, 1e-6, 1e-6, w),
                               ref_mhc.hc_head(x, fn, base, scale, 1e-6, 1e-6, w), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("c,r", [(128, 64), (512, 64)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("packed", [False, True])
def test_kv_entries_interp(c, r, dtype, packed):
    """kv_norm + RoPE + the ring's format in one kernel == the two-kernel Triton path (norm_rope, then
    kv_pack) byte for byte; against the twin: dense rows within the dtype's rounding; FP8 rows' bf16 rope
    dims within rounding, their UE8M0 scales equal and their pad bytes written as 0 into an uninitialised
    output."""
    from kernels.kv_format import entry_bytes
    from kernels.ref import attention as ref_attn
    from kernels.ref import kv_fp8
    (tri_attn,) = interp_modules("attention")
    g = torch.Generator().manual_seed(c + r + packed)
    n = 3
    x = (torch.randn(n, c, generator=g) * 3).to(dtype)
    w = torch.randn(c, generator=g)
    ang = torch.randn(n, r // 2, generator=g) * 3
    cos, sin = ang.cos(), ang.sin()
    ring = torch.zeros(2, 4, entry_bytes(c, r), dtype=torch.uint8) if packed else torch.zeros(2, 4, c, dtype=dtype)
    got = tri_attn.kv_entries(x, w, 1e-6, cos, sin, ring, r)
    two = tri_attn.kv_pack(tri_attn.norm_rope(x, w, 1e-6, cos, sin), ring, r)
    twin = ref_attn.kv_entries(x, w, 1e-6, cos, sin, ring, r)
    want = ref_norm.norm_rope(x, w, 1e-6, cos, sin).float()  # the values the twin packs
    assert got.dtype == twin.dtype == ring.dtype and got.shape == twin.shape == (n, ring.shape[-1])
    assert torch.equal(got, two)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    if packed:  # the e4m3 codes are checked on the GPU (test_glue_gpu): the interpreter's fp32 -> e4m3 cast
        # rounds ties away from zero and drops the carry into the exponent (127.2 -> 64)
        vals = kv_fp8.unpack_entry(got, c, r)
        torch.testing.assert_close(vals[:, c - r:], want[:, c - r:], rtol=8e-3, atol=tol)  # bf16 rope dims
        nope, scales = c - r, c - r + 2 * r
        assert torch.equal(got[:, scales:scales + nope // 64], twin[:, scales:scales + nope // 64])
        assert (got[:, scales + nope // 64:] == 0).all() and torch.equal(got[:, scales + nope // 64:],
                                                                        twin[:, scales + nope // 64:])
    else:
        torch.testing.assert_close(got.float(), twin.float(), rtol=tol, atol=tol)


def test_kv_entries_pack_refuses_widths_it_cannot_pack():
    (tri_norm,) = interp_modules("norm")
    x = torch.randn(2, 96)
    with pytest.raises(ValueError, match="power of two"):
        tri_norm.norm_rope_pack(x, None, 1e-6, None, None, 200, 32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("d", [32, 64, 128])  # Kronecker splits 4 x 4, 4 x 8, 8 x 8 of the pair vector
def test_norm_rope_rotate_interp(dtype, d):
    """The indexer's queries for MXFP4 keys: rope, then the Hadamard rotation in the same kernel == the twin
    (rope, then x @ H in fp32, rounded once); the rotation keeps the row's norm."""
    from kernels.ref.kv_fp8 import hadamard
    (tri,) = interp_modules("norm")
    g = torch.Generator().manual_seed(7)
    x = (torch.randn(3, 4, d, generator=g) * 3).to(dtype)
    ang = torch.randn(3, d // 4, generator=g) * 3
    cos, sin = ang.cos(), ang.sin()
    out = tri.norm_rope(x, None, None, cos, sin, rotate=True)
    ref = ref_norm.norm_rope(x, None, None, cos, sin, rotate=True)
    plain = ref_norm.norm_rope(x, None, None, cos, sin)
    assert out.dtype == ref.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    # bf16: a sum in another order may round to the neighbouring bf16 value (one ulp below 8 is 2^-5)
    torch.testing.assert_close(out, ref, rtol=tol, atol=tol if dtype == torch.float32 else 2 ** -5)
    torch.testing.assert_close(ref.float(), (plain.float() @ hadamard(d, "cpu")).to(dtype).float())
    torch.testing.assert_close(out.float().norm(dim=-1), plain.float().norm(dim=-1), rtol=tol, atol=tol)
    with pytest.raises(ValueError, match="power-of-two"):
        tri.norm_rope(torch.randn(2, 96), None, None, None, None, rotate=True)


@pytest.mark.parametrize("shape", [(3, 32), (4, 2, 48)])
@pytest.mark.parametrize("mode", ["norm_w", "rms", "rope", "rms_rope", "norm_rope_inv"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_norm_rope_interp(shape, mode, dtype):
    (tri,) = interp_modules("norm")
    g = torch.Generator().manual_seed(len(shape) + len(mode))
    x = (torch.randn(*shape, generator=g) * 3).to(dtype)
    d = shape[-1]
    w = torch.randn(d, generator=g) if mode.startswith("norm") else None
    eps = None if mode == "rope" else 1e-6
    r2 = 0 if mode in ("norm_w", "rms") else 8
    cos = sin = None
    if r2:
        ang = torch.randn(shape[0], r2, generator=g) * 3
        cos, sin = ang.cos(), ang.sin()
    inv = mode.endswith("inv")
    out_dtype = torch.float32 if mode == "rope" else None
    ref = ref_norm.norm_rope(x, w, eps, cos, sin, inv, out_dtype)
    out = tri.norm_rope(x, w, eps, cos, sin, inv, out_dtype)
    assert out.dtype == ref.dtype
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(out, ref, rtol=tol, atol=tol)
    if r2:
        torch.testing.assert_close(tri.rope(x, cos, sin, inv), ref_norm.rope(x, cos, sin, inv), rtol=tol, atol=tol)
    else:
        torch.testing.assert_close(tri.rms_norm(x, w, 1e-6), ref_norm.rms_norm(x, w, 1e-6), rtol=tol, atol=tol)


def test_add_cast_interp():
    (tri,) = interp_modules("norm")
    a = torch.randn(5, 33)
    b = torch.randn(5, 33).bfloat16()
    torch.testing.assert_close(tri.add_cast(a, b, torch.bfloat16), ref_norm.add_cast(a, b, torch.bfloat16))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_swiglu_interp(dtype):
    """The one-pass SwiGLU against its twin: both clamps engaged, odd sizes, both input dtypes."""
    (tri,) = interp_modules("norm")
    g = torch.Generator().manual_seed(3)
    a = (torch.randn(5, 301, generator=g) * 8).to(dtype)
    b = (torch.randn(5, 301, generator=g) * 8).to(dtype)
    torch.testing.assert_close(tri.swiglu(a, b, 7.0, torch.bfloat16), ref_norm.swiglu(a, b, 7.0, torch.bfloat16),
                               rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(tri.swiglu(a, b, 7.0, torch.float32), ref_norm.swiglu(a, b, 7.0, torch.float32),
                               rtol=1e-5, atol=1e-5)
    for impl in (tri.swiglu, ref_norm.swiglu):
        with pytest.raises(ValueError, match="differ"):
            impl(a, b[:, :3], 7.0, torch.float32)


def _fp8(n, k, g):
    from kernels.codecs import quant_fp8_block
    wq, ws = quant_fp8_block(torch.randn(n, k, generator=g) * 0.05)
    return QuantWeight(wq, ws.view(torch.uint8), "fp8")


@pytest.mark.parametrize("fmt", ["plain", "fp8"])
@pytest.mark.parametrize("m,k", [(1, 256), (6, 384)])
def test_linear_glue_interp(fmt, m, k):
    """Split-K (self-reducing) + group axis + dual-weight epilogues against the twins."""
    (fl, tri) = interp_modules("fp8_linear", "linear_glue")
    g = torch.Generator().manual_seed(m + k)
    x = torch.randn(m, k, generator=g)

    def w(n):
        return _fp8(n, k, g) if fmt == "fp8" else torch.randn(n, k, generator=g) * 0.05

    cfg = dict(BM=16, BN=32, BK=64, GROUP_M=1, num_warps=4, num_stages=1, SPLIT_K=3)
    wl = w(256)
    y = torch.empty(m, 256)
    fl.launch(x, wl, y, config=cfg)  # forced 3-way split: the last split reduces
    torch.testing.assert_close(y, ref_lin.linear(x, wl), rtol=1e-4, atol=1e-4)
    fl.launch(x, wl, y, config=cfg)  # counters were reset: same result again
    torch.testing.assert_close(y, ref_lin.linear(x, wl), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(tri.linear(x, wl, fp32=True), ref_lin.linear(x, wl, fp32=True), rtol=1e-4, atol=1e-4)
    xg = torch.randn(m, 2, k, generator=g)
    torch.testing.assert_close(tri.grouped_linear(xg, wl, 2), ref_lin.grouped_linear(xg, wl, 2), rtol=1e-4,
                               atol=1e-4)
    w1, w3 = w(128), w(128)
    torch.testing.assert_close(tri.swiglu_linear(x * 20, w1, w3, 0.7), ref_lin.swiglu_linear(x * 20, w1, w3, 0.7),
                               rtol=1e-4, atol=1e-4)
    ape = torch.randn(4, 128, generator=g)
    pos = torch.arange(5, 5 + m)
    for a, b in zip(tri.compressor_project(x, w1, w3, ape, pos, 4), ref_lin.compressor_project(x, w1, w3, ape, pos, 4)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(tri.linear_scaled(x, w1, 0.3), ref_lin.linear_scaled(x, w1, 0.3), rtol=1e-4, atol=1e-4)
    xb, wh = x.bfloat16(), (wl if fmt == "fp8" else wl.bfloat16())  # LM head: bf16 logits + cast (the
    lg, lr = tri.logits_linear(xb, wh), ref_lin.logits_linear(xb, wh)  # fp32-output GEMM: test_glue_gpu.py)
    assert lg.dtype == lr.dtype == torch.float32
    torch.testing.assert_close(lg, lr, rtol=2e-2, atol=2e-2)


def test_logits_linear_fp32_out_rule(monkeypatch):
    """The fp32-output LM head GEMM is taken only for CUDA rows on the measured GPU class, from the rows the table
    (or V4SERVE_HEAD_FP32_MIN_M) lists; CPU rows never take it."""
    import kernels.triton.fp8_table as ft
    monkeypatch.setattr(ft, "_ENV_HEAD_MIN_M", 0)
    monkeypatch.setattr(ft, "HEAD_FP32_OUT_MIN_M", {(512, 64): 4})
    rows = torch.zeros(8, 64)
    assert not ft.use_fp32_out_mm(rows, 512, 64)  # CPU tensors
    monkeypatch.setattr(ft, "_on_measured_gpu", lambda r: True)
    assert ft.use_fp32_out_mm(rows, 512, 64) and not ft.use_fp32_out_mm(rows[:3], 512, 64)
    assert not ft.use_fp32_out_mm(rows, 1024, 64)  # shape not listed
    monkeypatch.setattr(ft, "_ENV_HEAD_MIN_M", 2)
    assert ft.use_fp32_out_mm(rows[:2], 1024, 64)


def test_model_glue_interp_matches_twins():
    """The whole model (fp32, tiny) with every glue op on Triton (interpreter) == on the torch twins,
    through a prefill chunk and decode steps (attention ops on the twins in both runs)."""
    import kernels
    from models.config import tiny_config
    from models.state import single_sequence_batch
    from tests.models.oracle import our_model, random_state_dict

    interp_modules("mhc", "norm", "fp8_linear", "linear_glue", "routing", "moe")
    cfg = tiny_config(compress_ratios=(0, 4, 8), index_topk=4)
    model = our_model(cfg, random_state_dict(cfg, seed=3))
    ids = torch.randint(0, cfg.vocab_size, (14,), generator=torch.Generator().manual_seed(4))
    outs = {}
    kernels.set_attention_backend("ref")
    try:
        for backend in ("ref", "triton"):
            kernels.set_backend(backend)
            state = model.new_state(num_slots=1, num_blocks=4, block_size=8)
            table = torch.arange(4)
            chunks = [model.compute_logits(model(single_sequence_batch(ids[a:b], a, table), state))
                      for a, b in ((0, 11), (11, 12), (12, 13), (13, 14))]
            outs[backend] = torch.cat(chunks)
    finally:
        kernels.set_attention_backend(None)
        kernels.set_backend("auto")
    ref, got = outs["ref"], outs["triton"]
    assert ref.abs().max() > 0.1
    assert ((got - ref).norm() / ref.norm()).item() < 1e-4


def test_decode_launch_proxy_interp():
    """CPU proxy of the CUDA launch count (torch ops that launch + Triton launches) of a decode forward
    with every op on its Triton path, CSA + HCA layers: <= 40 per layer and no host-syncing op (.item(),
    .tolist(), nonzero, ...). The real count is test_glue_gpu.test_decode_launches_per_layer."""
    from tests.kernels.glue_cases import proxy_launches
    interp_modules("mhc", "norm", "fp8_linear", "linear_glue", "routing", "moe", "attention", "indexer",
                   "compressor")
    r = proxy_launches()
    print(r)
    assert not r["syncs"], r["syncs"]
    assert r["per_layer"] <= 40
    assert r["full"].get("triton:_finish_kernel", 0) >= 4  # the fused mHC path ran


def test_decode_launch_proxy_fp8_kv_interp():
    """The FP8 KV formats' decode forward launches exactly the kernels dense entries with the same head dims
    launch: their entries are packed inside the kernels that make them (kv_entries, the compressor store),
    and MXFP4 index keys' query rotation runs inside the queries' RoPE kernel (norm_rope(rotate=True))."""
    from tests.kernels.glue_cases import proxy_launches
    interp_modules("mhc", "norm", "fp8_linear", "linear_glue", "routing", "moe", "attention", "indexer",
                   "compressor")
    dense = proxy_launches(wide=True)
    for fmt in ("fp8", "fp8_fp4idx"):
        r = proxy_launches(kv_format=fmt)
        assert not r["syncs"] and r["full"] == dense["full"], (fmt, r["full"], dense["full"])


def test_mixed_step_launch_proxy_interp():
    """A mixed step (decoders + new prompts; eager on the GPU, so each launch is host time in the step) launches
    as many kernels per layer as a decode step, whatever the number of prompts, and never syncs the host. The
    GPU-class paths of long chunks (packed HCA entries, FP8 index scores, the grouped MoE) are outside this
    CPU proxy; `bench.e2e --mixed` times the real step."""
    from tests.kernels.glue_cases import proxy_launches
    interp_modules("mhc", "norm", "fp8_linear", "linear_glue", "routing", "moe", "attention", "indexer",
                   "compressor")
    decode = proxy_launches()
    for prompts in (1, 3):
        r = proxy_launches(prompts=prompts, prompt=10)
        assert not r["syncs"], (prompts, r["syncs"])
        assert r["per_layer"] == decode["per_layer"], (prompts, r["full"], decode["full"])


@pytest.mark.parametrize("m,k,split", [(1, 256, 2), (5, 384, 3), (3, 128, 1)])
def test_norm_linear_interp(m, k, split):
    """RMSNorm as the FP8 GEMM's prologue (every split recomputes the full-row norm) == norm then linear."""
    (fl, tri) = interp_modules("fp8_linear", "linear_glue")
    g = torch.Generator().manual_seed(m * k)
    x = torch.randn(m, k, generator=g) * 3
    nw = torch.randn(k, generator=g)
    w = _fp8(256, k, g)
    ref = ref_lin.norm_linear(x, nw, 1e-6, w)
    torch.testing.assert_close(tri.norm_linear(x, nw, 1e-6, w), ref, rtol=1e-4, atol=1e-4)
    y = torch.empty(m, 256)
    fl.launch(x, w, y, norm_weight=nw, norm_eps=1e-6,
              config=dict(BM=16, BN=32, BK=64, GROUP_M=1, num_warps=4, num_stages=1, SPLIT_K=split))
    torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-4)
    wp = torch.randn(64, k, generator=g) * 0.05  # plain weights: norm kernel + F.linear
    torch.testing.assert_close(tri.norm_linear(x, nw, 1e-6, wp), ref_lin.norm_linear(x, nw, 1e-6, wp), rtol=1e-4,
                               atol=1e-4)


def test_split_fn_cached_per_weight_interp():
    """The mix kernel's bf16 parts of fn are split once per weight: a second call returns the same tensor (no
    launch), an in-place update of fn splits again, and the parts always sum to fn exactly."""
    (pre,) = interp_modules("mhc_prefill")
    g = torch.Generator().manual_seed(3)
    fn = torch.randn(24, 256, generator=g) * 1e-3
    a = pre._split_fn(fn, 32)
    assert pre._split_fn(fn, 32) is a
    assert torch.equal(a.float().sum(0)[:24].double(), fn.double()) and not a[:, 24:].any()
    fn.mul_(3.0)  # bumps the version counter
    b = pre._split_fn(fn, 32)
    assert b is not a and torch.equal(b.float().sum(0)[:24].double(), fn.double())
    assert pre._split_fn(fn, 16 * 4) is not b  # another row padding: its own split
    with torch.inference_mode():  # inference tensors have no version counter: split every call, still exact
        fi = fn.clone()
        c = pre._split_fn(fi, 32)
        assert pre._split_fn(fi, 32) is not c and torch.equal(c.float().sum(0)[:24].double(), fi.double())


def test_derived_refuses_its_first_make_inside_graph_capture(monkeypatch):
    """common.derived made during CUDA-graph capture would cache a tensor whose kernels were only recorded
    (garbage for eager calls until the first replay): it raises instead; a tensor made before capture is
    served from the cache during capture."""
    from kernels.triton import common
    src = torch.ones(4)
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda t: True))  # stands for a CUDA weight on CPU
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    made = common.derived(src, "_test_twice", lambda: src * 2)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    assert common.derived(src, "_test_twice", lambda: src * 3) is made  # cached before capture: no make
    with pytest.raises(RuntimeError, match="inside CUDA-graph capture"):
        common.derived(src, "_test_other", lambda: src * 3)
