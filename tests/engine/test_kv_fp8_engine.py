"""The engine with kv_cache_dtype="fp8" (584-byte FP8 window/compressed entries, FP8 indexer keys)
and "fp8_fp4idx" (the same entries, MXFP4 Hadamard-rotated indexer keys): runs prefill, chunked
prefill and decode, sizes the cache with the packed byte counts, and stays close to the dense-entry
reference."""

from __future__ import annotations

import pytest
import torch

from engine import LLM, SamplingParams


def _prompt_logprob_rows(out):
    return [next(iter(d.values())) for d in out.prompt_logprobs[1:]]


@pytest.mark.parametrize("kv_dtype", ["fp8", "fp8_fp4idx"])
def test_fp8_kv_engine_tracks_dense(tiny_ckpt, kv_dtype):
    ids = (torch.arange(70) * 7 % 500 + 2).tolist()
    params = SamplingParams(temperature=0, max_tokens=6, prompt_logprobs=0)
    common = dict(device="cpu", dtype="float32", max_num_batched_tokens=24, num_kv_blocks=32)
    dense = LLM(str(tiny_ckpt), **common).generate([ids], params)[0]
    llm = LLM(str(tiny_ckpt), kv_cache_dtype=kv_dtype, **common)
    assert llm.engine.kv.kv_format == kv_dtype
    ring = llm.engine.kv.state.layers[0]["window"]
    assert ring.dtype == torch.uint8  # packed entries, not dense
    ci = llm.engine.model_config.index_head_dim
    keys = [st["index_keys"] for st in llm.engine.kv.state.layers if "index_keys" in st]
    assert keys and all(k.dtype == torch.uint8 for k in keys)
    assert keys[0].shape[-1] == (ci // 2 + ci // 32 if kv_dtype == "fp8_fp4idx" else ci + 4)
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


def test_fp4_index_keys_hold_more_blocks(tiny_ckpt):
    common = dict(device="cpu", dtype="float32", kv_cache_memory=8 << 20, max_num_seqs=4)
    fp8 = LLM(str(tiny_ckpt), kv_cache_dtype="fp8", **common).engine.kv
    fp4 = LLM(str(tiny_ckpt), kv_cache_dtype="fp8_fp4idx", **common).engine.kv
    assert fp4.state.num_blocks >= fp8.state.num_blocks


def test_flash_bytes_per_token_allocated():
    """What allocate_state really takes per context token on the V4-Flash schedule (architecture.md 5.4
    target 3.5 KB): FP8 entries + MXFP4 indexer keys 3,514 B, + FP8 keys 3,850 B, dense bf16 6,880 B."""
    from models.config import flash_config
    from models.state import state_bytes
    per = {f: state_bytes(flash_config(), 256, torch.bfloat16, f)[1] / 256 for f in ("bf16", "fp8", "fp8_fp4idx")}
    assert per == {"bf16": 6880.0, "fp8": 3850.25, "fp8_fp4idx": 3514.25}
