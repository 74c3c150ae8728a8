"""bench/kernels.py entries for the prefill kernels: the fused mHC mix (`mhc_mix`: hc_post_pre / hc_pre per
call and the mix / finish kernels alone, at prefill row counts, plus a tile sweep at 8,192 rows; `mhc_mix_decode`:
the decode kernel against the row-tile kernel at 1-384 rows),
the token->expert alignment (`moe_align`: 8,192 x top-6 and decode sizes) and the MoE prefill paths
(`moe_prefill`: fused MXFP4 kernel vs dequantize + torch grouped GEMM, bf16 and FP8 operands, 4K / 16K tokens). Registered into
bench/kernels.py's REGISTRY by `install(register, bench_ms)`.
"""

from __future__ import annotations

import torch

from bench.kernel_fixtures import D, E, INTER, TOPK, _experts

HC, MIX = 4, 24  # mHC streams, mix width (hc pre + post + hc*hc comb)


def _streams(n, g):
    x = torch.randn(n, HC, D, device="cuda", generator=g).bfloat16()
    fn = torch.randn(MIX, HC * D, device="cuda", generator=g) * 1e-3
    base = torch.randn(MIX, device="cuda", generator=g) * 0.1
    scale = torch.ones(3, device="cuda")
    w = torch.ones(D, device="cuda", dtype=torch.bfloat16)
    o = torch.randn(n, D, device="cuda", generator=g).bfloat16()
    post = torch.rand(n, HC, device="cuda", generator=g)
    comb = torch.rand(n, HC, HC, device="cuda", generator=g)
    return x, fn, base, scale, w, o, post, comb


def install(register, bench_ms):
    def us_of(fn, graph=True, rep=50):
        return bench_ms(fn, graph=graph, rep=rep) * 1e3

    @register("mhc_mix")
    def bench_mhc(ctx):
        import kernels.triton.mhc as tm
        for n in (8192, 2048, 512):  # the prefill kernel (mhc.PREFILL_ROWS = 512 and up)
            g = torch.Generator(device="cuda").manual_seed(n)
            x, fn, base, scale, w, o, post, comb = _streams(n, g)
            # bytes of hc_post_pre: read X, o; write X'; the finish pass reads X' and writes u
            by = n * (HC * D * 2 * 3 + D * 2 * 2)
            us = us_of(lambda: tm.hc_post_pre(o, x, post, comb, fn, base, scale, HC, 20, 1e-6, 1e-6, w))
            ctx.emit(bench="mhc_post_pre", impl="new", rows=n, us=us, TBps=by / us / 1e6)
            us = us_of(lambda: tm.hc_pre(x, fn, base, scale, HC, 20, 1e-6, 1e-6, w))
            ctx.emit(bench="mhc_pre", impl="new", rows=n, us=us, TBps=n * HC * D * 2 * 2 / us / 1e6)
            us = us_of(lambda: tm._mix(x, fn, o, post, comb))
            ctx.emit(bench="mhc_mix_kernel", impl="new", rows=n, us=us, TBps=n * HC * D * 2 * 2.25 / us / 1e6)
            xo, part, sq, split = tm._mix(x, fn, o, post, comb)
            us = us_of(lambda: tm._finish(xo, part, sq, split, base, scale, w, 20, 1e-6, 1e-6, False))
            ctx.emit(bench="mhc_finish_kernel", rows=n, split=split, us=us, TBps=n * HC * D * 2 * 1.25 / us / 1e6)
            if n == 8192:  # before: the decode kernel at prefill rows (what ran for every M until 2026-12-02)
                keep, tm.PREFILL_ROWS = tm.PREFILL_ROWS, 1 << 40
                try:
                    us = us_of(lambda: tm._mix(x, fn, o, post, comb))
                    ctx.emit(bench="mhc_mix_kernel", impl="decode_kernel", rows=n, us=us,
                             TBps=n * HC * D * 2 * 2.25 / us / 1e6)
                finally:
                    tm.PREFILL_ROWS = keep
            del x, o, xo, part
            torch.cuda.empty_cache()

    @register("mhc_mix_decode")
    def bench_mhc_decode(ctx):
        """Decode rows (1..448): the split-d decode mix kernel against the prefill kernel's tiles, to set
        mhc.PREFILL_ROWS (where the prefill kernel takes over) from measurement."""
        import kernels.triton.mhc as tm
        for n in (1, 8, 64, 128, 192, 256, 384):
            x, fn, base, scale, w, o, post, comb = _streams(n, torch.Generator(device="cuda").manual_seed(n))
            keep, tm.PREFILL_ROWS = tm.PREFILL_ROWS, 1 << 40
            try:
                us = us_of(lambda: tm._mix(x, fn, o, post, comb))
            finally:
                tm.PREFILL_ROWS = keep
            ctx.emit(bench="mhc_mix_decode", impl="decode_kernel", rows=n, us=us)
            for cfg in ((64, 64, 8, 2, True), (32, 64, 4, 2, True), (64, 32, 4, 2, True), (16, 64, 4, 2, True)):
                try:
                    us = us_of(lambda: tm._mix(x, fn, o, post, comb, cfg=cfg))
                    ctx.emit(bench="mhc_mix_decode", impl="prefill_kernel", cfg=list(cfg), rows=n, us=us)
                except Exception as ex:  # noqa: BLE001
                    ctx.emit(bench="mhc_mix_decode", impl="prefill_kernel", cfg=list(cfg), rows=n, error=repr(ex)[:200])

    @register("mhc_sweep")
    def bench_mhc_sweep(ctx):
        """Tile variants: prefill mix tiles at 2,048 / 8,192 / 16,384 rows (`default`: mix_config's pick), at 8,192
        rows finish warps / rows per program and the mix's programs per SM."""
        import kernels.triton.mhc as tm
        import kernels.triton.mhc_prefill as pre
        from kernels.triton.mhc_prefill import mix_config, mix_prefill
        n = 8192
        x, fn, base, scale, w, o, post, comb = _streams(n, torch.Generator(device="cuda").manual_seed(n))
        xo, part, sq, split = tm._mix(x, fn, o, post, comb)
        for warps, br in ((4, 1), (8, 2)):
            us = us_of(lambda: tm._finish(xo, part, sq, split, base, scale, w, 20, 1e-6, 1e-6, False, warps, br))
            ctx.emit(bench="mhc_finish_sweep", rows=n, warps=warps, rows_per_program=br, us=us,
                     TBps=n * HC * D * 2 * 1.25 / us / 1e6)
        tiles = ((64, 64, 8), (64, 32, 4), (128, 32, 8), (128, 32, 4), (128, 64, 8), (256, 32, 8), (128, 16, 4),
                 (256, 16, 8))
        for rows in (2048, 8192, 16384):  # a 2K prompt, the server and the offline token budgets
            streams = _streams(rows, torch.Generator(device="cuda").manual_seed(rows))
            xs, fns, os_, posts, combs = streams[0], streams[1], streams[5], streams[6], streams[7]
            for tile in tiles:
                cfg = (*tile, 2, True)
                try:
                    us = us_of(lambda: tm._mix(xs, fns, os_, posts, combs, cfg=cfg))  # noqa: B023
                    ctx.emit(bench="mhc_mix_sweep", rows=rows, cfg=list(cfg), default=cfg == pre.mix_config(rows),
                             us=us, TBps=rows * HC * D * 2 * 2.25 / us / 1e6)
                except Exception as ex:  # noqa: BLE001
                    ctx.emit(bench="mhc_mix_sweep", rows=rows, cfg=list(cfg), error=repr(ex)[:200])
            del streams, xs, fns, os_, posts, combs
        for per_sm in (2, 4, 8, 16):  # column splits of the default tiles (mhc_prefill.PROGRAMS_PER_SM)
            us = us_of(lambda: mix_prefill(x, fn, o, post, comb, mix_config(n), programs_per_sm=per_sm))
            ctx.emit(bench="mhc_mix_sweep", rows=n, programs_per_sm=per_sm, us=us,
                     TBps=n * HC * D * 2 * 2.25 / us / 1e6)

    @register("moe_align")
    def bench_align(ctx):
        import kernels.triton.routing as tr
        for n, bm in ((8192, 128), (16384, 128), (1, 16), (64, 16), (128, 16), (256, 16), (256, 64)):
            g = torch.Generator(device="cuda").manual_seed(n)
            ids = torch.topk(torch.randn(n, E, device="cuda", generator=g), TOPK, dim=-1).indices.to(torch.int32)
            for par in (True, False):  # two parallel launches / the one-program kernel
                us = us_of(lambda: tr.moe_align(ids, E, bm, parallel=par))
                ctx.emit(bench="moe_align", impl="parallel" if par else "one_program", tokens=n, block_m=bm, us=us)

    @register("moe_copy_sweep")
    def bench_moe_copy_sweep(ctx):
        """The MXFP4 -> E4M3 expert copy (moe_prefill_fp8.dequant_mxfp4_e4m3) of one V4-Flash matrix (256 x [2048,
        4096]) per tile (rows, input words, warps), and the default tile on scales spread over 2^30 (the exact
        subnormal branch on most tiles). TBps counts bytes read + written."""
        from kernels.quant_weight import QuantWeight
        from kernels.triton.moe_prefill_fp8 import COPY_TILE, dequant_mxfp4_e4m3
        w = _experts("fp4")[0]
        nbytes = E * INTER * D * (0.5 + 1 / 32 + 1)
        others = ((16, 64, 4), (8, 64, 4), (32, 64, 4), (32, 64, 8), (16, 128, 4), (16, 128, 8), (32, 128, 8),
                  (64, 64, 8), (8, 128, 4), (4, 256, 4), (16, 32, 4), (64, 128, 16))
        for tile in (COPY_TILE, *(t for t in others if t != COPY_TILE)):  # the default first, each tile once
            try:
                us = us_of(lambda: dequant_mxfp4_e4m3(w, tile), graph=False, rep=20)
                ctx.emit(bench="moe_copy_sweep", tile="x".join(map(str, tile)), us=us, TBps=nbytes / us / 1e6)
            except Exception as ex:  # noqa: BLE001
                ctx.emit(bench="moe_copy_sweep", tile="x".join(map(str, tile)), error=repr(ex)[:200])
        g = torch.Generator(device="cuda").manual_seed(1)
        wide = QuantWeight(w.data, torch.randint(100, 131, w.scale_u8().shape, device="cuda", generator=g,
                                                 dtype=torch.uint8), "fp4")
        us = us_of(lambda: dequant_mxfp4_e4m3(wide), graph=False, rep=20)
        ctx.emit(bench="moe_copy_sweep", tile="default", scales="wide", us=us, TBps=nbytes / us / 1e6)

    @register("moe_prefill")
    def bench_moe_prefill(ctx):
        """Per call, MXFP4 experts (V4-Flash: 256 x [2048, 4096]), uniform routing: the fused Triton kernel
        vs dequantize + torch grouped GEMMs (moe_prefill.py), end to end, plus the grouped path's parts."""
        import kernels.triton.moe as tm
        import kernels.triton.moe_prefill as tp
        from kernels.ref.routing import moe_route
        inter = INTER
        g = torch.Generator(device="cuda").manual_seed(0)
        ws = _experts("fp4")
        us = us_of(lambda: tp.dequant_mxfp4(ws[0]), graph=False, rep=20)
        ctx.emit(bench="moe_prefill_dequant", matrix="w1", us=us, TBps=E * inter * D * (0.5 + 1 / 32 + 2) / us / 1e6)
        from kernels.triton.moe_prefill_fp8 import dequant_mxfp4_e4m3
        us = us_of(lambda: dequant_mxfp4_e4m3(ws[0]), graph=False, rep=20)
        ctx.emit(bench="moe_prefill_dequant", matrix="w1", out="e4m3", us=us,
                 TBps=E * inter * D * (0.5 + 1 / 32 + 1) / us / 1e6)
        for n in (4096, 8192, 16384):
            logits = torch.randn(n, E, device="cuda", generator=g)
            x = torch.randn(n, D, device="cuda", generator=g).bfloat16()
            w, ids = moe_route(logits, TOPK, 1.5)
            flops = 2 * n * TOPK * 3 * D * inter
            c1 = tm.pick_config(n * TOPK, E, inter, 2, True, False)  # explicit tiles: the fused kernel
            for tag, fn in (("fused", lambda: tm.moe_experts(x, *ws, w, ids, 10.0, config1=c1)),
                            ("grouped", lambda: tp.moe_experts_grouped(x, *ws, w, ids, 10.0, fp8_operands=False)),
                            ("grouped_fp8", lambda: tp.moe_experts_grouped(x, *ws, w, ids, 10.0, fp8_operands=True)),
                            ("dispatch", lambda: tm.moe_experts(x, *ws, w, ids, 10.0))):
                try:
                    us = us_of(fn, graph=False, rep=50)
                    ctx.emit(bench="moe_prefill", impl=tag, tokens=n, us=us, TFLOPs=flops / us / 1e6)
                except Exception as ex:  # noqa: BLE001
                    ctx.emit(bench="moe_prefill", impl=tag, tokens=n, error=repr(ex)[:300])
            if n == 8192:
                wb = tp.dequant_mxfp4(ws[0])
                xs = torch.randn(n * TOPK, D, device="cuda").bfloat16()
                offs = torch.searchsorted(ids.reshape(-1).sort().values, torch.arange(E, device="cuda"),
                                          right=True).to(torch.int32)
                us = us_of(lambda: torch._grouped_mm(xs, wb.transpose(-2, -1), offs=offs), graph=False, rep=30)
                ctx.emit(bench="moe_prefill_grouped_mm_w1", tokens=n, us=us,
                         TFLOPs=2 * n * TOPK * D * inter / us / 1e6)
                del wb, xs
            torch.cuda.empty_cache()
