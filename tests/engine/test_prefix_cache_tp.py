"""Prefix caching with tensor parallelism (gloo, CPU): every worker restores / saves the same slot
snapshots as rank 0 (they ride on the step description), so TP=2 with hits gives TP=1's tokens and
logits (<= 1e-4) without caching, for dense and packed (fp8_fp4idx) KV entries. A worker that kept
its own stale slot state would attend to the wrong window / tails and diverge."""

from __future__ import annotations

import os

import pytest
import torch

from engine.llm import LLM
from engine.sampling_params import SamplingParams
from models.config import tiny_config

os.environ.setdefault("V4SERVE_TP_START_METHOD", "forkserver")
BS = 16
BASE = torch.randint(2, 400, (50,), generator=torch.Generator().manual_seed(4)).tolist()
PROMPTS = [BASE, BASE + [9, 8, 7], BASE[:40] + [3] * 12, BASE[:40] + [4] * 9]
CACHED = [0, 48, 32, 32]  # snapshots at 32 (interval) and 48 (BASE's end); 40 is no block boundary
PARAMS = SamplingParams(max_tokens=6, temperature=0.0, logprobs=3, ignore_eos=True)
KW = dict(device="cpu", max_num_seqs=4, num_kv_blocks=64, max_num_batched_tokens=BS, block_size=BS,
          prefix_snapshot_interval=2 * BS)


@pytest.fixture(scope="module")
def tp_dir(tmp_path_factory):
    from models.synthetic import write_synthetic_checkpoint

    out = tmp_path_factory.mktemp("pc_tp_ckpt")
    cfg = tiny_config(num_attention_heads=8, o_groups=4, index_n_heads=16, n_routed_experts=8)
    write_synthetic_checkpoint(cfg, out, seed=0, quantize=False)
    return out


def _one_by_one(llm: LLM):
    outs = [llm.generate([p], PARAMS)[0] for p in PROMPTS]
    llm.engine.kv.check_integrity()
    return outs


@pytest.mark.parametrize("kv_format", ["auto", "fp8_fp4idx"])
def test_tp2_hits_match_tp1_without_caching(tp_dir, kv_format):
    ref = _one_by_one(LLM(str(tp_dir), enable_prefix_caching=False, kv_cache_dtype=kv_format, **KW))
    llm = LLM(str(tp_dir), tensor_parallel_size=2, kv_cache_dtype=kv_format, **KW)
    try:
        got = _one_by_one(llm)
    finally:
        llm.engine.shutdown()
    assert [o.num_cached_tokens for o in got] == CACHED
    for a, b in zip(ref, got):
        x, y = a.outputs[0], b.outputs[0]
        assert x.token_ids == y.token_ids
        for da, db in zip(x.logprobs, y.logprobs):
            assert da.keys() == db.keys() and all(abs(da[k] - db[k]) <= 1e-4 for k in da)
