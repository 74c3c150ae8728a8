"""bench/kernels.py entry for the indexer's top-k at long-prompt prefill: `python bench/kernels.py --only topk_prefill`.

topk_prefill   2048 rows of a prefill chunk ending at the context's end (limits e_cap - 512 .. e_cap at ratio 4),
               k 512, e_cap 32K / 128K / 256K entries (128K / 512K / 1M context), random normal scores (and
               one row set with a rising trend, the sample's bias case): indexer.topk_rows' one-program-per-row
               streaming kernel against topk_prefill.topk_rows_prefill (sample, filter, select), us per call
               (CUDA-graph replay), the speed-up, whether the outputs are identical (ids, order, ties) and how
               many rows fell back to the streaming passes (scan form's candidate counts); `prefill_us` / `exact` /
               `speedup`: the default filter form (topk_prefill.ATOMIC), `scan_us` / `atomic_us` (+ `_exact`):
               each. Registered by `install(register, bench_ms)`.
"""

from __future__ import annotations

import torch

ROWS, K, RATIO = 2048, 512, 4
CASES = ((32768, "normal"), (131072, "normal"), (262144, "normal"), (131072, "ramp"))


def prefill_rows(e_cap: int, dist: str, seed: int = 0):
    """Scores [ROWS, e_cap] and positions of a prefill chunk ending at position RATIO * e_cap - 1."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    scores = torch.randn(ROWS, e_cap, device="cuda", generator=g)
    if dist == "ramp":  # later entries score higher (recent keys): the top-k crowd the end of each row
        scores += torch.linspace(0, 4, e_cap, device="cuda")
    pos = torch.arange(RATIO * e_cap - ROWS, RATIO * e_cap, device="cuda", dtype=torch.int32)
    return scores, pos


def install(register, bench_ms):
    @register("topk_prefill")
    def bench_topk_prefill(ctx):
        from kernels.triton import indexer as ti
        from kernels.triton import topk_prefill as tp
        for e_cap, dist in CASES:
            scores, pos = prefill_rows(e_cap, dist)
            want = torch.full((ROWS, K), -1, dtype=torch.int32, device="cuda")
            got = torch.full_like(want, -1)
            counts = torch.zeros(ROWS, dtype=torch.int32, device="cuda")
            stream = lambda: ti.topk_rows(scores, pos, want, 0, ROWS, K, RATIO)  # noqa: E731 (2048 rows: streaming)
            keep, tp.ENABLED = tp.ENABLED, False  # the reference is the streaming kernel whatever V4_TOPK_PREFILL says
            try:
                us_s = bench_ms(stream) * 1e3
                stream()
            finally:
                tp.ENABLED = keep
            us, exact = {}, {}
            for form in (False, True):  # the filter's scan and atomic forms
                run = lambda: tp.topk_rows_prefill(scores, pos, got, 0, ROWS, K, RATIO, atomic=form)  # noqa: E731
                us[form] = bench_ms(run) * 1e3
                got.fill_(-1)
                run()
                exact[form] = bool(torch.equal(got, want))
            tp.topk_rows_prefill(scores, pos, got, 0, ROWS, K, RATIO, counts=counts, atomic=False)
            c = counts.float()
            us_p = us[tp.ATOMIC]
            ctx.emit(bench="topk_prefill", e_cap=e_cap, dist=dist, rows=ROWS, k=K, stream_us=us_s, prefill_us=us_p,
                     scan_us=us[False], scan_exact=exact[False], atomic_us=us[True], atomic_exact=exact[True],
                     speedup=us_s / us_p, exact=exact[tp.ATOMIC],
                     fallback_rows=int(((counts < K) | (counts > tp.CAP)).sum()),
                     cand_mean=float(c.mean()), cand_max=int(counts.max()), GBps=ROWS * e_cap * 4 / us_p / 1e3)
            del scores, want, got
            torch.cuda.empty_cache()
