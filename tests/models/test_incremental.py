"""Prefill + decode and chunked prefill reproduce the full-prefill logits (state carried exactly)."""

from __future__ import annotations

import math

import pytest
import torch

from models.config import tiny_config
from models.state import single_sequence_batch

from tests.models.oracle import build_oracle, oracle_logits, our_model, random_state_dict

BLOCK = 16


@torch.no_grad()
def run_chunks(model, ids: list[int], cuts: list[int], slot: int = 1) -> torch.Tensor:
    """Feed `ids` in chunks ending at `cuts` on one sequence's state (non-trivial block ids)."""
    nb = math.ceil(len(ids) / BLOCK)
    state = model.new_state(num_slots=3, num_blocks=2 * nb + 3, block_size=BLOCK)
    table = torch.arange(2 * nb + 2, 1, -2)[:nb]  # scattered, descending block ids
    outs, pos = [], 0
    for c in [*cuts, len(ids)]:
        if c <= pos:
            continue
        batch = single_sequence_batch(torch.tensor(ids[pos:c]), pos, table, slot=slot)
        outs.append(model.compute_logits(model(batch, state)))
        pos = c
    return torch.cat(outs)


CUTS = {
    "prefill+decode": lambda n: list(range(40, n)),
    "ratio boundaries": lambda n: [3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 47, 48, 63, 64, 65],
    "window boundaries": lambda n: [15, 16, 17, 18, 33, 50],
    "halves": lambda n: [n // 2],
    "decode from 1": lambda n: list(range(1, n)),
}


@pytest.fixture(scope="module")
def models_and_ref():
    cfg = tiny_config(compress_ratios=(0, 4, 16, 4, 16), index_topk=6)
    sd = random_state_dict(cfg, seed=3)
    ours = our_model(cfg, sd)
    ids = torch.randint(0, cfg.vocab_size, (120,), generator=torch.Generator().manual_seed(4)).tolist()
    return cfg, sd, ours, ids, ours.logits(ids)


@pytest.mark.parametrize("name", list(CUTS))
def test_chunked_equals_full(models_and_ref, name):
    cfg, _, ours, ids, full = models_and_ref
    got = run_chunks(ours, ids, CUTS[name](len(ids)))
    diff = (got - full).abs().max().item()
    print(f"{name}: max abs diff vs full prefill {diff:.2e}")
    assert diff <= 1e-4


def test_decode_matches_oracle(models_and_ref):
    cfg, sd, ours, ids, _ = models_and_ref
    oracle = build_oracle(cfg, sd)
    got = run_chunks(ours, ids, list(range(64, len(ids))))
    diff = (got - oracle_logits(oracle, ids)).abs().max().item()
    print(f"prefill 64 + decode vs oracle: max abs diff {diff:.2e}")
    assert diff <= 1e-4
