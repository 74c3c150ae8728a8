"""Full-prefill logits vs the transformers 5.17 DeepseekV4ForCausalLM oracle (fp32, eager)."""

from __future__ import annotations

import pytest
import torch

from models.config import tiny_config

from tests.models.oracle import build_oracle, oracle_logits, our_model, random_state_dict

# (compress_ratios, index_topk, num_hash_layers): together they cover sliding-only, CSA and HCA
# layers (HCA first as in V4-Pro), hash and routed MoE, and top-k below and above the number of
# eligible compressed entries.
CONFIGS = [
    ((0, 4, 8, 4), 4, 1),  # Flash-like: sliding first, CSA/HCA interleaved, top-k << eligible
    ((16, 16, 4, 16), 128, 2),  # Pro-like: HCA first; top-k > every eligible count
    ((0, 0, 4, 0), 8, 0),  # no hash layers; CSA top-k crosses the eligible count mid-sequence
    ((4, 8, 0, 4), 16, 3),  # all hash layers
]


@pytest.mark.parametrize("ratios,topk,n_hash", CONFIGS)
def test_prefill_logits_match_oracle(ratios, topk, n_hash):
    cfg = tiny_config(compress_ratios=ratios, index_topk=topk, num_hash_layers=n_hash)
    sd = random_state_dict(cfg, seed=1)
    ours = our_model(cfg, sd)
    oracle = build_oracle(cfg, sd)
    ids = torch.randint(0, cfg.vocab_size, (300,), generator=torch.Generator().manual_seed(2)).tolist()
    a = ours.logits(ids)
    b = oracle_logits(oracle, ids)
    assert a.shape == (300, cfg.vocab_size)
    assert b.abs().max() > 1.0  # logits are not degenerate
    diff = (a - b).abs().max().item()
    print(f"parity {ratios} topk={topk}: max abs diff {diff:.2e}")
    assert diff <= 1e-4
