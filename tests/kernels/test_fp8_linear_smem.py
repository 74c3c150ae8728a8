"""The block linear's tile configs fit in the H200's shared memory for every row count, weight width and
dual-weight launch (a dual bf16 launch at 65..256 rows once asked for 320 KB and died on the GPU)."""

import pytest

pytest.importorskip("triton")

from kernels.triton.fp8_linear import SMEM_BYTES, fit_shared_memory, pick_config  # noqa: E402


@pytest.mark.parametrize("m", [1, 16, 33, 64, 65, 128, 200, 256, 257, 4096])
@pytest.mark.parametrize("x_bytes,w_bytes", [(2, 1), (2, 2), (1, 1), (4, 4), (2, 4)])
@pytest.mark.parametrize("dual", [False, True])
def test_stage_buffers_fit(m, x_bytes, w_bytes, dual):
    cfg = pick_config(m, 4096, 4096, x_bytes == 1, False)
    fit_shared_memory(cfg, x_bytes, w_bytes, dual)
    per_stage = cfg["BM"] * cfg["BK"] * x_bytes + (2 if dual else 1) * cfg["BN"] * cfg["BK"] * w_bytes
    assert cfg["num_stages"] >= 1
    assert cfg["num_stages"] == 1 or per_stage * cfg["num_stages"] <= SMEM_BYTES


def test_dual_bf16_mid_batch_loses_stages():
    cfg = pick_config(200, 512, 4096, False, False)
    before = cfg["num_stages"]
    fit_shared_memory(cfg, 2, 2, True)
    assert cfg["num_stages"] < before
