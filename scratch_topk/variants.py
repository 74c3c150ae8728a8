import os, sys, torch, json
sys.path.insert(0, ".")
from bench.kernels import bench_ms
from bench.topk_entries import prefill_rows, ROWS, K, RATIO
from kernels.triton import indexer as ti, topk_prefill as tp
res = {}
for e_cap in [int(x) for x in os.environ.get("ECAPS", "131072").split(",")]:
    scores, pos = prefill_rows(e_cap, "normal")
    want = torch.full((ROWS, K), -1, dtype=torch.int32, device="cuda"); got = want.clone()
    if os.environ.get("STREAM"):
        print("stream", e_cap, bench_ms(lambda: ti.topk_rows(scores, pos, want, 0, ROWS, K, RATIO)) * 1e3, flush=True)
    ti.topk_rows(scores, pos, want, 0, ROWS, K, RATIO)
    us = bench_ms(lambda: tp.topk_rows_prefill(scores, pos, got, 0, ROWS, K, RATIO)) * 1e3
    print("cfg", {k: v for k, v in os.environ.items() if k.startswith("V4_TOPK")}, e_cap, f"{us:.1f}us", torch.equal(got, want), flush=True)
    del scores
