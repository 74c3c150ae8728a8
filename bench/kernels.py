"""Kernel benchmarks on one GPU: `python bench/kernels.py [--only moe,fp8_linear,...] [--json out.json]`.

Registry: `@register("name")` functions take a `Ctx` and return a list of result dicts (each also
printed as it is measured). The ceilings (HBM read bandwidth from a 4 GiB bf16 reduction, bf16
8192^3 matmul TFLOP/s) are measured first in the same run; the last stdout line is one JSON object
with everything. Times are medians of `triton.testing.do_bench` over CUDA-graph replays; inputs
rotate over several routings/buffers so L2 (60 MB) does not serve repeated reads.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import traceback

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.kernel_fixtures import D, E, FP8_SHAPES, INTER, TOPK, _expert_bytes, _experts, _routings  # noqa: E402,F401

REGISTRY: dict = {}


def register(name: str):
    def deco(fn):
        REGISTRY[name] = fn
        return fn
    return deco


class Ctx:
    def __init__(self):
        self.hbm_gbps = None
        self.bf16_tflops = None
        self.results: list[dict] = []

    def emit(self, **r):
        self.results.append(r)
        print("  " + "  ".join(f"{k}={_fmt(v)}" for k, v in r.items()), flush=True)
        return r


def _fmt(v):
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def bench_ms(fn, graph: bool = True, rep: int = 100) -> float:
    """Median ms of fn() (CUDA-graph replay when `graph`)."""
    import triton.testing as tt
    fn()
    torch.cuda.synchronize()
    if graph:
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            fn()
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            fn()
        return tt.do_bench(g.replay, warmup=25, rep=rep, return_mode="median")
    return tt.do_bench(fn, warmup=25, rep=rep, return_mode="median")


# ---- ceilings ---------------------------------------------------------------------------------------
def measure_ceilings(ctx: Ctx) -> None:
    x = torch.randn(2 * 2**30, device="cuda", dtype=torch.bfloat16)  # 4 GiB
    ms = bench_ms(lambda: x.sum(dtype=torch.float32), graph=False, rep=50)
    ctx.hbm_gbps = x.numel() * 2 / ms / 1e6
    del x
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    ms = bench_ms(lambda: a @ b, graph=False, rep=50)
    ctx.bf16_tflops = 2 * 8192**3 / ms / 1e9
    ctx.emit(bench="ceiling", hbm_read_GBps=ctx.hbm_gbps, bf16_mm_TFLOPs=ctx.bf16_tflops)


# ---- MoE (issue 6) --------------------------------------------------------------------------------
def _moe_call(ws, sets, cfg1=None, cfg2=None):
    import kernels.triton.moe as tm

    def run():
        for x, w, ids in sets:
            tm.moe_experts(x, ws[0], ws[1], ws[2], w, ids, 10.0, cfg1, cfg2)
    return run


@register("moe")
def bench_moe(ctx: Ctx):
    import kernels.triton.moe as tm
    R = 8  # routings per graph (different experts touched -> no L2 reuse)
    for fmt in ("fp4", "fp8"):
        ws = _experts(fmt)
        per_exp = _expert_bytes(ws)
        for mode in ("uniform", "skewed"):
            for n in (1, 8, 64, 256):
                sets = _routings(n, mode, R)
                touched = sum(int(torch.unique(s[2]).numel()) for s in sets) / R
                ms = bench_ms(_moe_call(ws, sets)) / R
                gbps = touched * per_exp / ms / 1e6
                ctx.emit(bench="moe_decode", fmt=fmt, routing=mode, batch=n, us=ms * 1e3, experts_touched=touched,
                         GBps=gbps, pct_hbm=100 * gbps / ctx.hbm_gbps)
        # small config sweep at decode (MXFP4 shipped format): best tile per batch
        if fmt == "fp4":
            for n in (1, 64):
                sets = _routings(n, "uniform", R)
                touched = sum(int(torch.unique(s[2]).numel()) for s in sets) / R
                for bn, bk, st, nw in ((32, 128, 4, 4), (64, 128, 4, 4), (64, 256, 3, 4), (128, 128, 4, 8),
                                       (32, 256, 4, 4), (64, 128, 6, 4)):
                    c = dict(BM=16, BN=bn, BK=bk, GROUP_M=1, num_warps=nw, num_stages=st)
                    try:
                        ms = bench_ms(_moe_call(ws, sets, c, c)) / R
                        ctx.emit(bench="moe_decode_sweep", fmt=fmt, batch=n, cfg=f"BN{bn}_BK{bk}_st{st}_w{nw}",
                                 us=ms * 1e3, pct_hbm=100 * touched * per_exp / ms / 1e6 / ctx.hbm_gbps)
                    except Exception as ex:  # noqa: BLE001
                        ctx.emit(bench="moe_decode_sweep", batch=n, cfg=f"BN{bn}_BK{bk}_st{st}_w{nw}", error=repr(ex)[:200])
        # prefill
        if fmt == "fp4":
            sets = _routings(16384, "uniform", 1)
            flops = 2 * 16384 * TOPK * 3 * D * INTER
            for bm, bn, bk, nw, st in ((128, 128, 64, 8, 3), (128, 128, 128, 8, 2), (64, 128, 64, 4, 4),
                                       (128, 64, 64, 4, 4), (256, 128, 64, 8, 2)):
                c = dict(BM=bm, BN=bn, BK=bk, GROUP_M=8, num_warps=nw, num_stages=st)
                try:
                    ms = bench_ms(_moe_call(ws, sets, c, c), graph=False, rep=30)
                    ctx.emit(bench="moe_prefill_sweep", fmt=fmt, tokens=16384, cfg=f"BM{bm}_BN{bn}_BK{bk}_w{nw}_st{st}",
                             TFLOPs=flops / ms / 1e9)
                except Exception as ex:  # noqa: BLE001
                    ctx.emit(bench="moe_prefill_sweep", cfg=f"BM{bm}_BN{bn}_BK{bk}", error=repr(ex)[:200])
        for n in (4096, 16384):
            sets = _routings(n, "uniform", 1)
            flops = 2 * n * TOPK * 3 * D * INTER
            ms = bench_ms(_moe_call(ws, sets), graph=False, rep=50)
            ctx.emit(bench="moe_prefill", fmt=fmt, tokens=n, ms=ms, TFLOPs=flops / ms / 1e9,
                     pct_bf16_mm=100 * flops / ms / 1e9 / ctx.bf16_tflops)
        del ws
        torch.cuda.empty_cache()
    # baselines: bf16 experts (our kernel), per-expert F.linear loop (the twin), torch grouped GEMMs
    ws = _experts("bf16")
    per_exp = _expert_bytes(ws)
    for n in (1, 64):
        sets = _routings(n, "uniform", R)
        touched = sum(int(torch.unique(s[2]).numel()) for s in sets) / R
        ms = bench_ms(_moe_call(ws, sets)) / R
        ctx.emit(bench="moe_decode", fmt="bf16", routing="uniform", batch=n, us=ms * 1e3, experts_touched=touched,
                 GBps=touched * per_exp / ms / 1e6, pct_hbm=100 * touched * per_exp / ms / 1e6 / ctx.hbm_gbps)
    from kernels.ref.moe import moe_experts as ref_moe
    for n in (1, 64, 4096):
        sets = _routings(n, "uniform", 1)
        x, w, ids = sets[0]
        ms = bench_ms(lambda: ref_moe(x, ws[0], ws[1], ws[2], w, ids, 10.0), graph=False, rep=30)
        ctx.emit(bench="baseline_moe_linear_loop", fmt="bf16", tokens=n, us=ms * 1e3,
                 TFLOPs=2 * n * TOPK * 3 * D * INTER / ms / 1e9)
    for n in (1, 64, 4096, 16384):
        sets = _routings(n, "uniform", 1)
        if n >= 4096:
            ms = bench_ms(_moe_call(ws, sets), graph=False, rep=50)
            ctx.emit(bench="moe_prefill", fmt="bf16", tokens=n, ms=ms, TFLOPs=2 * n * TOPK * 3 * D * INTER / ms / 1e9)
        _grouped_baselines(ctx, n, sets[0], ws)
    del ws
    torch.cuda.empty_cache()


def _grouped_baselines(ctx: Ctx, n: int, s, ws):
    """torch._grouped_mm (bf16) and torch._scaled_grouped_mm (fp8 rowwise) on the expert-sorted tokens:
    gate, up, down GEMMs only (no SwiGLU, no combine), i.e. a lower bound for a torch grouped MoE."""
    x, w, ids = s
    flat = ids.reshape(-1).long()
    order = torch.argsort(flat)
    xs = x[order // TOPK].contiguous()
    counts = torch.bincount(flat, minlength=E)
    offs = torch.cumsum(counts, 0).to(torch.int32)
    flops = 2 * n * TOPK * 3 * D * INTER
    w1t, w3t, w2t = (t.transpose(-2, -1) for t in ws)  # [E, K, N] views of [E, N, K]
    h = torch.randn(n * TOPK, INTER, device="cuda").bfloat16()
    if hasattr(torch, "_grouped_mm"):
        try:
            def gm():
                torch._grouped_mm(xs, w1t, offs=offs)
                torch._grouped_mm(xs, w3t, offs=offs)
                torch._grouped_mm(h, w2t, offs=offs)
            ms = bench_ms(gm, graph=False, rep=30)
            ctx.emit(bench="baseline_grouped_mm", fmt="bf16", tokens=n, us=ms * 1e3, TFLOPs=flops / ms / 1e9)
        except Exception as ex:  # noqa: BLE001
            ctx.emit(bench="baseline_grouped_mm", tokens=n, error=repr(ex)[:300])
    if hasattr(torch, "_scaled_grouped_mm"):
        try:
            q = [t.to(torch.float8_e4m3fn) for t in ws]  # [E, N, K]; B operand = transpose (column-major)
            xq, hq = xs.to(torch.float8_e4m3fn), h.to(torch.float8_e4m3fn)
            sa = torch.ones(xq.shape[0], device="cuda")
            sb1 = torch.ones(E, INTER, device="cuda")
            sb2 = torch.ones(E, D, device="cuda")

            def sgm():
                torch._scaled_grouped_mm(xq, q[0].transpose(-2, -1), sa, sb1, offs=offs, out_dtype=torch.bfloat16)
                torch._scaled_grouped_mm(xq, q[1].transpose(-2, -1), sa, sb1, offs=offs, out_dtype=torch.bfloat16)
                torch._scaled_grouped_mm(hq, q[2].transpose(-2, -1), sa, sb2, offs=offs, out_dtype=torch.bfloat16)
            ms = bench_ms(sgm, graph=False, rep=30)
            ctx.emit(bench="baseline_scaled_grouped_mm", fmt="fp8", tokens=n, us=ms * 1e3, TFLOPs=flops / ms / 1e9)
            del q
        except Exception as ex:  # noqa: BLE001
            ctx.emit(bench="baseline_scaled_grouped_mm", tokens=n, error=repr(ex)[:300])


# ---- FP8 linear (issue 6) -------------------------------------------------------------------------


@register("fp8_linear")
def bench_fp8_linear(ctx: Ctx):
    import torch.nn.functional as F

    import kernels.triton.fp8_linear as tf
    from kernels.codecs import dequant_fp8_block
    for name, (n, k) in FP8_SHAPES.items():
        R = max(1, min(16, (256 * 2**20) // (n * k)))  # rotate weights so > L2 bytes per graph
        wts = [((torch.randn(n, k, device="cuda") * 100).clamp(-448, 448).to(torch.float8_e4m3fn),
                torch.randint(117, 121, (n // 128, k // 128), device="cuda", dtype=torch.uint8)) for _ in range(R)]
        wbytes = n * k + (n // 128) * (k // 128)
        for m in (1, 16, 64):
            x = torch.randn(m, k, device="cuda").bfloat16()

            def run():
                for w, s in wts:
                    tf.fp8_linear(x, w, s)
            ms = bench_ms(run) / R
            gbps = wbytes / ms / 1e6
            ctx.emit(bench="fp8_linear_decode", shape=name, M=m, N=n, K=k, us=ms * 1e3, GBps=gbps,
                     pct_hbm=100 * gbps / ctx.hbm_gbps)
        if name in ("wq_b", "wo_b", "shared_w13"):  # decode tile sweep
            x = torch.randn(1, k, device="cuda").bfloat16()
            for bn, nw, st, sk in ((32, 4, 4, 1), (64, 4, 6, 1), (128, 4, 4, 1), (128, 8, 4, 1), (64, 4, 4, 2),
                                   (32, 4, 6, 2), (16, 4, 6, 1), (64, 8, 3, 4)):
                c = dict(BM=16, BN=bn, BK=128, GROUP_M=1, num_warps=nw, num_stages=st, SPLIT_K=sk)

                def run():
                    for w, s in wts:
                        tf.fp8_linear(x, w, s, False, None, c)
                ms = bench_ms(run) / R
                ctx.emit(bench="fp8_linear_decode_sweep", shape=name, M=1, cfg=f"BN{bn}_w{nw}_st{st}_sk{sk}",
                         us=ms * 1e3, pct_hbm=100 * wbytes / ms / 1e6 / ctx.hbm_gbps)
        wb = [dequant_fp8_block(w, s, dtype=torch.bfloat16) for w, s in wts[:1]]
        x = torch.randn(1, k, device="cuda").bfloat16()
        ms = bench_ms(lambda: F.linear(x, wb[0]))
        ctx.emit(bench="baseline_bf16_linear_decode", shape=name, M=1, us=ms * 1e3,
                 GBps_bf16_bytes=2 * n * k / ms / 1e6, note="L2-warm if weight < 60MB")
        m = 4096
        x = torch.randn(m, k, device="cuda").bfloat16()
        w, s = wts[0]
        for aq in (False, True):
            ms = bench_ms(lambda: tf.fp8_linear(x, w, s, aq), graph=False)
            ctx.emit(bench="fp8_linear_prefill", shape=name, M=m, act_quant=aq, us=ms * 1e3,
                     TFLOPs=2 * m * n * k / ms / 1e9)
        ms = bench_ms(lambda: F.linear(x, wb[0]), graph=False)
        ctx.emit(bench="baseline_bf16_linear_prefill", shape=name, M=m, us=ms * 1e3, TFLOPs=2 * m * n * k / ms / 1e9)
        del wts, wb
        torch.cuda.empty_cache()


# issue 5: attention / indexer / compressor / prefill entries (bench/attention_entries.py)
from bench.attention_entries import install as _install_attention  # noqa: E402

_install_attention(register, bench_ms)

# issue 11: FP8 block linear at decode (bench/fp8_entries.py)
from bench.fp8_entries import install as _install_fp8; _install_fp8(register, bench_ms)  # noqa: E402,E702

# kernel-variant sweeps for the decode paths (bench/decode_variants.py)
from bench.decode_variants import install as _install_variants  # noqa: E402

_install_variants(register, bench_ms)
from bench.moe_entries import install as _install_moe  # noqa: E402  (issue 11: MXFP4 MoE decode)
_install_moe(register, bench_ms)

from bench.prefill_entries import install as _install_prefill  # noqa: E402  (mHC mix, moe_align, MoE prefill)

_install_prefill(register, bench_ms)
from bench.topk_entries import install as _install_topk  # noqa: E402  (indexer top-k at long-prompt prefill)

_install_topk(register, bench_ms)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--only", default="", help="comma list of: " + ",".join(REGISTRY))
    ap.add_argument("--json", default="", help="also write the final JSON here")
    args = ap.parse_args(argv)
    names = [n for n in args.only.split(",") if n] or list(REGISTRY)
    import triton
    ctx = Ctx()
    meta = dict(torch=torch.__version__, triton=triton.__version__, device=torch.cuda.get_device_name(),
                date=time.strftime("%Y-%m-%d"))
    print(f"# {meta}", flush=True)
    measure_ceilings(ctx)
    for name in names:
        print(f"## {name}", flush=True)
        t0 = time.time()
        try:
            REGISTRY[name](ctx)
        except Exception as ex:  # noqa: BLE001
            traceback.print_exc()
            ctx.emit(bench=name, error=repr(ex)[:300])
        print(f"## {name} done in {time.time() - t0:.1f}s", flush=True)
    out = dict(meta=meta, hbm_read_GBps=ctx.hbm_gbps, bf16_mm_TFLOPs=ctx.bf16_tflops, results=ctx.results)
    line = json.dumps(out, default=lambda o: None if isinstance(o, float) and math.isnan(o) else str(o))
    if args.json:
        with open(args.json, "w") as f:
            f.write(line + "\n")
    print(line)


if __name__ == "__main__":
    main()
