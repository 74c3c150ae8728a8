"""Resident FP8 grouped output projection (wo_a per group as FP8 128x128 blocks) == dequantized."""

from __future__ import annotations

import pytest
import torch

from models.config import tiny_config
from models.loading import load_model
from models.synthetic import write_synthetic_checkpoint


def test_grouped_wo_a_resident_fp8_matches_dequantized(tmp_path):
    # o_lora_rank 128 and 2 heads x 64 per group: every group is whole 128x128 scale blocks
    cfg = tiny_config(compress_ratios=(0, 4, 8), o_lora_rank=128, num_attention_heads=4, o_groups=2)
    write_synthetic_checkpoint(cfg, tmp_path, seed=3, quantize=True)
    dense = load_model(tmp_path, "cpu", torch.float32)
    resident = load_model(tmp_path, "cpu", torch.float32, resident_quant=True)
    assert resident.layers[1].attn.wo_a.weight.dtype == torch.float8_e4m3fn
    assert dense.layers[1].attn.wo_a.weight.dtype == torch.float32
    ids = torch.arange(40) * 13 % cfg.vocab_size
    torch.testing.assert_close(resident.logits(ids), dense.logits(ids), rtol=1e-5, atol=1e-5)


def test_unaligned_wo_a_stays_dense(tmp_path):
    cfg = tiny_config(compress_ratios=(0, 4))  # o_lora_rank 16: not whole scale blocks
    write_synthetic_checkpoint(cfg, tmp_path, seed=3, quantize=True)
    resident = load_model(tmp_path, "cpu", torch.float32, resident_quant=True)
    assert resident.layers[0].attn.wo_a.weight.dtype == torch.float32
    assert resident.layers[0].attn.wq_a.weight.dtype == torch.float8_e4m3fn


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_grouped_wo_a_resident_fp8_gpu(tmp_path, dtype):
    """On CUDA the group slices run through the Triton FP8 linear (strided activations)."""
    cfg = tiny_config(compress_ratios=(0, 4, 8), o_lora_rank=128, num_attention_heads=4, o_groups=2, hidden_size=256)
    write_synthetic_checkpoint(cfg, tmp_path, seed=3, quantize=True)
    a = load_model(tmp_path, "cuda", dtype, resident_quant=True)
    b = load_model(tmp_path, "cuda", dtype, resident_quant=False)
    assert a.layers[1].attn.wo_a.weight.dtype == torch.float8_e4m3fn
    ids = torch.arange(200, device="cuda") * 13 % cfg.vocab_size
    la, lb = a.logits(ids), b.logits(ids)
    assert (la - lb).abs().max().item() <= 2e-2 * lb.abs().max().item()
    assert (la.argmax(-1) == lb.argmax(-1)).float().mean().item() >= 0.99
