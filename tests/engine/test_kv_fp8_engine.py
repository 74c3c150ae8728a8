"""The engine with kv_cache_dtype="fp8" (584-byte FP8 window/compressed entries, FP8 indexer keys):
runs prefill, chunked prefill and decode, sizes the cache with the FP8 byte counts, and stays close
to the dense-entry reference."""

from __future__ import annotations

import torch

from engine import LLM, SamplingParams


def _prompt_logprob_rows(out):
    return [next(iter(d.values())) for d in out.prompt_logprobs[1:]]


def test_fp8_kv_engine_tracks_dense(tiny_ckpt):
    ids = (torch.arange(70) * 7 % 500 + 2).tolist()
    params = SamplingParams(temperature=0, max_tokens=6, prompt_logprobs=0)
    common = dict(device="cpu", dtype="float32", max_num_batched_tokens=24, num_kv_blocks=32)
    dense = LLM(str(tiny_ckpt), **common).generate([ids], params)[0]
    llm = LLM(str(tiny_ckpt), kv_cache_dtype="fp8", **common)
    assert llm.engine.kv.kv_format == "fp8"
    ring = llm.engine.kv.state.layers[0]["window"]
    assert ring.dtype == torch.uint8  # packed entries, not dense
    fp8 = llm.generate([ids], params)[0]
    llm.engine.kv.check_integrity()
    assert llm.engine.kv.num_free_blocks == 32
    a, b = torch.tensor(_prompt_logprob_rows(dense)), torch.tensor(_prompt_logprob_rows(fp8))
    diff = (a - b).abs()
    # FP8 rounding of the entries (and the occasional different indexer pick), not garbage:
    assert diff.median().item() < 0.05 and diff.max().item() < 2.0
    assert len(fp8.outputs[0].token_ids) == 6


def test_fp8_budget_holds_more_blocks(tiny_ckpt):
    common = dict(device="cpu", dtype="float32", kv_cache_memory=8 << 20, max_num_seqs=4)
    dense = LLM(str(tiny_ckpt), **common).engine.kv
    fp8 = LLM(str(tiny_ckpt), kv_cache_dtype="fp8", **common).engine.kv
    assert fp8.state.num_blocks > dense.state.num_blocks
