"""bench/kernels.py entries for issue 11's MXFP4 MoE decode row: `python bench/kernels.py --only moe_decode_fp4`.

moe_decode_fp4   MXFP4 experts, uniform routing, batch 1 / 8 / 64 / 256 (8 routings per CUDA graph, as
                 the "moe" entry), % of HBM over touched expert bytes: the dispatched path
                 (`kernels.moe_experts`), the issue-6 kernel (`triton.moe.moe_experts`, "interleave") and the
                 swapped-operand decode kernel (`triton.moe_decode`) over a few tile configs; each variant's
                 relative error against the twin first. V4_MOE_BENCH_CFGS=quick limits the sweep.
"""

from __future__ import annotations

import os

import torch

# (name, BT, BN, BK, warps, stages, WORDS); ALIGNED: both at <= 48 pairs, else the aligned layout
SWAP_CFGS = (("words_bn64_bk128_s4", 16, 64, 128, 4, 4, True), ("words_bn64_bk128_w2_s4", 16, 64, 128, 2, 4, True),
             ("words_bn32_bk128_w2_s4", 16, 32, 128, 2, 4, True), ("words_bn128_bk128_s3", 16, 128, 128, 4, 3, True),
             ("words_bn128_bk128_s3_w8", 16, 128, 128, 8, 3, True), ("words_bn64_bk128_s6", 16, 64, 128, 4, 6, True),
             ("bytes_bn64_bk128_s4", 16, 64, 128, 4, 4, False))
PDL_CFGS = (("words_bn64_bk128_s4", 16, 64, 128, 4, 4, 1), ("words_bn64_bk128_w2_s4", 16, 64, 128, 2, 4, 1))
# (name, BT, BN, BK, warps, stages, gate/up SPLIT_K, down SPLIT_K)
SPLIT_CFGS = (("words_bn64_bk128_s4_sk1x2", 16, 64, 128, 4, 4, 1, 2), ("words_bn64_bk128_w2_s4_sk1x2", 16, 64, 128, 2, 4, 1, 2),
              ("words_bn64_bk128_s4_sk2x2", 16, 64, 128, 4, 4, 2, 2), ("words_bn64_bk128_w2_s4_sk2x2", 16, 64, 128, 2, 4, 2, 2),
              ("words_bn64_bk128_w2_s4_sk4x2", 16, 64, 128, 2, 4, 4, 2))
BATCHES = (1, 8, 64, 256)


def swap_variants(p: int, quick: bool = False):
    """(tag, gate/up config, down config) of the swapped kernel's sweep at p (token, slot) pairs."""
    out = []
    for name, bt, bn, bk, nw, st, words in SWAP_CFGS[:2 if quick else None]:
        for aligned in ((False, True) if p <= 48 else (True,)):
            c = dict(BT=bt, BN=bn, BK=bk, num_warps=nw, num_stages=st, ALIGNED=aligned, WORDS=words)
            out.append((f"swap_{name}" + ("_al" if aligned else "_pair"), c, c))
    if p <= 48 and not quick:  # K split over programs (few pairs: few programs)
        for name, bt, bn, bk, nw, st, sk1, sk2 in SPLIT_CFGS:
            c = dict(BT=bt, BN=bn, BK=bk, num_warps=nw, num_stages=st, ALIGNED=False, WORDS=True)
            out.append((f"swap_{name}_pair", dict(c, SPLIT_K=sk1), dict(c, SPLIT_K=sk2)))
    for name, bt, bn, bk, nw, st, sk in PDL_CFGS:  # down launch with PDL (+ L2 prefetch of its weights)
        c = dict(BT=bt, BN=bn, BK=bk, num_warps=nw, num_stages=st, ALIGNED=p > 48, WORDS=True, PDL=1)
        out.append((f"swap_{name}_pdl" + ("_al" if p > 48 else "_pair"), c, dict(c, SPLIT_K=sk)))
    return out


def install(register, bench_ms):
    from bench import kernels as K

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
            p = n * K.TOPK
            out = [("dispatch", lambda x, w, ids: kernels.moe_experts(x, ws[0], ws[1], ws[2], w, ids, 10.0)),
                   ("interleave", lambda x, w, ids: tm.moe_experts(x, ws[0], ws[1], ws[2], w, ids, 10.0,
                                                                    decode_kernel=False))]
            for tag, c1, c2 in swap_variants(p, quick):
                out.append((tag, lambda x, w, ids, c1=c1, c2=c2: md.moe_experts_decode(x, ws[0], ws[1], ws[2], w, ids,
                                                                                        10.0, c1, c2)))
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
        del ws
        torch.cuda.empty_cache()
