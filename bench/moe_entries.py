"""bench/kernels.py entries for issue 11's MXFP4 MoE decode row: `python bench/kernels.py --only moe_decode_fp4`.

moe_decode_fp4   MXFP4 experts, uniform routing, batch 1 / 8 / 64 / 256 (8 routings per CUDA graph, as
                 the "moe" entry), % of HBM over touched expert bytes: the dispatched path
                 (`kernels.moe_experts`: the swapped-operand kernel `triton.moe_decode` at these shapes),
                 the issue-6 grouped GEMM ("interleave", the kernel before) and the swapped kernel over a
                 tile sweep; each variant's relative error against the twin first.
                 Then the dispatched call's per-kernel CUDA time at batch 1 and 64 (torch.profiler).
                 V4_MOE_BENCH_CFGS=quick: the dispatched path, plus the occupancy variants (SEQ, register caps,
                 BN128) at B >= 8
                 (a short run, ~25 s).
"""

from __future__ import annotations

import os

import torch

# (name, BT, BN, BK, warps, stages): 2 warps = mma.sync, 4-8 warps with BN >= 64 = wgmma
SWAP_CFGS = (("bn64_w2_s4", 16, 64, 128, 2, 4), ("bn128_w4_s3", 16, 128, 128, 4, 3), ("bn64_w4_s4", 16, 64, 128, 4, 4),
             ("bn32_w2_s4", 16, 32, 128, 2, 4), ("bn128_w8_s3", 16, 128, 128, 8, 3))
# occupancy variants of the aligned tile (B >= 8), with their control: SEQ = the up matrix in a second K loop
# (160 instead of 184 registers), maxnreg = register cap (more programs per SM); 2026-12-02 session 3 (two MMA
# accumulator chains and a conversion in two halves were measured too, slower, and removed: docs/benchmarks.md).
_B = dict(BT=16, BN=64, BK=128, num_warps=2)
OCCUPANCY_CFGS = (("bn64_w2_s4", dict(_B, num_stages=4)),
               ("bn64_w2_s3_reg168", dict(_B, num_stages=3, maxnreg=168)),
               ("seq_s4", dict(_B, num_stages=4, SEQ=True)),
               ("seq_s3", dict(_B, num_stages=3, SEQ=True)),
               ("seq_s4_reg128", dict(_B, num_stages=4, SEQ=True, maxnreg=128)),
               ("seq_s3_reg128", dict(_B, num_stages=3, SEQ=True, maxnreg=128)),
               ("seq_s6", dict(_B, num_stages=6, SEQ=True)),
               ("seq_bn128_w4_s4", dict(_B, BN=128, num_warps=4, num_stages=4, SEQ=True)),
               ("seq_bn128_w4_s3", dict(_B, BN=128, num_warps=4, num_stages=3, SEQ=True)))
BATCHES = (1, 8, 64, 256)


def swap_variants(p: int):
    """(tag, config) of the swapped kernel's sweep at p (token, slot) pairs: both token layouts at <= 48
    pairs (one tile per pair / moe_align blocks), the aligned layout above."""
    out = []
    for name, bt, bn, bk, nw, st in SWAP_CFGS:
        for aligned in ((False, True) if p <= 48 else (True,)):
            c = dict(BT=bt, BN=bn, BK=bk, num_warps=nw, num_stages=st, ALIGNED=aligned)
            out.append((f"swap_{name}" + ("_al" if aligned else "_pair"), c))
    return out


def install(register, bench_ms):
    from bench import kernel_fixtures as K

    @register("moe_decode_fp4")
    def bench_moe_decode_fp4(ctx):
        import kernels
        import kernels.triton.moe as tm
        import kernels.triton.moe_decode as md
        from kernels.ref.moe import moe_experts as ref_moe
        R = 8
        ws = K._experts("fp4")
        per_exp = K._expert_bytes(ws)
        quick = os.environ.get("V4_MOE_BENCH_CFGS", "") == "quick"

        def variants(n):
            out = [("dispatch", lambda x, w, ids: kernels.moe_experts(x, ws[0], ws[1], ws[2], w, ids, 10.0))]
            if not quick:
                out.append(("interleave", lambda x, w, ids: tm.moe_experts(x, ws[0], ws[1], ws[2], w, ids, 10.0,
                                                                           decode_kernel=False)))
            extra = [] if n < 8 else [(f"swap_{name}_al", dict(c, ALIGNED=True)) for name, c in OCCUPANCY_CFGS]
            for tag, c in extra + ([] if quick else swap_variants(n * K.TOPK)):
                out.append((tag, lambda x, w, ids, c=c: md.moe_experts_decode(x, ws[0], ws[1], ws[2], w, ids, 10.0,
                                                                               c, c)))
            return out

        for n in BATCHES:
            sets = K._routings(n, "uniform", R)
            touched = sum(int(torch.unique(s[2]).numel()) for s in sets) / R
            x0, w0, ids0 = sets[0]
            want = ref_moe(x0, ws[0], ws[1], ws[2], w0, ids0, 10.0)
            for tag, fn in variants(n):
                try:
                    got = fn(x0, w0, ids0)
                    rel = ((got - want).norm() / want.norm()).item()

                    def run(fn=fn):
                        for x, w, ids in sets:
                            fn(x, w, ids)
                    ms = bench_ms(run) / R
                    gbps = touched * per_exp / ms / 1e6
                    ctx.emit(bench="moe_decode_fp4", variant=tag, batch=n, us=ms * 1e3, experts_touched=touched,
                             GBps=gbps, pct_hbm=100 * gbps / ctx.hbm_gbps, rel_err=rel)
                except Exception as ex:  # noqa: BLE001
                    ctx.emit(bench="moe_decode_fp4", variant=tag, batch=n, error=repr(ex)[:300])
        # where the dispatched call's time goes: per-kernel CUDA time (torch.profiler), batch 1 and 64
        from torch.profiler import ProfilerActivity, profile
        for n in (1, 64):
            sets = K._routings(n, "uniform", R)

            def call(sets=sets):
                for x, w, ids in sets:
                    kernels.moe_experts(x, ws[0], ws[1], ws[2], w, ids, 10.0)
            call()
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(5):
                    call()
                torch.cuda.synchronize()
            for ev in prof.key_averages():
                if ev.device_type.name == "CUDA" and ev.count:
                    ctx.emit(bench="moe_decode_fp4_profile", batch=n, kernel=ev.key[:60],
                             us_per_call=ev.device_time_total / (5 * R), launches_per_call=ev.count / (5 * R))
        del ws
        torch.cuda.empty_cache()
