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

import pytest
import torch

if not torch.cuda.is_available():  # before triton is imported, as the other kernel tests (the sm_90 compiles run
    os.environ["TRITON_INTERPRET"] = "1"  # in a subprocess without it)
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


# ---- compiled for sm_90 (cases in tests/kernels/fp8_compile.py) ------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU runs these launches for real")
def test_compiled_launches_fit_sm90():
    from tests.kernels.fp8_compile import run_without_interpreter
    out = run_without_interpreter("from tests.kernels.fp8_compile import compiled_shared\n"
                                  "for label, sh in compiled_shared(): print('SMEM', sh, label)", timeout=1500)
    rows = [ln.split(" ", 2) for ln in out.splitlines() if ln.startswith("SMEM ")]
    assert len(rows) >= 40
    over = [(int(sh), label) for _, sh, label in rows if int(sh) > SMEM_LIMIT]
    assert not over, over
    assert any("norm_linear fp32" in label for _, _, label in rows)
