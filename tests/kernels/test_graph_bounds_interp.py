"""The attention / indexer Triton wrappers under CUDA-graph bounds: AttnMeta.max_seq_len fixed at a
bound far above every row's real length (engine/cuda_graph.py sets it to max_model_len) must give
the twins' results -- programs past a row's length exit, the indexer's score grid strides over key
tiles (V4_IDX_PROGRAMS=1: one program per row walks every tile). CPU interpreter, subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

_CODE = r"""
import json
import tests.kernels.kernel_cases as kc
orig = kc.make_meta
def bounded(*a, **k):
    meta, nb, ns = orig(*a, **k)
    meta.max_seq_len = 5 * meta.max_seq_len + 64  # the graph's bound, not the batch's
    return meta, nb, ns
kc.make_meta = bounded
dev = "cpu"
res = {}
specs = [(37, 1), (0, 1), (60, 1), (5, 1)]  # decode rows at several context lengths
res["idx"] = kc.indexer_case(specs, hi=4, ci=32, topk=4, block_size=16, fp8=False, device=dev)["rows_mismatch"]
res["idx-fp8"] = kc.indexer_case(specs, hi=4, ci=32, topk=4, block_size=16, fp8=True, device=dev)["rows_mismatch"]
import torch
a = kc.attention_case(specs, h=4, c=64, r=16, w=8, ratio=8, topk=0, block_size=16, fp8=False, device=dev,
                      dtype=torch.float32)
res["hca"] = max(a["nsplit=None"], a["nsplit=3"])
print("RESULT", json.dumps(res))
"""


@pytest.mark.parametrize("programs", ["1", "3", "16384"])
def test_bounded_grids_match_twins(programs):
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, TRITON_INTERPRET="1", V4_IDX_PROGRAMS=programs,
               PYTHONPATH=str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run([sys.executable, "-c", _CODE], cwd=root, env=env, capture_output=True, text=True, timeout=300)
    line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
    assert p.returncode == 0 and line, f"interpreter run failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    res = json.loads(line[-1][7:])
    assert res["idx"] == 0 and res["idx-fp8"] == 0, res
    assert res["hca"] < 1e-5, res
