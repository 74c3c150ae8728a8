"""The block linear's launches compile for sm_90 and fit the H200's shared memory (232,448 B per block) on
every path, decode variants included.

A dual bf16 launch at 65..256 rows once asked for 320 KB, and q_norm + wq_b on fp32 rows (the RMSNorm
prologue's own pipelined x tile) for 247,296 B: both died on the GPU. Here (CPU): the estimate that
`fit_shared_memory` uses, and the real number -- every launch `pick_config` / `launch` produce for the
V4-Flash dense shapes and glue paths, compiled for sm_90 exactly as it would launch (meta tensors,
Triton's own argument specialization), `metadata.shared` <= the limit. On the GPU `launch` also checks
each compiled kernel against the device before its first launch (`_fitted_stages`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")

from kernels.triton.fp8_linear import SMEM_BYTES, SMEM_LIMIT, fit_shared_memory, pick_config, smem_estimate  # noqa: E402


@pytest.mark.parametrize("m", [1, 16, 33, 64, 65, 128, 200, 256, 257, 4096])
@pytest.mark.parametrize("x_bytes,w_bytes", [(2, 1), (2, 2), (1, 1), (4, 4), (2, 4), (4, 1)])
@pytest.mark.parametrize("dual", [False, True])
@pytest.mark.parametrize("norm_in", [False, True])
def test_stage_buffers_fit(m, x_bytes, w_bytes, dual, norm_in):
    cfg = pick_config(m, 4096, 4096, x_bytes == 1, False)
    fit_shared_memory(cfg, x_bytes, w_bytes, dual, norm_in)
    assert cfg["num_stages"] >= 1
    assert cfg["num_stages"] == 1 or smem_estimate(cfg, x_bytes, w_bytes, dual, norm_in) <= SMEM_BYTES


def test_dual_bf16_mid_batch_loses_stages():
    cfg = pick_config(200, 512, 4096, False, False)
    before = cfg["num_stages"]
    fit_shared_memory(cfg, 2, 2, True)
    assert cfg["num_stages"] < before


def test_norm_prologue_fp32_loses_stages():
    """The failing GPU launch (tests/models/test_resident_wo_a.py, fp32 model): 4 stages = 247,296 B."""
    cfg = pick_config(200, 256, 32, False, False)
    assert cfg["num_stages"] == 4
    assert smem_estimate(cfg, 4, 1, False, True) >= 247296
    fit_shared_memory(cfg, 4, 1, False, True)
    assert cfg["num_stages"] < 4


# ---- compiled for sm_90 ----------------------------------------------------------------------------
FLASH = {"wq_a": (1024, 4096), "wq_b": (32768, 1024), "wkv": (512, 4096), "wo_b": (4096, 8192),
         "idx_wq_b": (8192, 1024), "shared_w13": (2048, 4096), "shared_w2": (4096, 2048), "mtp_proj": (4096, 4096)}
ROWS = (1, 16, 64, 200, 4096)


def _cases():
    """(label, launch kwargs builder) for every path at the V4-Flash shapes and decode / prefill row counts."""
    from tests.kernels.fp8_compile import meta_operands
    bf, f32 = torch.bfloat16, torch.float32
    for m in ROWS:
        for name, (n, k) in FLASH.items():
            x, w, _, y = meta_operands(m, n, k)
            yield f"linear {name} m{m}", (x, w, y), {}
        x, w, _, y = meta_operands(m, 32768, 1024)
        yield f"norm_linear wq_b m{m}", (x, w, y), dict(norm_weight=torch.empty(1024, dtype=bf, device="meta"),
                                                         norm_eps=1e-6)
        x, w, _, y = meta_operands(m, 1024, 4096, groups=8)
        yield f"grouped wo_a m{m}", (x, w, y), dict(groups=8, x_gs=4096, w_gs=1024, y_gs=1024)
        x, w, w3, y = meta_operands(m, 2048, 4096, dual=True)
        yield f"swiglu shared_w13 m{m}", (x, w, y), dict(w2=w3, epi=1, round_out=True, limit=10.0)
        x, wkv, wg, kv = meta_operands(m, 1024, 4096, w_dtype=bf, dual=True, y_dtype=f32)
        yield f"compressor bf16 m{m}", (x, wkv, kv), dict(
            w2=wg, y2=torch.empty_like(kv), epi=2, tab=torch.empty(4, 1024, dtype=f32, device="meta"),
            idx=torch.empty(m, dtype=torch.int64, device="meta"))
        x, wg, _, yg = meta_operands(m, 256, 4096, w_dtype=bf, y_dtype=f32)
        yield f"router fp32-out m{m}", (x, wg, yg), {}
        x, w, _, y = meta_operands(m, 4096, 4096)
        yield f"act_quant mtp_proj m{m}", (x, w, y), dict(act_quant=True)
    # decode variants forced on every path (swap / GEMV, K steps 128..1024, L2 prefetch, PDL)
    variants = [dict(BM=16, BN=64, BK=128, GROUP_M=1, num_warps=4, num_stages=4, SPLIT_K=2, VAR=1),
                dict(BM=16, BN=64, BK=256, GROUP_M=1, num_warps=4, num_stages=3, SPLIT_K=1, VAR=1, PREFETCH=8),
                dict(BM=64, BN=128, BK=128, GROUP_M=1, num_warps=4, num_stages=3, SPLIT_K=2, VAR=1, PDL=True),
                dict(BM=1, BN=32, BK=128, GROUP_M=1, num_warps=4, num_stages=3, SPLIT_K=1, VAR=2),
                dict(BM=1, BN=8, BK=512, GROUP_M=1, num_warps=4, num_stages=3, SPLIT_K=2, VAR=2, PREFETCH=8,
                     PDL=True)]
    for i, c in enumerate(variants):
        m = c["BM"]
        x, w, _, y = meta_operands(m, 4096, 4096)
        yield f"variant{i} linear", (x, w, y), dict(config=c)
        x, w, _, y = meta_operands(m, 1024, 4096, groups=8)
        yield f"variant{i} grouped", (x, w, y), dict(groups=8, x_gs=4096, w_gs=1024, y_gs=1024, config=c)
        x, w, w3, y = meta_operands(m, 2048, 4096, dual=True)
        yield f"variant{i} swiglu", (x, w, y), dict(w2=w3, epi=1, round_out=True, limit=10.0, config=c)
        x, w, _, y = meta_operands(m, 32768, 1024)
        yield f"variant{i} norm_linear", (x, w, y), dict(norm_weight=torch.empty(1024, dtype=bf, device="meta"),
                                                          norm_eps=1e-6, config=c)
        x, wkv, wg, kv = meta_operands(m, 1024, 4096, w_dtype=bf, dual=True, y_dtype=f32)
        yield f"variant{i} compressor", (x, wkv, kv), dict(
            w2=wg, y2=torch.empty_like(kv), epi=2, tab=torch.empty(4, 1024, dtype=f32, device="meta"),
            idx=torch.empty(m, dtype=torch.int64, device="meta"), config=c)
    # fp32 activations (the fp32 model of the tests): the launch that asked for 247,296 B
    x, w, _, y = meta_operands(200, 256, 32, x_dtype=f32)
    yield "norm_linear fp32 m200", (x, w, y), dict(norm_weight=torch.empty(32, dtype=f32, device="meta"),
                                                   norm_eps=1e-6)


def _compile_one(item):
    from tests.kernels.fp8_compile import compile_launch
    label, (x, w, y), kw = item
    k = compile_launch(x, w, y, **kw)
    return label, k.metadata.shared


def compiled_shared() -> list:
    """[(label, shared bytes)] of every distinct launch of _cases (deduplicated by kernel signature)."""
    from concurrent.futures import ProcessPoolExecutor

    from kernels.triton import fp8_linear as fl
    seen, todo = set(), []
    for label, ops, kw in _cases():
        grid, args, kkw = fl.launch(*ops, dry_run=True, **kw)
        key = (tuple(kkw.items()), tuple(getattr(a, "dtype", None) for a in args[:11]))
        if key not in seen:
            seen.add(key)
            todo.append((label, ops, kw))
    with ProcessPoolExecutor(max(1, min(4, os.cpu_count() or 1))) as ex:
        return list(ex.map(_compile_one, todo))


@pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU runs these launches for real")
def test_compiled_launches_fit_sm90():
    root = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(root) + os.pathsep + env.get("PYTHONPATH", "")
    code = ("from tests.kernels.test_fp8_linear_smem import compiled_shared\n"
            "for label, sh in compiled_shared(): print('SMEM', sh, label)")
    p = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, timeout=1500)
    if p.returncode and "ptxas" in p.stderr and "not found" in p.stderr.lower():
        pytest.skip("no ptxas in this Triton install")
    assert p.returncode == 0, p.stderr[-3000:]
    rows = [ln.split(" ", 2) for ln in p.stdout.splitlines() if ln.startswith("SMEM ")]
    assert len(rows) >= 40
    over = [(int(sh), label) for _, sh, label in rows if int(sh) > SMEM_LIMIT]
    assert not over, over
    assert any("norm_linear fp32" in label for _, _, label in rows)
