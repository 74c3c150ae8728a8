"""Tensor + expert parallelism on CPU with gloo (issue 7).

A tiny config with 8 heads, 4 output groups, 16 indexer heads, 8 experts and a vocabulary of 512
splits over 2 and 4 ranks. TP=2 / TP=4 engines (real worker processes) must give the same greedy
tokens and the same logits (<= 1e-4, fp32) as TP=1, offline and through the HTTP server; the sharded
loader reads exactly the slices of the full checkpoint (also FP8/MXFP4); N that does not divide the
heads fails at startup naming the dimension; a killed worker stops the engine with EngineDeadError.
Spawned engines are module-scoped and shared (process start-up dominates the runtime).
"""

from __future__ import annotations

import datetime
import os
import signal
import sys
import tempfile
import threading
import time

import httpx
import pytest
import torch

from engine.errors import EngineDeadError
from engine.llm import LLM
from engine.sampling_params import SamplingParams
from models.config import tiny_config
from models.parallel import ParallelConfigError, ParallelContext, check_divisibility

os.environ.setdefault("V4SERVE_TP_START_METHOD", "forkserver")  # workers fork from one warm server
PROMPTS = [[5, 6, 7], list(range(20, 37)), list(range(100, 140))]
PARAMS = SamplingParams(max_tokens=10, temperature=0.0, logprobs=2)
ENGINE_KW = dict(device="cpu", max_num_seqs=4, num_kv_blocks=64, max_num_batched_tokens=32)


def tp_config(**kw):
    return tiny_config(num_attention_heads=8, o_groups=4, index_n_heads=16, n_routed_experts=8, **kw)


@pytest.fixture(scope="module")
def tp_dir(tmp_path_factory):
    from models.synthetic import write_synthetic_checkpoint

    out = tmp_path_factory.mktemp("tp_ckpt")
    write_synthetic_checkpoint(tp_config(), out, seed=0, quantize=False)
    return out


def _record_logits(llm: LLM) -> list[torch.Tensor]:
    """Wrap the runner so every step's sampled-row logits are kept."""
    rows: list[torch.Tensor] = []
    runner = llm.engine.runner
    inner = runner.execute

    def execute(*a, **k):
        res = inner(*a, **k)
        rows.append(res.sample_logits.clone())
        return res

    runner.execute = execute
    return rows


def _run(llm: LLM):
    rows = _record_logits(llm)
    outs = llm.generate(PROMPTS, PARAMS)
    del llm.engine.runner.execute  # back to the class method
    return [o.outputs[0].token_ids for o in outs], rows, [o.outputs[0].text for o in outs]


@pytest.fixture(scope="module")
def reference(tp_dir):
    llm = LLM(str(tp_dir), **ENGINE_KW)
    return _run(llm)


@pytest.fixture(scope="module")
def tp2(tp_dir):
    llm = LLM(str(tp_dir), tensor_parallel_size=2, **ENGINE_KW)
    yield llm
    llm.engine.shutdown()


def _assert_same(reference, got):
    (ref_tokens, ref_rows, _), (tokens, rows, _) = reference, got
    assert tokens == ref_tokens
    assert len(rows) == len(ref_rows)
    for a, b in zip(ref_rows, rows):
        assert a.shape == b.shape
        assert (a - b).abs().max().item() <= 1e-4


# ---- no processes: config checks and the sharded loader -------------------------------------------
def test_startup_check_names_the_dimension(tp_dir):
    with pytest.raises(ParallelConfigError, match="num_attention_heads=8"):
        check_divisibility(tp_config(), 3)
    with pytest.raises(ParallelConfigError, match="n_routed_experts=8"):
        check_divisibility(tp_config(), 16)
    t0 = time.monotonic()
    with pytest.raises(ValueError, match=r"tensor_parallel_size=3 does not divide num_attention_heads=8"):
        LLM(str(tp_dir), tensor_parallel_size=3, **ENGINE_KW)
    assert time.monotonic() - t0 < 10  # fails before any worker is spawned


@pytest.mark.parametrize("quantize", [False, True])
def test_sharded_loader_reads_exact_slices(tmp_path, quantize):
    """Every rank's tensors are the matching slices of the fully loaded checkpoint (FP8 tiles and
    MXFP4 blocks cut at non-tile boundaries included), vocab padded with zero rows."""
    from models.loader import load_state_dict
    from models.sharded_loader import iter_checkpoint_sharded

    cfg = tp_config(vocab_size=510)  # 510 rows over 4 ranks: padded to 4 x 128
    from models.synthetic import write_synthetic_checkpoint

    write_synthetic_checkpoint(cfg, tmp_path, seed=1, quantize=quantize)
    from models.config import ModelConfig

    cfg = ModelConfig.from_json(tmp_path)
    full = load_state_dict(tmp_path, cfg)
    for ws in (2, 4):
        for rank in range(ws):
            ctx = ParallelContext(rank, ws)
            got = dict(iter_checkpoint_sharded(tmp_path, cfg, ctx))
            e0 = rank * cfg.n_routed_experts // ws
            h, ih, g = (cfg.num_attention_heads // ws, cfg.index_n_heads // ws, cfg.o_groups // ws)
            c, ci, r = cfg.head_dim, cfg.index_head_dim, cfg.o_lora_rank
            for name, t in got.items():
                if ".experts." in name:
                    parts = name.split(".")
                    k = parts.index("experts")
                    parts[k + 1] = str(int(parts[k + 1]) + e0)
                    ref = full[".".join(parts)]
                elif name.endswith("attn.wq_b.weight") and ".indexer." not in name:
                    ref = full[name][rank * h * c:(rank + 1) * h * c]
                elif name.endswith("attn_sink"):
                    ref = full[name][rank * h:(rank + 1) * h]
                elif name.endswith("attn.wo_a.weight"):
                    ref = full[name][rank * g * r:(rank + 1) * g * r]
                elif name.endswith("attn.wo_b.weight"):
                    ref = full[name][:, rank * g * r:(rank + 1) * g * r]
                elif name.endswith("indexer.wq_b.weight"):
                    ref = full[name][rank * ih * ci:(rank + 1) * ih * ci]
                elif name.endswith("indexer.weights_proj.weight"):
                    ref = full[name][rank * ih:(rank + 1) * ih]
                elif name in ("embed.weight", "head.weight"):
                    per = -(-cfg.vocab_size // ws)
                    ref = torch.zeros(per, cfg.hidden_size)
                    part = full[name][rank * per:(rank + 1) * per]
                    ref[:part.shape[0]] = part
                else:
                    ref = full[name]
                assert t.shape == ref.shape, name
                assert torch.equal(t, ref.to(t.dtype)), name
            shared = [n for n in got if "shared_experts" in n]
            assert bool(shared) == (rank == 0)
            assert sum(".experts." in n for n in got) == sum(".experts." in n for n in full) // ws


def test_threaded_gloo_logits_match_quantized(tmp_path):
    """The sharded model math in one process (one gloo rank per thread): TP=2 and TP=4 logits equal
    the single-device logits of an FP8/MXFP4 checkpoint, incl. a padded vocabulary."""
    import torch.distributed as dist

    from models.loading import load_model
    from models.sharded_loader import load_model_sharded
    from models.synthetic import write_synthetic_checkpoint

    cfg = tp_config(vocab_size=510)
    write_synthetic_checkpoint(cfg, tmp_path, seed=2, quantize=True)
    ids = torch.randint(0, cfg.vocab_size, (37,), generator=torch.Generator().manual_seed(0))
    want = load_model(tmp_path).logits(ids)
    for ws in (2, 4):
        store_path = tempfile.mktemp(dir=tmp_path)
        got, errors = {}, []

        def rank_main(r):
            try:
                ctx = ParallelContext(r, ws)
                model = load_model_sharded(tmp_path, ctx)
                ctx.group = dist.ProcessGroupGloo(dist.FileStore(store_path, ws), r, ws, datetime.timedelta(seconds=60))
                got[r] = model.logits(ids)
            except Exception as e:  # noqa: BLE001
                errors.append(e)

        threads = [threading.Thread(target=rank_main, args=(r,)) for r in range(ws)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors
        assert got[0].shape == want.shape
        assert (got[0] - want).abs().max().item() <= 1e-4
        assert all(got[r] is None for r in range(1, ws))


# ---- real worker processes ---------------------------------------------------------------------
def test_tp2_offline_same_tokens_and_logits(reference, tp2):
    _assert_same(reference, _run(tp2))


def test_tp2_structured_output(tp2):
    """A grammar-constrained request through the TP engine (masks over the sharded vocab's logits)."""
    import re
    pattern = r"[a-e]{2,4}-[0-9]{2}"
    outs = tp2.generate(["hello"], SamplingParams(n=3, temperature=1.0, seed=5, max_tokens=30, guided_regex=pattern))
    assert all(re.fullmatch(pattern, c.text) and c.finish_reason == "stop" for c in outs[0].outputs)


def test_tp4_offline_same_tokens_and_logits(reference, tp_dir):
    llm = LLM(str(tp_dir), tensor_parallel_size=4, **ENGINE_KW)
    try:
        _assert_same(reference, _run(llm))
    finally:
        llm.engine.shutdown()
    assert all(not p.is_alive() for p in llm.engine.executor.procs)


def test_tp2_packed_kv_with_mxfp4_index_keys(tp_dir):
    """kv_cache_dtype="fp8_fp4idx" (FP8 entries, Hadamard-rotated MXFP4 indexer keys): the TP indexer
    rotates q like the single-rank one, so TP=2 == TP=1 on the same packed cache format."""
    kw = dict(ENGINE_KW, kv_cache_dtype="fp8_fp4idx")
    ref = _run(LLM(str(tp_dir), **kw))
    llm = LLM(str(tp_dir), tensor_parallel_size=2, **kw)
    try:
        assert llm.engine.kv.kv_format == "fp8_fp4idx"
        _assert_same(ref, _run(llm))
    finally:
        llm.engine.shutdown()


def test_tp2_http_server_matches_tp1(reference, tp2):
    sys.path.append(os.path.join(os.path.dirname(os.path.dirname(__file__)), "server"))
    from server_fixture import start_server

    from engine.async_engine import AsyncLLM
    from server.app import create_app

    app = create_app(AsyncLLM(tp2.engine, model_name="tp2"), served_model_name="tp2")
    base, stop = start_server(app)
    try:
        deadline = time.monotonic() + 30
        while httpx.get(f"{base}/health").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        for prompt, want in zip(PROMPTS, reference[2]):
            r = httpx.post(f"{base}/v1/completions", json={
                "model": "tp2", "prompt": prompt, "max_tokens": 10, "temperature": 0.0, "logprobs": 1}, timeout=60)
            assert r.status_code == 200, r.text
            text = r.json()["choices"][0]["text"]
            assert text == want
    finally:
        stop()


def test_killed_worker_stops_engine_with_clear_error(tp2):
    """Runs last on the shared TP=2 engine: SIGKILL rank 1 -> EngineDeadError naming it, no hang."""
    proc = tp2.engine.executor.procs[0]
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(10)
    t0 = time.monotonic()
    with pytest.raises(EngineDeadError, match=r"rank 1 .*(exit code -9|died)"):
        tp2.generate([[1, 2, 3]], SamplingParams(max_tokens=4, temperature=0.0))
    assert time.monotonic() - t0 < 30
    with pytest.raises(EngineDeadError):  # stays dead
        tp2.generate([[4, 5]], SamplingParams(max_tokens=2, temperature=0.0))
