"""Kernel-variant sweeps for the weight-streaming (decode) paths and MXFP4 prefill, registered into
bench/kernels.py: `python bench/kernels.py --only moe_fp4_modes,fp8_linear_sweep`.

moe_fp4_modes     MXFP4 experts through each grouped-GEMM kernel variant (decode_kernel=False; the swapped
                  decode kernel is bench/moe_entries.py's moe_decode_fp4) (common.FP4_MODES: "interleave" = nibble
                  interleave, "interleave_asm" = the same tiles with the packed PTX conversion, "split" =
                  even/odd dots with the packed PTX conversion): decode batch 1/8/64/256 (uniform
                  routing, 8 routings per CUDA graph, GB/s over touched expert bytes) with a tile sweep,
                  prefill 4K/16K tokens.
fp8_linear_sweep  FP8 block linear at the V4-Flash dense shapes, M = 1/64, over a tile/split-K grid
                  (pick_config's decode rules come from it).
moe_profile       per-kernel CUDA time of one MXFP4 MoE decode call (torch.profiler), grouped-GEMM variants.
topk_sweep        radix top-k kernel variants (in-register vs streaming rows, warps, chunk size).
moe_act8          MoE prefill with FP8 activations (act_quant) vs bf16 activations.
"""

from __future__ import annotations

import torch

FP4_DECODE_CFGS = ((16, 128, 4, 4), (16, 256, 4, 4), (32, 128, 4, 4), (64, 128, 4, 4), (32, 256, 3, 4),
                   (32, 128, 6, 4), (16, 128, 6, 2))
FP4_PREFILL_CFGS = ((128, 128, 64, 8, 3), (128, 128, 128, 8, 3), (128, 64, 128, 4, 4), (64, 128, 128, 4, 4),
                    (128, 256, 64, 8, 3))
LINEAR_CFGS = ((16, 128, 4, 1, 4), (32, 128, 4, 1, 4), (32, 128, 6, 1, 4), (64, 128, 4, 1, 4), (64, 128, 6, 1, 4),
               (128, 128, 4, 1, 4), (32, 128, 4, 2, 4), (64, 128, 4, 2, 4), (64, 128, 4, 4, 4), (128, 128, 4, 4, 8),
               (32, 64, 8, 1, 4), (64, 64, 8, 2, 4))


def install(register, bench_ms):
    from bench import kernel_fixtures as K

    @register("moe_fp4_modes")
    def bench_moe_fp4_modes(ctx):
        import kernels.triton.moe as tm
        R = 8
        ws = K._experts("fp4")
        per_exp = K._expert_bytes(ws)

        def call(sets, mode, c=None):
            def run():
                for x, w, ids in sets:
                    tm.moe_experts(x, ws[0], ws[1], ws[2], w, ids, 10.0, c, c, fp4_mode=mode, decode_kernel=False)
            return run

        # correctness of each mode against the twin on one routing before timing it
        from kernels.ref.moe import moe_experts as ref_moe
        x, w, ids = K._routings(64, "uniform", 1)[0]
        want = ref_moe(x, ws[0], ws[1], ws[2], w, ids, 10.0)
        for mode in ("split", "interleave", "interleave_asm"):
            try:
                got = tm.moe_experts(x, ws[0], ws[1], ws[2], w, ids, 10.0, fp4_mode=mode, decode_kernel=False)
                rel = ((got - want).norm() / want.norm()).item()
                ctx.emit(bench="moe_fp4_check", mode=mode, rel_err=rel)
            except Exception as ex:  # noqa: BLE001
                ctx.emit(bench="moe_fp4_check", mode=mode, error=repr(ex)[:300])
        for n in (1, 8, 64, 256):
            sets = K._routings(n, "uniform", R)
            touched = sum(int(torch.unique(s[2]).numel()) for s in sets) / R
            for mode in ("split", "interleave", "interleave_asm"):
                cfgs = [None] + ([dict(BM=16, BN=bn, BK=bk, GROUP_M=1, num_warps=nw, num_stages=st)
                                  for bn, bk, st, nw in FP4_DECODE_CFGS] if mode != "interleave" and n in (1, 64) else [])
                for c in cfgs:
                    tag = "default" if c is None else f"BN{c['BN']}_BK{c['BK']}_st{c['num_stages']}_w{c['num_warps']}"
                    try:
                        ms = bench_ms(call(sets, mode, c)) / R
                        gbps = touched * per_exp / ms / 1e6
                        ctx.emit(bench="moe_fp4_decode", mode=mode, batch=n, cfg=tag, us=ms * 1e3, GBps=gbps,
                                 pct_hbm=100 * gbps / ctx.hbm_gbps)
                    except Exception as ex:  # noqa: BLE001
                        ctx.emit(bench="moe_fp4_decode", mode=mode, batch=n, cfg=tag, error=repr(ex)[:300])
        for n in (4096, 16384):
            sets = K._routings(n, "uniform", 1)
            flops = 2 * n * K.TOPK * 3 * K.D * K.INTER
            for mode in ("split", "interleave_asm"):
                cfgs = [None] + ([dict(BM=bm, BN=bn, BK=bk, GROUP_M=8, num_warps=nw, num_stages=st)
                                  for bm, bn, bk, nw, st in FP4_PREFILL_CFGS] if n == 16384 else [])
                for c in cfgs:
                    tag = "default" if c is None else f"BM{c['BM']}_BN{c['BN']}_BK{c['BK']}_w{c['num_warps']}_st{c['num_stages']}"
                    try:
                        ms = bench_ms(call(sets, mode, c), graph=False, rep=30)
                        ctx.emit(bench="moe_fp4_prefill", mode=mode, tokens=n, cfg=tag, ms=ms,
                                 TFLOPs=flops / ms / 1e9)
                    except Exception as ex:  # noqa: BLE001
                        ctx.emit(bench="moe_fp4_prefill", mode=mode, tokens=n, cfg=tag, error=repr(ex)[:300])
        del ws
        torch.cuda.empty_cache()

    @register("fp8_linear_sweep")
    def bench_fp8_linear_sweep(ctx):
        import kernels.triton.fp8_linear as tf
        for name, (n, k) in K.FP8_SHAPES.items():
            R = max(1, min(16, (256 * 2**20) // (n * k)))
            wts = [((torch.randn(n, k, device="cuda") * 100).clamp(-448, 448).to(torch.float8_e4m3fn),
                    torch.randint(117, 121, (n // 128, k // 128), device="cuda", dtype=torch.uint8))
                   for _ in range(R)]
            wbytes = n * k + (n // 128) * (k // 128)
            for m in (1, 64):
                x = torch.randn(m, k, device="cuda").bfloat16()
                best = None
                for c in [None] + [dict(BM=16 if m <= 16 else 64, BN=bn, BK=bk, GROUP_M=1, num_warps=nw, num_stages=st,
                                        SPLIT_K=sk) for bn, bk, st, sk, nw in LINEAR_CFGS]:
                    tag = "default" if c is None else f"BN{c['BN']}_BK{c['BK']}_st{c['num_stages']}_sk{c['SPLIT_K']}_w{c['num_warps']}"

                    def run():
                        for w, s in wts:
                            tf.fp8_linear(x, w, s, False, None, c)
                    try:
                        ms = bench_ms(run) / R
                    except Exception as ex:  # noqa: BLE001
                        ctx.emit(bench="fp8_linear_sweep", shape=name, M=m, cfg=tag, error=repr(ex)[:200])
                        continue
                    if c is None:
                        ctx.emit(bench="fp8_linear_sweep", shape=name, M=m, cfg=tag, us=ms * 1e3,
                                 pct_hbm=100 * wbytes / ms / 1e6 / ctx.hbm_gbps)
                    if best is None or ms < best[0]:
                        best = (ms, tag)
                ctx.emit(bench="fp8_linear_sweep_best", shape=name, M=m, cfg=best[1], us=best[0] * 1e3,
                         pct_hbm=100 * wbytes / best[0] / 1e6 / ctx.hbm_gbps)
            del wts
            torch.cuda.empty_cache()

    @register("moe_profile")
    def bench_moe_profile(ctx):
        """Per-kernel CUDA time of one MXFP4 MoE decode call (torch.profiler), batch 1 and 64."""
        import kernels.triton.moe as tm
        from torch.profiler import ProfilerActivity, profile
        ws = K._experts("fp4")
        for n in (1, 64):
            sets = K._routings(n, "uniform", 8)
            for mode in ("interleave", "interleave_asm", "split"):
                def run():
                    for x, w, ids in sets:
                        tm.moe_experts(x, ws[0], ws[1], ws[2], w, ids, 10.0, fp4_mode=mode,
                                       decode_kernel=False)
                run()
                torch.cuda.synchronize()
                with profile(activities=[ProfilerActivity.CUDA]) as prof:
                    for _ in range(5):
                        run()
                    torch.cuda.synchronize()
                for ev in prof.key_averages():
                    if ev.device_type.name == "CUDA" and ev.count:
                        ctx.emit(bench="moe_profile", batch=n, mode=mode, kernel=ev.key[:60],
                                 us_per_call=ev.device_time_total / 40, calls_per_moe=ev.count / 40)
        del ws
        torch.cuda.empty_cache()


    @register("topk_sweep")
    def bench_topk_sweep(ctx):
        """Radix top-k (k=512) kernel variants: in-register rows (<= 8192 entries) by warps, streaming
        rows by chunk size and warps; torch.topk on the same rows."""
        import os

        from kernels.triton import indexer as ti

        def us_of(fn):
            return bench_ms(fn) * 1e3
        g = torch.Generator(device="cuda").manual_seed(0)
        for b in (1, 64):
            for n_ent in (2048, 8192, 32768):
                scores = torch.randn(b, n_ent, device="cuda", generator=g)
                out = torch.empty(b, 512, dtype=torch.int32, device="cuda")
                pos = torch.full((b,), 4 * n_ent - 1, dtype=torch.int32, device="cuda")
                us_t = us_of(lambda: torch.topk(scores, 512, dim=-1))
                variants = []
                if n_ent <= ti.REG_TOPK_MAX:
                    variants += [("reg", {"V4_TOPK_REG_WARPS": str(w)}, None) for w in (4, 8, 16)]
                variants += [("stream", {"V4_TOPK_BLOCK": str(bl), "V4_TOPK_WARPS": str(w)}, 0)
                             for bl in (1024, 4096) for w in (4, 8, 16)]
                for kind, env, reg_max in variants:
                    old = {k: os.environ.get(k) for k in env}
                    os.environ.update(env)
                    try:
                        us = us_of(lambda: ti.topk_rows(scores, pos, out, 0, b, 512, 4, reg_max=reg_max))
                        ctx.emit(bench="topk_sweep", batch=b, entries=n_ent, kind=kind, cfg=str(env), us=us,
                                 torch_topk_us=us_t, speedup_vs_torch=us_t / us)
                    except Exception as ex:  # noqa: BLE001
                        ctx.emit(bench="topk_sweep", batch=b, entries=n_ent, kind=kind, cfg=str(env), error=repr(ex)[:200])
                    finally:
                        for k, v in old.items():
                            if v is None:
                                os.environ.pop(k, None)
                            else:
                                os.environ[k] = v

    @register("moe_act8")
    def bench_moe_act8(ctx):
        """MoE prefill with FP8 activations (1x128 blocks): FP8 x FP8 MMA for FP8 experts; MXFP4 experts
        take the quantized activations through the bf16 MMA."""
        import kernels.triton.moe as tm
        for fmt in ("fp8", "fp4"):
            ws = K._experts(fmt)
            for n in (4096, 16384):
                x, w, ids = K._routings(n, "uniform", 1)[0]
                flops = 2 * n * K.TOPK * 3 * K.D * K.INTER
                for aq in ((False, True) if fmt == "fp8" else (True,)):
                    try:
                        ms = bench_ms(lambda: tm.moe_experts(x, ws[0], ws[1], ws[2], w, ids, 10.0, act_quant=aq),
                                      graph=False, rep=30)
                        ctx.emit(bench="moe_prefill_act8", fmt=fmt, tokens=n, act_quant=aq, ms=ms,
                                 TFLOPs=flops / ms / 1e9)
                    except Exception as ex:  # noqa: BLE001
                        ctx.emit(bench="moe_prefill_act8", fmt=fmt, tokens=n, act_quant=aq, error=repr(ex)[:300])
            del ws
            torch.cuda.empty_cache()
