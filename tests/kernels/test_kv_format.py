"""kernels/kv_format.py is the one definition of the KV formats: every layer reads it."""

import pytest
import torch

from engine.config import EngineArgs
from kernels import kv_format
from kvcache.sizing import format_table, kv_size_report
from models.config import flash_config
from models.mtp import mtp_state_shapes
from models.state import layer_state_specs
from server.cli import build_parser


def test_v4_widths():
    assert kv_format.entry_bytes(512, 64) == 584
    assert kv_format.index_key_bytes(128, "fp8") == 132
    assert kv_format.index_key_bytes(128, "fp4") == 68


def test_cli_choices_are_the_registry():
    action = next(a for a in build_parser()._subparsers._group_actions[0].choices["serve"]._actions
                  if a.dest == "kv_cache_dtype")
    assert tuple(action.choices) == kv_format.CLI_CHOICES


@pytest.mark.parametrize("fmt", list(kv_format.KV_FORMATS.values()), ids=lambda f: f.name)
def test_every_format_reaches_engine_and_state(fmt):
    for spelling in (fmt.cli, fmt.name):
        args = EngineArgs(model="m", kv_cache_dtype=spelling)
        args.validate()
        assert args.kv_format == fmt.name
    cfg = flash_config(num_layers=4)
    csa = next(i for i, m in enumerate(cfg.compress_ratios) if m == 4)
    specs = {s.name: s for s in layer_state_specs(cfg, csa, 128, fmt.name)}
    assert specs["window"].shape[-1] == fmt.entry_width(cfg.head_dim, cfg.qk_rope_head_dim)
    assert specs["compressed"].packed == fmt.packed
    assert specs["index_keys"].shape[-1] == fmt.index_key_width(cfg.index_head_dim)
    assert mtp_state_shapes(cfg, fmt.name)["window"] == ((cfg.sliding_window, specs["window"].shape[-1]), fmt.packed)


def test_unknown_format_is_refused_everywhere():
    with pytest.raises(ValueError, match="kv_cache_dtype"):
        EngineArgs(model="m", kv_cache_dtype="nvfp4").validate()
    with pytest.raises(ValueError, match="kv_format"):
        layer_state_specs(flash_config(num_layers=4), 0, 128, "nvfp4")


def test_sizing_reads_the_registry():
    cfg = flash_config(num_layers=4)
    rep = kv_size_report(cfg, "fp8", "fp4")
    assert rep.window_bytes_per_seq == 4 * cfg.sliding_window * kv_format.entry_bytes(cfg.head_dim, cfg.qk_rope_head_dim)
    # the (entries, indexer) pairs that are engine formats get their prefix-snapshot row, others do not
    assert kv_format.find("fp8", "fp4").name == "fp8_fp4idx"
    assert kv_format.find("dense", "fp4") is None
    assert "prefix-cache snapshot" in format_table(cfg, "flash", "fp8", "fp4", torch.bfloat16)
    assert "prefix-cache snapshot" not in format_table(cfg, "flash", "bf16", "fp4", torch.bfloat16)


def test_fp8_entries_on_cuda_need_whole_scale_blocks_of_nope_dims():
    """The Triton kernels store FP8 entries in 64-dim scale blocks: the engine refuses, at build time and
    naming the config values, an FP8 format on CUDA whose nope dims (head_dim - rope) are not a multiple
    of 64; the CPU twins and dense entries take any width."""
    import re

    for fmt in ("fp8", "fp8_fp4idx"):
        with pytest.raises(ValueError, match=re.escape(f"kv_format {fmt!r} on CUDA") + r".*multiple of 64.*"
                           r"head_dim=64, qk_rope_head_dim=16 \(nope 48\)"):
            kv_format.check_kernel_dims(fmt, 64, 16, "cuda")
        kv_format.check_kernel_dims(fmt, 64, 16, "cpu")
        kv_format.check_kernel_dims(fmt, 128, 64, "cuda:0")
        kv_format.check_kernel_dims(fmt, 512, 64, "cuda")
    kv_format.check_kernel_dims("bf16", 64, 16, "cuda")


def test_engine_build_checks_the_kernel_dims_first(tiny_ckpt, monkeypatch):
    """LLMEngine on CUDA with FP8 entries and a tiny model (nope 48): the clear error, before any weight
    loads (CUDA availability faked: the check comes before anything touches the device)."""
    from engine.llm_engine import LLMEngine

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(ValueError, match=r"fp8_fp4idx.*head_dim=64, qk_rope_head_dim=16 \(nope 48\)"):
        LLMEngine(EngineArgs(model=str(tiny_ckpt), device="cuda", kv_cache_dtype="fp8_fp4idx"))
