"""CUDA-graph decode (engine/cuda_graph.py): the padded static-buffer path equals the eager forward.

On CPU the static path runs eagerly (capture is a no-op), so padding rows, the scratch slot, the
one-copy input staging and the fixed AttnMeta bounds are all exercised here; the `gpu` tests replay
the captured graphs and compare them with eager decode step by step for every bucket.
"""

from __future__ import annotations

import pytest
import torch

from engine import LLM, SamplingParams
from engine.config import EngineArgs
from engine.cuda_graph import batch_buckets, is_decode_step
from engine.scheduler import ScheduledChunk
from kvcache.manager import KVCacheManager


def _prompts(n: int, base: int = 3) -> list[list[int]]:
    return [[(base + 7 * i + 13 * j) % 480 + 2 for j in range(9 + 5 * i)] for i in range(n)]


def _mixed_params(n: int) -> list[SamplingParams]:
    """Greedy, seeded temperature with top-k/top-p, penalties + logprobs, and a guided row."""
    kinds = [
        SamplingParams(temperature=0, max_tokens=7, ignore_eos=True),
        SamplingParams(temperature=0.8, top_k=20, top_p=0.9, seed=5, max_tokens=7, ignore_eos=True),
        SamplingParams(temperature=0, repetition_penalty=1.3, frequency_penalty=0.2, logprobs=3, max_tokens=7,
                       ignore_eos=True),
        SamplingParams(temperature=0, guided_choice=["alpha", "beta"], max_tokens=7),
    ]
    return [kinds[i % len(kinds)] for i in range(n)]


def _with_static_path(llm: LLM, buckets: list[int], capture: bool | None = None):
    """Give an engine built without graphs (CPU) the padded static decode path."""
    e = llm.engine
    kv = KVCacheManager(e.model_config, num_blocks=e.kv.num_blocks, num_slots=e.kv.num_slots,
                        block_size=e.block_size, dtype=e.dtype, device=e.device, kv_format=e.kv.kv_format, pad_row=True)
    e.kv = e.scheduler.kv = e.runner.kv = kv
    e.runner.capture_graphs(e.args.max_num_seqs, e.max_model_len, capture=capture, buckets=buckets)
    return llm


def _tokens(outs):
    return [[o.token_ids for o in out.outputs] for out in outs]


def test_buckets_and_decode_detection():
    assert batch_buckets(256) == [1, 2, 4, 8, 16, 32, 64, 128, 192, 256]
    assert batch_buckets(100) == [1, 2, 4, 8, 16, 32, 64, 100]
    assert batch_buckets(5) == [1, 2, 4, 5]
    assert batch_buckets(1) == [1]

    class _S:
        pass
    d = ScheduledChunk(_S(), 10, 1, True)
    assert is_decode_step([d, d], [False, False])
    assert not is_decode_step([d, ScheduledChunk(_S(), 0, 4, True)], [False, False])  # mixed: eager
    assert not is_decode_step([ScheduledChunk(_S(), 3, 1, False)], [False])  # mid-prompt chunk
    assert not is_decode_step([d], [True])  # prompt logprobs wanted
    assert not is_decode_step([], [])


def test_enforce_eager_flag():
    from server.cli import build_parser, engine_args

    ns = build_parser().parse_args(["serve", "--enforce-eager"])
    assert engine_args(ns).enforce_eager is True
    assert engine_args(build_parser().parse_args(["serve"])).enforce_eager is False
    assert EngineArgs().enforce_eager is False


def test_padding_row_is_outside_the_pools():
    from models.config import tiny_config

    kv = KVCacheManager(tiny_config(), num_blocks=6, num_slots=3, block_size=8, dtype=torch.float32, pad_row=True)
    assert (kv.pad_slot, kv.pad_block) == (3, 6)
    assert kv.state.layers[0]["window"].shape[0] == 4
    assert any("compressed" in st and st["compressed"].shape[0] == 7 for st in kv.state.layers)
    assert kv.num_free_slots == 3 and kv.num_free_blocks == 6
    for i in range(3):
        assert kv.allocate(f"s{i}", 16)
    assert not kv.allocate("s3", 1)  # the scratch slot is never handed out
    kv.check_integrity()


def test_padded_static_decode_equals_eager_cpu(tiny_ckpt):
    """Batches of 3 and 6 sequences through buckets 4 and 8 (padding rows) with mixed sampling
    parameters and a guided row: same tokens and logprobs as the eager engine, same real state."""
    common = dict(device="cpu", dtype="float32", max_num_seqs=8, num_kv_blocks=40, max_num_batched_tokens=256)
    for n in (3, 6):
        prompts, params = _prompts(n), _mixed_params(n)
        eager = LLM(str(tiny_ckpt), **common)
        ref = eager.generate(prompts, params)
        static = _with_static_path(LLM(str(tiny_ckpt), **common), buckets=[1, 2, 4, 8])
        got = static.generate(prompts, params)
        assert static.engine.runner.num_graph_steps >= 5  # the static path ran every decode step
        assert _tokens(got) == _tokens(ref)
        for a, b in zip(ref, got):
            lp_a, lp_b = a.outputs[0].logprobs, b.outputs[0].logprobs
            if lp_a is not None:
                for da, db in zip(lp_a, lp_b):
                    assert da.keys() == db.keys()
                    assert all(abs(da[t] - db[t]) < 1e-4 for t in da)
        static.engine.kv.check_integrity()


def test_padding_never_touches_real_state_cpu(tiny_ckpt):
    """Step two engines side by side (eager / padded static path) and compare every real slot and
    block of the state after each step; the padding rows write only the scratch slot."""
    common = dict(device="cpu", dtype="float32", max_num_seqs=8, num_kv_blocks=40, max_num_batched_tokens=256)
    eager = LLM(str(tiny_ckpt), **common).engine
    static = _with_static_path(LLM(str(tiny_ckpt), **common), buckets=[8]).engine
    for i, p in enumerate(_prompts(3, base=11)):
        for e in (eager, static):
            e.add_request(f"r{i}", p, SamplingParams(temperature=0, max_tokens=6, ignore_eos=True))
    ns, nb = static.kv.num_slots, static.kv.num_blocks
    pad_before = static.kv.state.layers[0]["window"][static.kv.pad_slot].clone()
    while eager.has_unfinished():
        eager.step()
        static.step()
        for la, lb in zip(eager.kv.state.layers, static.kv.state.layers):
            for name, ta in la.items():
                rows = ns if name in ("window", "kv_tail", "score_tail", "idx_kv_tail", "idx_score_tail") else nb
                torch.testing.assert_close(lb[name][:rows], ta, rtol=0, atol=1e-5, msg=name)
    assert not static.has_unfinished()
    assert static.runner.num_graph_steps > 0
    assert not torch.equal(static.kv.state.layers[0]["window"][static.kv.pad_slot], pad_before)  # scratch written


def _compare_hook(runner, record):
    """Wrap runner._execute: every graph-eligible step also runs eagerly first (same inputs, same state
    writes), and the two logits are recorded."""
    orig = runner._execute

    def both(out, want, *rest):
        g = runner.graphs
        if g is not None and len(out.chunks) <= g.max_bs and is_decode_step(out.chunks, want):
            runner.graphs = None
            e = orig(out, want, *rest).sample_logits.clone()
            runner.graphs = g
            r = orig(out, want, *rest)
            record.append((len(out.chunks), e, r.sample_logits.clone()))
            return r
        return orig(out, want, *rest)

    runner._execute = both


@pytest.mark.gpu
def test_graph_replay_equals_eager_every_bucket_gpu(tiny_ckpt):
    """Captured graphs (bf16, CUDA): for every bucket, a batch that fills it and one that pads it;
    mixed sampling parameters and guided rows; logits within bf16 tolerance of the eager forward on
    the same state, same greedy argmax (where the top two are not a near-tie)."""
    llm = LLM(str(tiny_ckpt), device="cuda", max_num_seqs=24, num_kv_blocks=200, max_num_batched_tokens=1024)
    runner = llm.engine.runner
    assert runner.graphs is not None and all(b.graph is not None for b in runner.graphs.buckets.values())
    record = []
    _compare_hook(runner, record)
    for bp in runner.graphs.sizes:
        for n in sorted({bp, max(1, bp - 1)}):
            llm.generate(_prompts(n, base=bp), _mixed_params(n))
    sizes = {runner.graphs.bucket_for(n) for n, _, _ in record}
    assert sizes == set(runner.graphs.sizes)
    for n, e, g in record:
        assert e.shape == g.shape == (n, llm.engine.model_config.vocab_size)
        scale = e[:, :llm.engine.runner.valid_vocab].abs().amax().item()
        assert (e - g).abs().nan_to_num(0.0, 0.0, 0.0).max().item() <= 0.02 * scale + 1e-3
        top2 = e.topk(2, dim=-1).values
        clear = (top2[:, 0] - top2[:, 1]) > 0.05 * scale
        assert torch.equal(e.argmax(-1)[clear], g.argmax(-1)[clear])


@pytest.fixture(scope="module")
def fp8_shaped_ckpt(tmp_path_factory):
    """Tiny checkpoint whose head shape the FP8 entry kernels take (nope a multiple of 64, rope 64)."""
    from models.config import tiny_config
    from models.synthetic import write_synthetic_checkpoint

    out = tmp_path_factory.mktemp("fp8_shaped_ckpt")
    write_synthetic_checkpoint(tiny_config(head_dim=128, qk_rope_head_dim=64, index_head_dim=64), out, seed=0,
                               quantize=False)
    return out


@pytest.mark.gpu
@pytest.mark.parametrize("kv_dtype", ["auto", "fp8_fp4idx"])
def test_graph_engine_tokens_equal_eager_gpu(tiny_ckpt, fp8_shaped_ckpt, kv_dtype):
    """Whole generations: graphs on vs --enforce-eager, greedy, padded batches of 5 and 11."""
    ckpt = tiny_ckpt if kv_dtype == "auto" else fp8_shaped_ckpt
    common = dict(device="cuda", max_num_seqs=16, num_kv_blocks=200, kv_cache_dtype=kv_dtype)
    eager = LLM(str(ckpt), enforce_eager=True, **common)
    graphs = LLM(str(ckpt), **common)
    assert eager.engine.runner.graphs is None and graphs.engine.runner.graphs is not None
    for n in (5, 11):
        p = [SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)] * n
        a, b = eager.generate(_prompts(n, base=n), p), graphs.generate(_prompts(n, base=n), p)
        same = sum(x == y for x, y in zip(_tokens(a), _tokens(b)))
        assert same >= n - 1  # bf16: at most one near-tie divergence
    assert graphs.engine.runner.num_graph_steps > 0
    # the step accounting (engine/step_stats.py): every graph replay was counted as a graph decode step (async:
    # a launched step is charged when a later call waits for it, so the very last one may be uncounted)
    st = graphs.engine.stats()
    assert 0 <= graphs.engine.runner.num_graph_steps - st.steps.steps["graph_decode"] <= 2
    assert st.steps.steps["prefill"] >= 2 and st.steps.steps["eager_decode"] == 0
    assert eager.engine.stats().steps.steps["graph_decode"] == 0
    assert graphs.engine.kernel_compiles is not None  # the watch is on for a CUDA engine
