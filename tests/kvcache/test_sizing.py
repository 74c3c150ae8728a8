"""Sizing: block size, blocks for a budget, and the per-token byte report (architecture.md §5.3-5.4)."""

import logging

import pytest
import torch

from kvcache import sizing
from kernels.kv_format import ENCODINGS as FORMATS
from kernels.kv_format import KVEntryFormat
from kvcache.sizing import choose_block_size, kv_size_report, log_cache_plan, num_blocks_for_budget
from models.config import flash_config, pro_config, tiny_config
from models.state import state_bytes


def test_entry_formats():
    assert FORMATS["fp8"].main_entry_bytes(512, 64) == 584  # 448 FP8 + 128 BF16 rope + 7 scales + 1 pad
    assert FORMATS["bf16"].main_entry_bytes(512, 64) == 1024
    assert FORMATS["fp8"].indexer_key_bytes(128) == 132
    assert FORMATS["fp4"].indexer_key_bytes(128) == 68
    assert FORMATS["bf16"].indexer_key_bytes(128) == 256
    assert FORMATS["fp8"].main_entry_bytes(64, 16) % 8 == 0


def test_flash_and_pro_bytes_per_token():
    assert round(kv_size_report(flash_config(), "fp8", "fp4").bytes_per_token) == 3514
    assert round(kv_size_report(pro_config(), "fp8", "fp4").bytes_per_token) == 5031
    assert round(kv_size_report(flash_config(), "fp8", "fp8").bytes_per_token) == 3850
    assert round(kv_size_report(pro_config(), "fp8", "fp8").bytes_per_token) == 5511
    assert kv_size_report(flash_config(), "bf16", "bf16").bytes_per_token == 6880


def test_fixed_bytes_per_sequence():
    rep = kv_size_report(flash_config(), "fp8", "fp4")
    assert rep.window_bytes_per_seq == 43 * 128 * 584
    # CSA: 2x FP32 [8, 1024] + 2x FP32 [8, 256]; HCA: 2x FP32 [128, 512]
    assert rep.tail_bytes_per_seq == 21 * (2 * 8 * 1024 * 4 + 2 * 8 * 256 * 4) + 20 * 2 * 128 * 512 * 4
    assert rep.fixed_bytes_per_seq == rep.window_bytes_per_seq + rep.tail_bytes_per_seq
    assert rep.seq_bytes(2**20) == rep.fixed_bytes_per_seq + 3514.25 * 2**20  # ~3.43 GiB of growth at 1M


def test_bf16_report_matches_the_allocated_state():
    for cfg in (tiny_config(), flash_config(4)):
        bs = choose_block_size(cfg)
        per_slot, per_block = state_bytes(cfg, bs, torch.bfloat16)
        rep = kv_size_report(cfg, "bf16", "bf16")
        assert per_block == rep.bytes_per_token * bs
        assert per_slot == rep.fixed_bytes_per_seq


def test_bad_formats():
    with pytest.raises(ValueError, match="unknown"):
        kv_size_report(tiny_config(), "int3", "fp4")
    with pytest.raises(ValueError, match="indexer-only"):
        kv_size_report(tiny_config(), "fp4", "fp4")
    custom = KVEntryFormat("fat", lambda c, r: 4 * c, lambda ci: 4 * ci)
    assert kv_size_report(tiny_config(), custom, custom).bytes_per_token == 2 * kv_size_report(
        tiny_config(), "bf16", "bf16").bytes_per_token


def test_choose_block_size():
    assert choose_block_size(flash_config()) == 128
    assert choose_block_size(tiny_config()) == 64  # lcm(4, 8) = 8
    assert choose_block_size(tiny_config(compress_ratios=(0, 4, 24))) == 72  # lcm 24
    assert choose_block_size(tiny_config(compress_ratios=(0, 0))) == 64
    assert choose_block_size(tiny_config(), 16) == 16
    with pytest.raises(ValueError, match="multiple"):
        choose_block_size(flash_config(), 64)
    with pytest.raises(ValueError):
        choose_block_size(tiny_config(), 0)


def test_num_blocks_for_budget():
    cfg = tiny_config()
    per_slot, per_block = state_bytes(cfg, 64, torch.float32)
    budget = 4 * per_slot + 10 * per_block + per_block - 1
    assert num_blocks_for_budget(cfg, budget, 4, 64, torch.float32) == 10
    with pytest.raises(ValueError, match="cannot hold 4 sequence state slots"):
        num_blocks_for_budget(cfg, 4 * per_slot + per_block - 1, 4, 64, torch.float32)


def test_gpu_budget_needs_cuda():
    with pytest.raises(ValueError):
        sizing.gpu_kv_budget(0.0)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            sizing.gpu_kv_budget(0.9)
    else:
        assert sizing.gpu_kv_budget(0.5) > 0


def test_log_cache_plan_is_one_line(caplog):
    logger = logging.getLogger("v4serve.test")
    with caplog.at_level(logging.INFO, logger="v4serve.test"):
        log_cache_plan(logger, weights_bytes=3 << 30, kv_bytes=1 << 30, num_blocks=100, block_size=128, num_slots=8)
    assert len(caplog.records) == 1
    msg = caplog.records[0].getMessage()
    assert "\n" not in msg and "100 blocks" in msg and "12800 concurrent tokens" in msg and "8 concurrent" in msg


def test_cli(capsys):
    sizing.main(["--preset", "flash", "--format", "fp8", "--indexer", "fp4"])
    out = capsys.readouterr().out
    assert "3,514.25" in out and "2/21/20" in out
    sizing.main(["--preset", "tiny", "--format", "bf16", "--indexer", "bf16"])
    assert "bytes per token" in capsys.readouterr().out
