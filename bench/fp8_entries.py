"""bench/kernels.py entries for the FP8 block linear at decode (issue 11 row 2, issue 17 batch-1 step).

fp8_decode_sweep  every dense V4-Flash shape at M = 1 / 16 / 64 over the kernel variants of
                  `_fp8_linear_kernel` (VAR 0 = token tiles x dequantized weight tiles, 1 = swap: weights
                  as the MMA's left operand converted in registers, 2 = CUDA-core GEMV for one row) x tile /
                  split-K / stage grid; configs are compiled first in parallel worker processes (Triton's
                  disk cache; FP8_SWEEP_COMPILE_ONLY=1 stops there), each checked against the twin, then
                  timed. Env: FP8_SWEEP_M (1,16,64; M > 64 takes the large-batch set `sweep_configs_big`),
                  FP8_SWEEP_SHAPES, FP8_SWEEP_WORKERS, FP8_SWEEP_REP. `pick_config`'s decode table
                  (kernels/triton/fp8_table.py) is written from its `fp8_decode_best` rows.
fp8_scaled_mm     plain FP8 linears at M = 128..8192: the Triton block linear against act_quant + torch's
                  blockwise-scaled FP8 GEMM (kernels/triton/fp8_scaled_mm.py), scale layouts, error vs the
                  act_quant twin; `fp8_scaled_mm_pick` rows fill fp8_table.SCALED_MM_MIN_M.
fp8_decode        the shipped dispatch (no config) at every shape, M = FP8_DECODE_M (1,16,64), plus the glue
                  paths that ride on the same kernel at decode (norm_linear = q_norm + wq_b, grouped wo_a,
                  SwiGLU shared_w13 (at 65-256 rows also without its K split), compressor kv+gate): us and %
                  of HBM over the weight bytes.

Weights rotate over enough copies that one CUDA graph reads >= 256 MB (L2 is 60 MB).
"""

from __future__ import annotations

import os

import torch

SHAPES = {  # V4-Flash dense linears (N, K)
    "wq_a": (1024, 4096), "wq_b": (32768, 1024), "wkv": (512, 4096), "wo_b": (4096, 8192),
    "idx_wq_b": (8192, 1024), "shared_w13": (2048, 4096), "shared_w2": (4096, 2048), "mtp_proj": (4096, 4096),
}
SWEEP_EXTRA = {"wo_a": (8192, 4096)}  # the grouped wo_a launch (8 groups x [1024, 4096]) swept as one linear
NSM = 132


def _split_for(m, n, k, bm, bn, target):
    tiles = -(-m // bm) * -(-n // bn)
    split = 1
    while tiles * split < target and k // (split * 2) >= 256:
        split *= 2
    return split


def _cfg(bm, bn, bk, st, var, split, warps=4):
    return dict(BM=bm, BN=bn, BK=bk, GROUP_M=1, num_warps=warps, num_stages=st, VAR=var, SPLIT_K=split)


def sweep_configs_2(m: int, n: int, k: int) -> list:
    """Second sweep (FP8_SWEEP_SET=2): K steps of 256..1024 (each row's run contiguous) for GEMV and swap, the
    program's weight slab prefetched to L2 first (PREFETCH lines per row and step), programmatic dependent
    launch (PDL: the next launch prefetches while this one finishes)."""
    out = [None]
    if m == 1:
        for bn, bk in ((4, 1024), (8, 512), (8, 1024), (16, 256), (16, 512), (32, 256), (32, 128)):
            for tgt in (NSM, 4 * NSM):
                out.append(_cfg(1, bn, bk, 3, 2, _split_for(m, n, k, 1, bn, tgt)))
        for bn, bk in ((8, 512), (16, 256), (32, 128)):
            c = _cfg(1, bn, bk, 3, 2, _split_for(m, n, k, 1, bn, 2 * NSM))
            out += [dict(c, PREFETCH=8), dict(c, PREFETCH=8, PDL=True), dict(c, PDL=True)]
        for st in (3, 4):
            for tgt in (2 * NSM, 4 * NSM):
                out.append(_cfg(16, 64, 256, st, 1, _split_for(m, n, k, 16, 64, tgt)))
        c = _cfg(16, 64, 128, 3, 1, _split_for(m, n, k, 16, 64, 2 * NSM))
        out += [dict(c, PREFETCH=8), dict(c, PREFETCH=8, PDL=True)]
    elif m <= 16:
        for bn, bk in ((64, 128), (64, 256), (128, 128)):
            for st in (3, 4):
                for tgt in (2 * NSM, 4 * NSM):
                    out.append(_cfg(16, bn, bk, st, 1, _split_for(m, n, k, 16, bn, tgt)))
        for tgt in (NSM, 4 * NSM):
            out.append(_cfg(16, 32, 128, 6, 0, _split_for(m, n, k, 16, 32, tgt)))
        c = _cfg(16, 64, 128, 3, 1, _split_for(m, n, k, 16, 64, 2 * NSM))
        out += [dict(c, PREFETCH=8), dict(c, PREFETCH=8, PDL=True)]
    else:
        for bn in (64, 128):
            for bk in (128, 256):
                for tgt in (NSM, 2 * NSM, 4 * NSM):
                    out.append(_cfg(64, bn, bk, 3, 1, _split_for(m, n, k, 64, bn, tgt)))
        for bn in (32, 64):
            for tgt in (NSM, 4 * NSM):
                out.append(_cfg(64, bn, 128, 4, 0, _split_for(m, n, k, 64, bn, tgt)))
        c = _cfg(64, 128, 128, 3, 1, _split_for(m, n, k, 64, 128, 2 * NSM))
        out += [dict(c, PREFETCH=8), dict(c, PREFETCH=8, PDL=True)]
    return _uniq(out)


def _decode_ms():
    """Rows of the fp8_decode entry: FP8_DECODE_M (default 1,16,64)."""
    return [int(v) for v in os.environ.get("FP8_DECODE_M", "1,16,64").split(",") if v]


def _uniq(out):
    seen, uniq = set(), []
    for c in out:
        key = None if c is None else tuple(sorted(c.items()))
        if key not in seen:
            seen.add(key)
            uniq.append(c)
    return uniq


def sweep_configs_big(m: int, n: int, k: int) -> list:
    """Decode batches of 65..256 rows (the batch-128/256 steps): token tiles of 64 / 128 rows with dequantized
    weight tiles (VAR 0; each weight tile is converted once per row tile) and swap tiles (VAR 1), split-K to
    fill the SMs (the rule's 64x128 tile without split leaves 16-128 programs on 132 SMs at these N)."""
    out = [None]
    for bm, bn, warps, st in ((64, 64, 4, 4), (64, 128, 4, 4), (128, 64, 8, 3), (128, 128, 8, 3)):
        for tgt in (NSM, 2 * NSM, 4 * NSM):
            out.append(_cfg(bm, bn, 128, st, 0, _split_for(m, n, k, bm, bn, tgt), warps))
    for bm, bn in ((64, 128), (128, 64)):
        for tgt in (NSM, 2 * NSM, 4 * NSM):
            out.append(_cfg(bm, bn, 128, 3, 1, _split_for(m, n, k, bm, bn, tgt)))
    return _uniq(out)


def sweep_configs(m: int, n: int, k: int) -> list:
    """The candidate decode configs of one shape (None = the shipped pick); FP8_SWEEP_SET=2: the second set;
    M > 64: the large-batch set."""
    if m > 64:
        return sweep_configs_big(m, n, k)
    if os.environ.get("FP8_SWEEP_SET") == "2":
        return sweep_configs_2(m, n, k)
    out = [None]
    if m == 1:
        for bn in (16, 32, 64):
            for st in (3, 5):
                for tgt in (2 * NSM, 4 * NSM, 8 * NSM):
                    out.append(dict(BM=1, BN=bn, BK=128, GROUP_M=1, num_warps=4, num_stages=st, VAR=2,
                                    SPLIT_K=_split_for(m, n, k, 1, bn, tgt)))
        out.append(dict(BM=1, BN=64, BK=128, GROUP_M=1, num_warps=8, num_stages=4, VAR=2,
                        SPLIT_K=_split_for(m, n, k, 1, 64, 4 * NSM)))
    if m <= 16:
        for bn in (64, 128):
            for st in (3, 5):
                for tgt in (2 * NSM, 4 * NSM):
                    out.append(dict(BM=16, BN=bn, BK=128, GROUP_M=1, num_warps=4, num_stages=st, VAR=1,
                                    SPLIT_K=_split_for(m, n, k, 16, bn, tgt)))
        out.append(dict(BM=16, BN=128, BK=128, GROUP_M=1, num_warps=8, num_stages=4, VAR=1,
                        SPLIT_K=_split_for(m, n, k, 16, 128, 2 * NSM)))
        for bn, st in ((32, 6), (64, 4)):
            for tgt in (NSM, 4 * NSM):
                out.append(dict(BM=16, BN=bn, BK=128, GROUP_M=1, num_warps=4, num_stages=st, VAR=0,
                                SPLIT_K=_split_for(m, n, k, 16, bn, tgt)))
    else:
        for bm in (32, 64):
            for bn in (64, 128):
                for tgt in (NSM, 2 * NSM, 4 * NSM):
                    out.append(dict(BM=bm, BN=bn, BK=128, GROUP_M=1, num_warps=4, num_stages=4, VAR=1,
                                    SPLIT_K=_split_for(m, n, k, bm, bn, tgt)))
        for bn in (32, 64, 128):
            for tgt in (NSM, 4 * NSM):
                out.append(dict(BM=64, BN=bn, BK=128, GROUP_M=1, num_warps=4, num_stages=4, VAR=0,
                                SPLIT_K=_split_for(m, n, k, 64, bn, tgt)))
    return _uniq(out)


def tag(c) -> str:
    if c is None:
        return "default"
    return (f"v{c.get('VAR', 0)}_m{c['BM']}_n{c['BN']}_b{c['BK']}_s{c['num_stages']}_k{c['SPLIT_K']}"
            f"_w{c['num_warps']}" + (f"_pf{c['PREFETCH']}" if c.get("PREFETCH") else "")
            + ("_pdl" if c.get("PDL") else ""))


def _weights(n, k, copies, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    return [((torch.randn(n, k, device="cuda", generator=g) * 100).clamp(-448, 448).to(torch.float8_e4m3fn),
             torch.randint(117, 121, (n // 128, k // 128), device="cuda", generator=g, dtype=torch.uint8))
            for _ in range(copies)]


def _copies(nbytes):
    return max(2, min(64, -(-(256 * 2**20) // nbytes)))


def _compile_job(job):
    """Worker: compile (and run once) the given (name, m, cfg) list on the GPU -> Triton's disk cache."""
    import kernels.triton.fp8_linear as tf
    done = 0
    for name, m, c in job:
        n, k = dict(SHAPES, **SWEEP_EXTRA)[name]
        try:
            w, s = _weights(n, k, 1)[0]
            x = torch.randn(m, k, device="cuda").bfloat16()
            tf.fp8_linear(x, w, s, False, None, c)
            torch.cuda.synchronize()
            done += 1
        except Exception:  # noqa: BLE001 - reported when the main process times it
            pass
    return done


def precompile(jobs: list, workers: int) -> None:
    import multiprocessing as mp
    if workers <= 1 or len(jobs) < 4:
        return
    chunks = [jobs[i::workers] for i in range(workers)]
    ctx = mp.get_context("spawn")
    with ctx.Pool(workers) as pool:
        pool.map(_compile_job, chunks)


def _ref_kernels():
    import triton
    import triton.language as tl

    @triton.jit
    def nop_kernel(out_ptr):
        pass

    @triton.jit
    def stream_kernel(w_ptr, out_ptr, BLOCK: tl.constexpr):
        """Read BLOCK contiguous bytes per program (16-byte loads), keep one int per program."""
        pid = tl.program_id(0)
        v = tl.load(w_ptr + pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK))
        tl.store(out_ptr + pid, tl.sum(v.to(tl.int32), axis=0))
    return nop_kernel, stream_kernel


def install(register, bench_ms):

    @register("fp8_decode_ref")
    def bench_fp8_decode_ref(ctx):
        """Per-size references for the decode linears: an empty launch, the same bytes streamed contiguously by
        one launch (16 KB per program), cuBLAS bf16 linear on the dequantized weight (2 bytes per weight)."""
        import torch.nn.functional as F
        nop, stream = _ref_kernels()
        out = torch.zeros(1 << 16, dtype=torch.int32, device="cuda")
        ms = bench_ms(lambda: [nop[(528,)](out) for _ in range(32)]) / 32
        ctx.emit(bench="fp8_decode_ref", kind="empty_launch", us=ms * 1e3)
        for name, (n, k) in dict(SHAPES, **SWEEP_EXTRA).items():
            nbytes = n * k
            c = _copies(nbytes)
            bufs = [torch.randint(0, 255, (nbytes,), device="cuda", dtype=torch.uint8) for _ in range(c)]
            for block in (8192, 16384):

                def run(block=block):
                    for b in bufs:
                        stream[(nbytes // block,)](b, out, BLOCK=block, num_warps=4)
                ms = bench_ms(run) / c
                ctx.emit(bench="fp8_decode_ref", kind=f"stream{block}", shape=name, us=ms * 1e3,
                         pct_hbm=100 * nbytes / ms / 1e6 / ctx.hbm_gbps)
            del bufs
            cb = max(2, min(32, -(-(256 * 2**20) // (2 * nbytes))))
            wb = [torch.randn(n, k, device="cuda").bfloat16() for _ in range(cb)]
            for m in (1, 64):
                x = torch.randn(m, k, device="cuda").bfloat16()

                def run():
                    for w in wb:
                        F.linear(x, w)
                ms = bench_ms(run) / cb
                ctx.emit(bench="fp8_decode_ref", kind="cublas_bf16", shape=name, M=m, us=ms * 1e3,
                         pct_hbm=100 * 2 * nbytes / ms / 1e6 / ctx.hbm_gbps)
            del wb
            torch.cuda.empty_cache()

    @register("fp8_decode_sweep")
    def bench_fp8_decode_sweep(ctx):
        import kernels.triton.fp8_linear as tf
        from kernels.ref.fp8_linear import fp8_linear as ref
        ms_list = [int(v) for v in os.environ.get("FP8_SWEEP_M", "1,16,64").split(",")]
        shapes = dict(SHAPES, **SWEEP_EXTRA)
        names = [v for v in os.environ.get("FP8_SWEEP_SHAPES", ",".join(shapes)).split(",") if v]
        jobs = [(nm, m, c) for nm in names for m in ms_list for c in sweep_configs(m, *shapes[nm])]
        precompile(jobs, int(os.environ.get("FP8_SWEEP_WORKERS", "12")))
        if os.environ.get("FP8_SWEEP_COMPILE_ONLY") == "1":  # fill Triton's cache; a later run times
            ctx.emit(bench="fp8_decode_sweep_compiled", jobs=len(jobs))
            return
        rep = int(os.environ.get("FP8_SWEEP_REP", "30"))
        for m in ms_list:  # M outer: the first rows of a run cut by its time limit cover every shape
            for name in names:
                n, k = shapes[name]
                wbytes = n * k + (n // 128) * (k // 128)
                wts = _weights(n, k, _copies(wbytes), seed=1)
                x = torch.randn(m, k, device="cuda").bfloat16()
                want = ref(x, *wts[0])
                best = None
                for c in sweep_configs(m, n, k):
                    try:
                        got = tf.fp8_linear(x, *wts[0], False, None, c)
                        rel = ((got.float() - want.float()).norm() / want.float().norm()).item()
                        if not rel < 1e-2:
                            ctx.emit(bench="fp8_decode_sweep", shape=name, M=m, cfg=tag(c), error=f"rel {rel:.3g}")
                            continue

                        def run(c=c):
                            for w, s in wts:
                                tf.fp8_linear(x, w, s, False, None, c)
                        ms = bench_ms(run, rep=rep) / len(wts)
                    except Exception as ex:  # noqa: BLE001
                        ctx.emit(bench="fp8_decode_sweep", shape=name, M=m, cfg=tag(c), error=repr(ex)[:200])
                        continue
                    pct = 100 * wbytes / ms / 1e6 / ctx.hbm_gbps
                    ctx.emit(bench="fp8_decode_sweep", shape=name, M=m, cfg=tag(c), us=ms * 1e3, pct_hbm=pct,
                             **({} if c is None else {"c": c}))
                    if best is None or ms < best[0]:
                        best = (ms, c)
                if best is not None:
                    ctx.emit(bench="fp8_decode_best", shape=name, M=m, cfg=tag(best[1]), c=best[1],
                             us=best[0] * 1e3, pct_hbm=100 * wbytes / best[0] / 1e6 / ctx.hbm_gbps)
                del wts
                torch.cuda.empty_cache()

    @register("logits_linear")
    def bench_logits_linear(ctx):
        """The LM head (vocab 129,280 x 4,096, bf16) at the decode batches: bf16 logits + the fp32 cast (the
        twin) against one GEMM with fp32 output (torch.mm out_dtype). `logits_linear_pick`: the smallest M from
        which the fp32-output GEMM wins at every measured M (fp8_table.HEAD_FP32_OUT_MIN_M)."""
        import torch.nn.functional as F
        vocab, d = 129280, 4096
        w = (torch.randn(vocab, d, device="cuda") * 0.02).bfloat16()
        wins = {}
        for m in (1, 8, 64, 128, 256, 512):
            x = torch.randn(m, d, device="cuda").bfloat16()
            t_cast = bench_ms(lambda x=x: F.linear(x, w).float())
            t_out = bench_ms(lambda x=x: torch.mm(x, w.t(), out_dtype=torch.float32))
            wins[m] = t_out < t_cast
            ctx.emit(bench="logits_linear", M=m, cast_us=t_cast * 1e3, fp32_out_us=t_out * 1e3,
                     speedup=t_cast / t_out)
        ms = sorted(wins)
        pick = next((m for i, m in enumerate(ms) if all(wins[j] for j in ms[i:])), None)
        ctx.emit(bench="logits_linear_pick", N=vocab, K=d, min_m=pick)
        del w
        torch.cuda.empty_cache()

    @register("fp8_scaled_mm")
    def bench_fp8_scaled_mm(ctx):
        """Plain FP8 linears at M = FP8_SCALED_M (128,256,1024,4096,8192): the Triton block linear (bf16
        activations, the dispatched config) against act_quant + torch's blockwise-scaled GEMM
        (kernels/triton/fp8_scaled_mm.py), and the act_quant pass alone; the scaled path's error against the
        act_quant twin first. `fp8_scaled_mm_pick`: the smallest M from which the
        best scaled variant beats the block linear at every measured M (fp8_table.SCALED_MM_MIN_M)."""
        import kernels.triton.fp8_linear as tf
        from kernels.quant_weight import QuantWeight
        from kernels.ref.fp8_linear import fp8_linear as ref
        from kernels.triton.act_quant import act_quant
        from kernels.triton.fp8_scaled_mm import scaled_linear
        ms_list = [int(v) for v in os.environ.get("FP8_SCALED_M", "128,256,1024,4096,8192").split(",") if v]
        for name, (n, k) in SHAPES.items():
            wbytes = n * k + (n // 128) * (k // 128)
            wts = [QuantWeight(w, sc, "fp8") for w, sc in _weights(n, k, _copies(wbytes), seed=5)]
            wins = {}
            for m in ms_list:
                x = torch.randn(m, k, device="cuda").bfloat16()
                flop = 2.0 * m * n * k

                def run_tri():
                    for w in wts:
                        tf.fp8_linear(x, w.data, w.scale)
                t_tri = bench_ms(run_tri) / len(wts)
                ctx.emit(bench="fp8_scaled_mm", shape=name, M=m, impl="triton_bf16_act", us=t_tri * 1e3,
                         tflops=flop / t_tri / 1e9)
                t_a8 = bench_ms(lambda: [tf.fp8_linear(x, w.data, w.scale, act_quant=True) for w in wts]) / len(wts)
                ctx.emit(bench="fp8_scaled_mm", shape=name, M=m, impl="triton_act_fp8", us=t_a8 * 1e3,
                         tflops=flop / t_a8 / 1e9, vs_triton=t_tri / t_a8)
                t_aq = bench_ms(lambda: act_quant(x)) * 1e3
                ctx.emit(bench="fp8_scaled_mm", shape=name, M=m, impl="act_quant_only", us=t_aq)
                want = ref(x, wts[0].data, wts[0].scale, act_quant=True).float()
                rel = ((scaled_linear(x, wts[0]).float() - want).norm() / want.norm()).item()
                if not rel < 1e-2:
                    ctx.emit(bench="fp8_scaled_mm", shape=name, M=m, impl="scaled_mm", error=f"rel {rel:.3g}")
                    wins[m] = False
                    continue

                def run():
                    for w in wts:
                        scaled_linear(x, w)
                t = bench_ms(run) / len(wts)
                ctx.emit(bench="fp8_scaled_mm", shape=name, M=m, impl="scaled_mm", us=t * 1e3, tflops=flop / t / 1e9,
                         rel_err=rel, vs_triton=t_tri / t)
                wins[m] = t < t_tri
            lo = next((m for m in ms_list if all(wins[q] for q in ms_list if q >= m)), None)
            ctx.emit(bench="fp8_scaled_mm_pick", shape=name, N=n, K=k, min_m=lo)
            del wts
            torch.cuda.empty_cache()
        # the glue paths (their scaled variants are keyed by the same (N, K) as the plain shapes, grouped wo_a
        # by (8192, 4096)): the bf16-activation Triton launch (tables pinned empty), the scaled variant and the
        # block linear's FP8 x FP8 mode
        import kernels.triton.fp8_linear as fl
        import kernels.triton.fp8_scaled_mm as sm
        import kernels.triton.fp8_table as ft
        import kernels.triton.linear_glue as lg
        saved = ft.SCALED_MM_MIN_M, ft.ACT_FP8_MIN_M
        ft.SCALED_MM_MIN_M, ft.ACT_FP8_MIN_M = {}, {}
        try:
            _glue_rows(ctx, ms_list, fl, sm, lg)
        finally:
            ft.SCALED_MM_MIN_M, ft.ACT_FP8_MIN_M = saved

    def _glue_rows(ctx, ms_list, fl, sm, lg):
        from kernels.quant_weight import QuantWeight
        glue = {"norm_linear_wq_b": (32768, 1024, 1), "grouped_wo_a": (1024, 4096, 8), "swiglu_w13": (2048, 4096, 2)}
        for name, (n, k, groups) in glue.items():
            rows = n * (groups if name == "grouped_wo_a" else 1)
            w1 = QuantWeight(*_weights(rows, k, 1, seed=6)[0], "fp8")
            w3 = QuantWeight(*_weights(rows, k, 1, seed=7)[0], "fp8")
            nw = torch.rand(k, device="cuda").bfloat16() + 0.5
            for m in ms_list:
                if name == "grouped_wo_a":
                    x = torch.randn(m, groups, k, device="cuda").bfloat16()
                    yg = torch.empty(m, rows, device="cuda", dtype=torch.bfloat16)
                    pair = (lambda: lg.grouped_linear(x, w1, groups), lambda: sm.scaled_grouped_linear(x, w1, groups),
                            lambda: fl.launch(x.view(m, -1), w1, yg, groups=groups, x_gs=k, w_gs=n, y_gs=n,
                                              act_quant=True))
                elif name == "norm_linear_wq_b":
                    x = torch.randn(m, k, device="cuda").bfloat16()
                    pair = (lambda: lg.norm_linear(x, nw, 1e-6, w1), lambda: sm.scaled_norm_linear(x, nw, 1e-6, w1))
                else:
                    x = torch.randn(m, k, device="cuda").bfloat16() * 0.01
                    ys = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)
                    pair = (lambda: lg.swiglu_linear(x, w1, w3, 10.0), lambda: sm.scaled_swiglu_linear(x, w1, w3, 10.0),
                            lambda: fl.launch(x, w1, ys, w2=w3, epi=1, round_out=True, limit=10.0, act_quant=True))
                for impl, fn in zip(("triton_bf16_act", "scaled_mm", "triton_act_fp8"), pair):
                    try:
                        ctx.emit(bench="fp8_scaled_mm_glue", op=name, M=m, impl=impl, us=bench_ms(fn) * 1e3)
                    except Exception as ex:  # noqa: BLE001
                        ctx.emit(bench="fp8_scaled_mm_glue", op=name, M=m, impl=impl, error=repr(ex)[:300])
            del w1, w3
            torch.cuda.empty_cache()

    @register("fp8_decode")
    def bench_fp8_decode(ctx):
        import kernels.triton.fp8_linear as tf
        import kernels.triton.linear_glue as lg
        from kernels.quant_weight import QuantWeight
        for name, (n, k) in SHAPES.items():
            wbytes = n * k + (n // 128) * (k // 128)
            wts = _weights(n, k, _copies(wbytes), seed=2)
            for m in _decode_ms():
                x = torch.randn(m, k, device="cuda").bfloat16()

                def run():
                    for w, s in wts:
                        tf.fp8_linear(x, w, s)
                ms = bench_ms(run) / len(wts)
                ctx.emit(bench="fp8_decode", shape=name, M=m, N=n, K=k, us=ms * 1e3,
                         pct_hbm=100 * wbytes / ms / 1e6 / ctx.hbm_gbps)
            del wts
            torch.cuda.empty_cache()
        # glue paths at decode (same kernel): q_norm + wq_b, grouped wo_a (8 x [1024, 4096]), SwiGLU w1/w3
        glue = {"norm_linear_wq_b": (32768, 1024, 1, False), "grouped_wo_a": (1024, 4096, 8, False),
                "swiglu_w13": (2048, 4096, 1, True)}
        for name, (n, k, groups, dual) in glue.items():
            wbytes = (2 if dual else 1) * groups * (n * k + (n // 128) * (k // 128))
            c = _copies(wbytes)
            w1 = [QuantWeight(w, s, "fp8") for w, s in _weights(groups * n, k, c, seed=3)]
            w3 = [QuantWeight(w, s, "fp8") for w, s in _weights(groups * n, k, c, seed=4)] if dual else None
            nw = torch.rand(k, device="cuda").bfloat16()
            for m in _decode_ms():
                x = torch.randn(m, groups * k, device="cuda").bfloat16()

                def run():
                    for i in range(c):
                        if name == "norm_linear_wq_b":
                            lg.norm_linear(x, nw, 1e-6, w1[i])
                        elif name == "grouped_wo_a":
                            lg.grouped_linear(x.view(m, groups, k), w1[i], groups)
                        else:
                            lg.swiglu_linear(x, w1[i], w3[i], 10.0)
                ms = bench_ms(run) / c
                ctx.emit(bench="fp8_decode_glue", op=name, M=m, us=ms * 1e3,
                         pct_hbm=100 * wbytes / ms / 1e6 / ctx.hbm_gbps)
                if dual and 64 < m <= 256:  # the dual launch's K split (tf.DUAL_FILL) against none
                    tf.DUAL_FILL = False
                    try:
                        ms = bench_ms(run) / c
                    finally:
                        tf.DUAL_FILL = True
                    ctx.emit(bench="fp8_decode_glue", op=name + "_nosplit", M=m, us=ms * 1e3,
                             pct_hbm=100 * wbytes / ms / 1e6 / ctx.hbm_gbps)
            del w1, w3
            torch.cuda.empty_cache()


def table_from_sweep(text: str) -> dict:
    """fp8_decode_best rows of a sweep's stdout -> {(N, K): {bucket: config}} for kernels/triton/fp8_table.py
    (a bucket whose best is the rule's own pick ("default") gets no entry)."""
    import ast
    shapes = dict(SHAPES, **SWEEP_EXTRA)
    table: dict = {}
    for line in text.splitlines():
        if "bench=fp8_decode_best" not in line:
            continue
        f = dict(p.split("=", 1) for p in line.split("  ") if "=" in p and not p.startswith("c="))
        if f["cfg"].strip() == "default":
            continue
        c = ast.literal_eval(line.split("c=", 1)[1].split("  ")[0])
        table.setdefault(shapes[f["shape"].strip()], {})[int(f["M"])] = c
    return table


if __name__ == "__main__":  # python -m bench.fp8_entries sweep.txt -> the DECODE table literal
    import pprint
    import sys
    pprint.pprint(table_from_sweep(open(sys.argv[1]).read()), width=120, sort_dicts=True)
