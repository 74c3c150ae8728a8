"""Prefix caching through the engine (issue 12): a hit changes nothing in the output.

Tiny fp32 models with sliding, CSA and HCA layers (two layouts). With a token budget of one block
every chunk starts on a block boundary with or without caching, so a hit must give bit-identical
greedy tokens AND logprobs to a no-caching engine (the restored slot snapshot is the exact state at
the hit); other budgets give the same tokens. `kv.check_integrity()` runs after every step.
"""

from __future__ import annotations

import pytest
import torch

from engine.config import EngineArgs
from engine.llm_engine import LLMEngine
from engine.outputs import OutputKind
from engine.sampling_params import SamplingParams
from models.config import tiny_config
from models.synthetic import write_synthetic_checkpoint

BS = 16
CONFIGS = {
    "flash": dict(compress_ratios=(0, 4, 8, 4), index_topk=4),  # sliding first, CSA/HCA(8)
    "pro": dict(compress_ratios=(16, 4, 0, 16), index_topk=2, num_hash_layers=2),  # HCA(16) first
}


@pytest.fixture(scope="module", params=list(CONFIGS))
def ckpt(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"pc_{request.param}")
    write_synthetic_checkpoint(tiny_config(**CONFIGS[request.param]), out, seed=5, quantize=False)
    return out


@pytest.fixture(scope="module")
def flash_ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("pc_flash_only")
    write_synthetic_checkpoint(tiny_config(**CONFIGS["flash"]), out, seed=5, quantize=False)
    return out


@pytest.fixture(scope="module")
def flash_ckpt_wide(tmp_path_factory):
    """The "flash" layout with heads the CUDA FP8 entries can store: nope = 128 - 64, a whole 64-dim scale
    block (kernels/kv_format.check_kernel_dims), and a 64-wide indexer."""
    out = tmp_path_factory.mktemp("pc_flash_wide")
    write_synthetic_checkpoint(tiny_config(**CONFIGS["flash"], head_dim=128, qk_rope_head_dim=64, index_head_dim=64),
                               out, seed=5, quantize=False)
    return out


def make(ckpt, caching: bool, **kw) -> LLMEngine:
    args = dict(model=str(ckpt), device="cpu", dtype="float32", max_num_seqs=4, max_num_batched_tokens=BS,
                num_kv_blocks=64, block_size=BS, enable_prefix_caching=caching, prefix_snapshot_interval=2 * BS)
    args.update(kw)
    return LLMEngine(EngineArgs(**args))


def greedy(n: int = 5) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True, logprobs=3)


def run(eng: LLMEngine, prompt: list[int], params: SamplingParams, rid: str):
    eng.add_request(rid, prompt, params, output_kind=OutputKind.FINAL_ONLY)
    out = None
    while eng.has_unfinished():
        for o in eng.step():
            out = o
        eng.kv.check_integrity()
    return out


def toks(n: int, seed: int) -> list[int]:
    return torch.randint(2, 400, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def assert_same(a, b, exact: bool = True):
    for x, y in zip(a.outputs, b.outputs, strict=True):
        assert x.token_ids == y.token_ids
        if exact:
            assert x.logprobs == y.logprobs
        else:
            for dx, dy in zip(x.logprobs, y.logprobs, strict=True):
                assert dx.keys() == dy.keys() and all(abs(dx[k] - dy[k]) < 1e-4 for k in dx)


A = toks(70, 1)  # 4 full blocks + 6 tokens; snapshots at 32 (interval) and 64 (interval, prompt end)
EXT = toks(60, 2)
CASES = [  # (prompt, cached tokens reported)
    (A, 0),  # cold
    (A + [7], 64),  # extends the cached prompt by 1 token
    (A, 64),  # the same prompt again: the last full block before its last token
    (A[:48] + EXT[:10], 32),  # prefix ends on a block boundary (48), no snapshot there yet: 32
    (A[:48] + EXT[10:22], 48),  # the previous request saved the divergence point 48
    (A[:53] + EXT[22:42], 48),  # prefix ends off a boundary (53)
    (A + EXT[:53], 64),  # extends it by many blocks
    (A + EXT[:53] + [9], 112),  # ... and that prompt's own end (123 // 16 * 16)
]


def test_hits_are_bit_identical_and_reported_exactly(ckpt):
    _check_cases(ckpt, {})


@pytest.mark.parametrize("kv_format", ["fp8", "fp8_fp4idx"])
def test_packed_kv_formats_hit_bit_identical(flash_ckpt, kv_format):
    _check_cases(flash_ckpt, {"kv_cache_dtype": kv_format})


def _check_cases(ckpt, kw):
    ref_eng, eng = make(ckpt, False, **kw), make(ckpt, True, **kw)
    assert ref_eng.kv.prefix is None and eng.kv.prefix is not None
    for i, (prompt, cached) in enumerate(CASES):
        ref = run(ref_eng, prompt, greedy(), f"ref{i}")
        got = run(eng, prompt, greedy(), f"r{i}")
        assert got.num_cached_tokens == cached, f"case {i}"
        assert ref.num_cached_tokens == 0
        assert_same(ref, got)
    st = eng.stats()
    assert st.prefix_cache_queries_total == sum(len(p) for p, _ in CASES)
    assert st.prefix_cache_hits_total == sum(c for _, c in CASES)
    assert ref_eng.stats().prefix_cache_queries_total == 0
    assert eng.kv.num_free_blocks == eng.kv.num_blocks and eng.kv.pool.num_cached > 0


def test_any_sampling_params_share_and_seeded_samples_match(flash_ckpt):
    ref_eng, eng = make(flash_ckpt, False), make(flash_ckpt, True)
    run(eng, A, greedy(2), "warm")
    p = SamplingParams(temperature=0.9, top_p=0.9, seed=11, n=2, max_tokens=6, ignore_eos=True, logprobs=1)
    got, ref = run(eng, A + [3, 4], p, "s"), run(ref_eng, A + [3, 4], p, "s")
    assert got.num_cached_tokens == 64
    assert_same(ref, got, exact=False)  # n=2: the samples' chunks batch differently with and without the hit


def test_prompt_logprobs_requests_compute_every_position(flash_ckpt):
    ref_eng, eng = make(flash_ckpt, False), make(flash_ckpt, True)
    run(eng, A, greedy(2), "warm")
    p = SamplingParams(temperature=0.0, max_tokens=3, prompt_logprobs=2)
    got, ref = run(eng, A + [5], p, "p"), run(ref_eng, A + [5], p, "p")
    assert got.num_cached_tokens == 0 and got.prompt_logprobs == ref.prompt_logprobs
    assert eng.stats().prefix_cache_queries_total == len(A)  # not looked up: not a query


def test_aborted_producer_leaves_a_usable_prefix(flash_ckpt):
    ref_eng, eng = make(flash_ckpt, False), make(flash_ckpt, True)
    eng.add_request("a", A, greedy())
    for _ in range(3):  # chunks [0,16) [16,32) [32,48): the state at 32 is saved
        eng.step()
        eng.kv.check_integrity()
    eng.abort_request("a")
    eng.kv.check_integrity()
    assert eng.kv.num_free_blocks == eng.kv.num_blocks and eng.kv.pool.num_cached == 3
    got = run(eng, A + [8], greedy(), "b")
    assert got.num_cached_tokens == 32
    assert_same(run(ref_eng, A + [8], greedy(), "b"), got)


def test_preempted_producer_and_readmission(flash_ckpt):
    """A long request X and a later one (A) outgrow a 9-block cache: A is preempted, re-admitted at its
    own cached prefix, and both give the no-caching tokens; a third request reuses A's prefix."""
    kw = dict(num_kv_blocks=9, max_num_seqs=2)
    ref_eng, eng = make(flash_ckpt, False, **kw), make(flash_ckpt, True, **kw)
    x, px, pa = toks(40, 3), greedy(60), greedy(40)
    ref = {rid: run(ref_eng, p, sp, rid) for rid, p, sp in (("x", x, px), ("a", A, pa))}
    eng.add_request("x", x, px, output_kind=OutputKind.FINAL_ONLY)
    eng.add_request("a", A, pa, output_kind=OutputKind.FINAL_ONLY)
    got = {}
    while eng.has_unfinished():
        for o in eng.step():
            got[o.request_id] = o
        eng.kv.check_integrity()
    assert eng.scheduler.num_preemptions_total > 0
    assert eng.stats().prefix_cache_hits_total > 0  # the re-admission reused cached blocks
    for rid in ref:  # ran concurrently here, alone in the reference: same tokens, logprobs to fp32 rounding
        assert_same(ref[rid], got[rid], exact=False)
    b = run(eng, A + [6], greedy(), "b")
    assert b.num_cached_tokens > 0  # A's state was computed batched with X: equal to fp32 rounding
    assert_same(run(ref_eng, A + [6], greedy(), "b"), b, exact=False)


def test_eviction_under_a_tiny_cache_keeps_outputs(flash_ckpt):
    """Many requests sharing prefixes arrive while others run, in a 12-block cache: unreferenced cached
    blocks are evicted (LRU), running ones never; outputs equal the no-caching engine's."""
    kw = dict(num_kv_blocks=12, max_num_seqs=3, max_num_batched_tokens=24)
    ref_eng, eng = make(flash_ckpt, False, **kw), make(flash_ckpt, True, **kw)
    evicted = []
    drop = eng.kv.pool.on_evict
    eng.kv.pool.on_evict = lambda h: (evicted.append(h), drop(h))
    base = [toks(40, 20), toks(36, 21)]
    prompts = [base[i % 2] + toks(5 + 7 * i % 23, 30 + i) for i in range(10)]
    arrive = [0, 0, 1, 3, 3, 6, 9, 10, 14, 20]
    ref = {f"r{i}": run(ref_eng, p, greedy(6), f"r{i}") for i, p in enumerate(prompts)}
    got, step = {}, 0
    while len(got) < len(prompts):
        for i, p in enumerate(prompts):
            if arrive[i] == step:
                eng.add_request(f"r{i}", p, greedy(6), output_kind=OutputKind.FINAL_ONLY)
        for o in eng.step():
            got[o.request_id] = o
        eng.kv.check_integrity()
        step += 1
        assert step < 3000
    assert evicted, "the tiny cache never evicted a cached block"
    assert eng.stats().prefix_cache_hits_total > 0
    for rid in ref:
        assert_same(ref[rid], got[rid], exact=False)
    assert eng.kv.num_free_blocks == eng.kv.num_blocks


def test_reset_prefix_cache_keeps_running_blocks(flash_ckpt):
    ref_eng, eng = make(flash_ckpt, False), make(flash_ckpt, True)
    run(eng, A, greedy(2), "warm")
    assert eng.reset_prefix_cache() == 4 and eng.kv.pool.num_cached == 0
    assert eng.kv.prefix.snapshots.num_committed == 0
    eng.add_request("r", A + [1], greedy(), output_kind=OutputKind.FINAL_ONLY)
    for _ in range(5):
        eng.step()  # 4 full blocks computed and cached, held by the running request
    held = eng.kv.pool.num_cached
    assert held == 4 and eng.reset_prefix_cache() == 0 and eng.kv.pool.num_cached == held
    eng.kv.check_integrity()
    out = None
    while eng.has_unfinished():
        for o in eng.step():
            out = o
    assert out.num_cached_tokens == 0
    assert_same(run(ref_eng, A + [1], greedy(), "r"), out)


def test_bench_prefix_runs_on_cpu(flash_ckpt, capsys):
    import json

    from bench.prefix import main as bench_main

    bench_main(["--model", str(flash_ckpt), "--device", "cpu", "--dtype", "float32", "--prefix-len", "100",
                "--new-len", "8", "--repeats", "1", "--kv", "bf16,fp8_fp4idx", "--block-size", "16",
                "--interval", "32", "--budget", "32"])
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [f["kv"] for f in res["formats"]] == ["bf16", "fp8_fp4idx"]
    for f in res["formats"]:
        # the hit resumes at the prefix's last full block (96 of 108 tokens) and agrees with a cold run
        assert f["cached_tokens"] == [96] and f["prompt_tokens"] == 108 and f["same_first_token_as_cold"]
        assert f["cold_after_reset_cached_tokens"] == 0 and f["snapshot_bytes"] > 0 and "ttft_nocache_ms" in f
    assert res["flash_reference"]["compressed_bytes_per_token"] == 3514.25
    assert res["flash_reference"]["extra_fraction"] <= 0.25


def test_hits_with_async_scheduling(flash_ckpt):
    """The overlapped loop (engine/async_step.py) hashes a block only once its tokens reached the host
    and saves / restores snapshots around the forward it launches: same results as the sync engine."""
    ref_eng, eng = make(flash_ckpt, False), make(flash_ckpt, True, async_scheduling=True)
    assert eng.async_scheduling
    for i, (prompt, cached) in enumerate(CASES):
        got = run(eng, prompt, greedy(), f"r{i}")
        assert got.num_cached_tokens == cached, f"case {i}"
        assert_same(run(ref_eng, prompt, greedy(), f"ref{i}"), got)


@pytest.mark.gpu
@pytest.mark.parametrize("kv_format", ["auto", "fp8_fp4idx"])
def test_hits_on_cuda_match_no_caching_gpu(flash_ckpt_wide, kv_format):
    """CUDA (bf16, Triton kernels, CUDA-graph decode, async scheduling): the snapshot restore is a byte
    copy and every chunk starts on a block boundary in both engines, so the hit reproduces the
    no-caching run (same tokens; logprobs equal up to the kernels' own run-to-run rounding)."""
    kw = dict(device="cuda", dtype="auto", kv_cache_dtype=kv_format)
    ref_eng, eng = make(flash_ckpt_wide, False, **kw), make(flash_ckpt_wide, True, **kw)
    assert eng.async_scheduling and eng.runner.graphs is not None
    for i, (prompt, cached) in enumerate(CASES):
        got = run(eng, prompt, greedy(), f"r{i}")
        assert got.num_cached_tokens == cached, f"case {i}"
        ref = run(ref_eng, prompt, greedy(), f"ref{i}")
        for x, y in zip(ref.outputs, got.outputs, strict=True):
            assert x.token_ids == y.token_ids, f"case {i}"
            for dx, dy in zip(x.logprobs, y.logprobs, strict=True):
                assert all(abs(dx[k] - dy[k]) < 2e-2 for k in dx.keys() & dy.keys())
