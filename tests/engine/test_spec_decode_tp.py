"""Speculative decoding with tensor parallelism (gloo, CPU): TP=2 with k=2 gives TP=1's greedy tokens
without speculation, with forced partial acceptance (workers mirror verify, rollback and every MTP
pass; engine/spec_decode_tp.py) and with the MTP block's own drafts."""

from __future__ import annotations

import os

import pytest

from engine.llm import LLM
from engine.sampling_params import SamplingParams
from models.config import tiny_config

os.environ.setdefault("V4SERVE_TP_START_METHOD", "forkserver")
PROMPTS = [[5, 6, 7], list(range(20, 37)), list(range(100, 140))]
KW = dict(device="cpu", dtype="float32", max_num_seqs=4, num_kv_blocks=64, max_num_batched_tokens=16, block_size=16)


@pytest.fixture(scope="module")
def tp_dir(tmp_path_factory):
    from models.synthetic import write_synthetic_checkpoint

    out = tmp_path_factory.mktemp("tp_spec")
    cfg = tiny_config(num_attention_heads=8, o_groups=4, index_n_heads=16, n_routed_experts=8)
    write_synthetic_checkpoint(cfg, out, seed=0, quantize=False)
    return out


def test_tp2_speculative_equals_tp1(tp_dir):
    params = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True, logprobs=2)
    base = LLM(str(tp_dir), **KW).generate(PROMPTS, params)
    ref = {str(i): p + o.outputs[0].token_ids for i, (o, p) in enumerate(zip(base, PROMPTS))}
    llm = LLM(str(tp_dir), tensor_parallel_size=2, speculative_config={"method": "mtp", "num_speculative_tokens": 2},
              **KW)
    try:
        spec = llm.engine.spec

        def hook(seq, pos, d):  # the reference continuation, wrong at a position cycling with pos
            full = ref[seq.request_id]
            return [((full[pos + 1 + j] if pos + 1 + j < len(full) else 3) + (j == pos % 3)) % 500
                    for j in range(len(d))]

        spec.draft_hook = hook
        ids = [f"{i}" for i in range(len(PROMPTS))]
        for rid, p in zip(ids, PROMPTS):
            llm.engine.add_request(rid, p, params)
        out = {}
        while llm.engine.has_unfinished():
            for o in llm.engine.step():
                out[o.request_id] = o
            llm.engine.kv.check_integrity()
        for o, rid in zip(base, ids):
            assert out[rid].outputs[0].token_ids == o.outputs[0].token_ids
            for x, y in zip(out[rid].outputs[0].logprobs, o.outputs[0].logprobs, strict=True):
                assert x.keys() == y.keys() and all(abs(x[t] - y[t]) < 1e-4 for t in x)
        assert spec.stats.num_accepted_tokens > 0 and spec.stats.num_accepted_tokens < spec.stats.num_draft_tokens
        spec.draft_hook = None  # the MTP block's own drafts, on every rank
        again = llm.generate(PROMPTS, params)
        assert [o.outputs[0].token_ids for o in again] == [o.outputs[0].token_ids for o in base]
    finally:
        llm.engine.shutdown()
