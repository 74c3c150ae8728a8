"""Split top-k for few long rows (kernels/triton/topk_long.py) vs torch.topk, CPU interpreter (subprocess):
several chunks, one chunk, rows with fewer eligible entries than k, rows ending mid-chunk, and the
dispatch from indexer.topk_rows (and the streaming kernel with the split turned off)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

_CODE = r"""
import json, torch
from kernels.triton import topk_long as tk, indexer as ti
res = {}
def case(name, limits, e_cap, k, chunk, via_dispatch=False):
    g = torch.Generator().manual_seed(len(limits) * 7 + e_cap)
    rows = len(limits)
    scores = torch.randn(rows + 1, e_cap, generator=g)  # row 0 belongs to an earlier tile (row0 = 1)
    pos = torch.tensor([0] + [l - 1 for l in limits], dtype=torch.int32)  # ratio 1: limit = pos + 1
    out = torch.full((rows + 1, k), -7, dtype=torch.int32)
    if via_dispatch:
        ti.topk_rows(scores[1:], pos, out, 1, rows, k, 1, reg_max=chunk)
    else:
        tk.topk_rows_split(scores[1:], pos, out, 1, rows, k, 1, chunk=chunk)
    bad = int((out[0] != -7).sum())  # untouched row
    for r, lim in enumerate(limits):
        got = sorted(out[r + 1].tolist())
        if lim <= k:
            want = sorted(list(range(lim)) + [-1] * (k - lim))
        else:
            want = sorted(scores[r + 1, :lim].topk(k).indices.tolist())
        bad += got != want
    res[name] = bad
case("chunks", [700, 300, 10, 65, 64], 700, 16, 64)
case("one-chunk", [50, 20, 3], 50, 16, 64)
case("exact-k", [16, 17, 128], 128, 16, 32)
case("dispatch", [700, 250], 700, 16, 64, via_dispatch=True)
ti._SPLIT["on"] = False  # the streaming one-program-per-row kernel keeps its coverage
case("stream", [700, 250, 9], 700, 16, 64, via_dispatch=True)
print("RESULT", json.dumps(res))
"""


def test_split_topk_matches_torch():
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, TRITON_INTERPRET="1", V4_TOPK_CHUNK="64",
               PYTHONPATH=str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run([sys.executable, "-c", _CODE], cwd=root, env=env, capture_output=True, text=True, timeout=300)
    line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
    assert p.returncode == 0 and line, f"interpreter run failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    res = json.loads(line[-1][7:])
    assert all(v == 0 for v in res.values()), res
