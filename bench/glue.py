"""Fused glue ops vs the torch glue they replace, on one GPU at V4-Flash shapes (hidden 4096, hc 4,
64 heads x 512, bf16): `python bench/glue.py [--batches 1,64,256] [--model]`.

Per op and batch: eager wall time (launch overhead included: what an eager decode step pays) and
CUDA-graph replay time (GPU time), old torch glue vs the fused op (`kv_entries_fp8`, `idx_q_rope_rotate`: the
earlier Triton path against its fusion). `--model` also writes a 2-layer
V4-Flash-shaped checkpoint (CSA + HCA, 16 MXFP4 experts) and reports kernel launches per layer and
the decode forward time at each batch. The last stdout line is one JSON object with everything.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.kernels import bench_ms  # noqa: E402

D, HC, MIX = 4096, 4, 24
DEV = "cuda"  # (a CPU smoke run under TRITON_INTERPRET sets "cpu")


def _fp8w(n, k, g):
    from kernels import QuantWeight
    wq = (torch.randn(n, k, device=DEV, generator=g) * 100).clamp(-448, 448).to(torch.float8_e4m3fn)
    return QuantWeight(wq, torch.randint(117, 121, (n // 128, k // 128), device=DEV, generator=g,
                                         dtype=torch.uint8), "fp8")


def _old_wo_a(xo, w, groups):
    """The pre-fusion path: one FP8 linear launch per output group, then a stack."""
    import kernels
    r = w.shape[0] // groups
    rb = r // 128
    return torch.stack([kernels.fp8_linear(xo[:, j], w.data[j * r:(j + 1) * r], w.scale[j * rb:(j + 1) * rb])
                        for j in range(groups)], dim=1)


def op_cases(n: int):
    """name -> (old torch glue, fused op) closures at batch n."""
    import kernels
    import kernels.triton.attention as tattn
    import kernels.triton.linear_glue as tl_lin
    import kernels.triton.mhc as tmhc
    import kernels.triton.norm as tnorm
    from kernels.ref import linear_glue as rlin
    from kernels.ref import mhc as rmhc
    from kernels.ref import norm as rnorm
    from kernels.kv_format import entry_bytes
    from kernels.ref.kv_fp8 import rotate_for_keys

    g = torch.Generator(device=DEV).manual_seed(n)
    x = torch.randn(n, HC, D, device=DEV, generator=g).bfloat16()
    fn = torch.randn(MIX, HC * D, device=DEV, generator=g) * 1e-3
    base = torch.randn(MIX, device=DEV, generator=g) * 0.1
    scale = torch.ones(3, device=DEV)
    w = torch.ones(D, device=DEV, dtype=torch.bfloat16)
    o = torch.randn(n, D, device=DEV, generator=g).bfloat16()
    post = torch.rand(n, HC, device=DEV, generator=g)
    comb = torch.rand(n, HC, HC, device=DEV, generator=g)
    ang = torch.randn(n, 32, device=DEV, generator=g)
    cos, sin = ang.cos(), ang.sin()
    q = torch.randn(n, 64, 512, device=DEV, generator=g).bfloat16()
    kv = torch.randn(n, 512, device=DEV, generator=g).bfloat16()
    w512 = torch.ones(512, device=DEV, dtype=torch.bfloat16)
    xd = torch.randn(n, D, device=DEV, generator=g).bfloat16()
    wo_a = _fp8w(8192, 4096, g)
    xo = torch.randn(n, 8, 4096, device=DEV, generator=g).bfloat16()
    w1, w3 = _fp8w(2048, D, g), _fp8w(2048, D, g)
    wkv = torch.randn(1024, D, device=DEV, generator=g).bfloat16() * 0.02
    wgate = torch.randn(1024, D, device=DEV, generator=g).bfloat16() * 0.02
    ape = torch.randn(4, 1024, device=DEV, generator=g)
    pos = torch.arange(n, device=DEV) + 1000
    gate = torch.randn(256, D, device=DEV, generator=g).bfloat16() * 0.02
    lat = torch.randn(n, 1024, device=DEV, generator=g).bfloat16()
    qn = torch.ones(1024, device=DEV, dtype=torch.bfloat16)
    wq_b = _fp8w(32768, 1024, g)
    y32 = torch.randn(n, D, device=DEV, generator=g)
    qi = torch.randn(n, 64, 128, device=DEV, generator=g).bfloat16()
    ring8 = torch.zeros(1, 128, entry_bytes(512, 64), dtype=torch.uint8, device=DEV)
    it = 20
    fn_h, base_h, scale_h = fn[:HC], base[:HC], scale[:1]  # once: the head's derived weights key on these tensors
    return {
        "hc_pre+norm": (lambda: rmhc.hc_pre(x, fn, base, scale, HC, it, 1e-6, 1e-6, w),
                        lambda: tmhc.hc_pre(x, fn, base, scale, HC, it, 1e-6, 1e-6, w)),
        "hc_post+pre+norm": (lambda: rmhc.hc_post_pre(o, x, post, comb, fn, base, scale, HC, it, 1e-6, 1e-6, w),
                             lambda: tmhc.hc_post_pre(o, x, post, comb, fn, base, scale, HC, it, 1e-6, 1e-6, w)),
        "hc_head+norm": (lambda: rmhc.hc_head(x, fn_h, base_h, scale_h, 1e-6, 1e-6, w),
                         lambda: tmhc.hc_head(x, fn_h, base_h, scale_h, 1e-6, 1e-6, w)),
        "q_rms_rope": (lambda: rnorm.norm_rope(q, None, 1e-6, cos, sin),
                       lambda: tnorm.norm_rope(q, None, 1e-6, cos, sin)),
        "kv_norm_rope": (lambda: rnorm.norm_rope(kv, w512, 1e-6, cos, sin),
                         lambda: tnorm.norm_rope(kv, w512, 1e-6, cos, sin)),
        "inverse_rope": (lambda: rnorm.rope(q, cos, sin, True), lambda: tnorm.rope(q, cos, sin, True)),
        # session 9's Triton paths against their fusions (session 10): FP8 KV rows, indexer q for MXFP4 keys
        "kv_entries_fp8": (lambda: tattn.kv_pack(tnorm.norm_rope(kv, w512, 1e-6, cos, sin), ring8, 64),
                           lambda: tattn.kv_entries(kv, w512, 1e-6, cos, sin, ring8, 64)),
        "idx_q_rope_rotate": (lambda: rotate_for_keys(tnorm.norm_rope(qi, None, None, cos, sin,
                                                                      out_dtype=torch.float32), "fp4").bfloat16(),
                              lambda: tnorm.norm_rope(qi, None, None, cos, sin, rotate=True)),
        "wo_a_grouped_fp8": (lambda: _old_wo_a(xo, wo_a, 8), lambda: tl_lin.grouped_linear(xo, wo_a, 8)),
        "shared_swiglu_fp8": (lambda: rnorm.swiglu(kernels.fp8_linear(xd, w1.data, w1.scale),
                                                   kernels.fp8_linear(xd, w3.data, w3.scale), 10.0, xd.dtype),
                              lambda: tl_lin.swiglu_linear(xd, w1, w3, 10.0)),
        "compressor_project": (lambda: rlin.compressor_project(xd, wkv, wgate, ape, pos, 4),
                               lambda: tl_lin.compressor_project(xd, wkv, wgate, ape, pos, 4)),
        "q_norm_wq_b_fp8": (lambda: kernels.fp8_linear(rnorm.rms_norm(lat, qn, 1e-6), wq_b.data, wq_b.scale),
                            lambda: tl_lin.norm_linear(lat, qn, 1e-6, wq_b)),
        "gate_fp32_linear": (lambda: rlin.linear(xd, gate, fp32=True), lambda: tl_lin.linear(xd, gate, fp32=True)),
        "moe_add_cast": (lambda: rnorm.add_cast(y32, xd, torch.bfloat16),
                         lambda: tnorm.add_cast(y32, xd, torch.bfloat16)),
    }


def bench_ops(batches, results):
    for n in batches:
        for name, (old, new) in op_cases(n).items():
            r = dict(bench="glue_op", op=name, batch=n)
            for tag, fn in (("old", old), ("fused", new)):
                r[f"{tag}_eager_us"] = bench_ms(fn, graph=False) * 1e3
                r[f"{tag}_graph_us"] = bench_ms(fn, graph=True) * 1e3
            r["eager_speedup"] = r["old_eager_us"] / r["fused_eager_us"]
            r["graph_speedup"] = r["old_graph_us"] / r["fused_graph_us"]
            results.append(r)
            print("  " + "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()),
                  flush=True)


def bench_model(batches, results):
    from tests.kernels.glue_cases import decode_batch, flash_shaped_model, per_layer_launches, prefilled_state
    with tempfile.TemporaryDirectory() as tmp:
        model = flash_shaped_model(tmp)
    for n in batches:
        state, tables, g = prefilled_state(model, n, 256)
        b = decode_batch(model, tables, n, 256, g)
        per_layer, full, base = per_layer_launches(model, b, state)
        with torch.no_grad():
            ms = bench_ms(lambda: model(b, state), graph=False, rep=50)
        r = dict(bench="glue_model_decode", batch=n, layers=len(model.layers), launches_per_layer=per_layer,
                 launches_forward=sum(full.values()), launches_outside_layers=sum(base.values()),
                 eager_forward_ms=ms)
        results.append(r)
        print("  " + "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()),
              flush=True)
        del state


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batches", default="1,64,256")
    ap.add_argument("--model", action="store_true", help="also the 2-layer Flash-shaped decode forward")
    args = ap.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    results: list[dict] = []
    bench_ops(batches, results)
    if args.model:
        bench_model(batches, results)
    print(json.dumps({"bench": "glue", "device": torch.cuda.get_device_name(), "results": results}))


if __name__ == "__main__":
    main()
