"""Parallel pre-capture compilation (engine/graph_warmup.py): the threaded first forwards of every batch
bucket touch no real sequence's state, and an engine captured after them decodes the same tokens."""

from __future__ import annotations

import pytest
import torch

from engine import LLM, SamplingParams
from engine.graph_warmup import WORKERS_ENV, compile_workers, precompile_buckets
from kvcache.manager import KVCacheManager

SLOT_ROWS = ("window", "kv_tail", "score_tail", "idx_kv_tail", "idx_score_tail")


def _prompts(n: int, base: int = 3) -> list[list[int]]:
    return [[(base + 5 * i + 11 * j) % 480 + 2 for j in range(7 + 6 * i)] for i in range(n)]


def test_compile_workers_from_env(monkeypatch):
    monkeypatch.delenv(WORKERS_ENV, raising=False)
    assert 1 <= compile_workers(10) <= 10
    assert compile_workers(1) == 1
    monkeypatch.setenv(WORKERS_ENV, "3")
    assert compile_workers(10) == 3
    for bad in ("0", "-2", "many"):
        monkeypatch.setenv(WORKERS_ENV, bad)
        with pytest.raises(ValueError, match=WORKERS_ENV):
            compile_workers(10)


def test_threaded_bucket_forwards_leave_real_state_untouched_cpu(tiny_ckpt):
    """Sequences mid-decode own slots and blocks; the forwards of every bucket from 4 threads write only the
    scratch slot/block (which they do write), and decoding then finishes with the tokens of an engine that
    never ran them."""
    common = dict(device="cpu", dtype="float32", max_num_seqs=8, num_kv_blocks=40, max_num_batched_tokens=256)
    engines = []
    for _ in range(2):
        e = LLM(str(tiny_ckpt), **common).engine
        kv = KVCacheManager(e.model_config, num_blocks=e.kv.num_blocks, num_slots=e.kv.num_slots,
                            block_size=e.block_size, dtype=e.dtype, device=e.device, kv_format=e.kv.kv_format,
                            pad_row=True)
        e.kv = e.scheduler.kv = e.runner.kv = kv
        e.runner.capture_graphs(e.args.max_num_seqs, e.max_model_len, capture=False, buckets=[1, 2, 4, 8])
        for i, p in enumerate(_prompts(3)):
            e.add_request(f"r{i}", p, SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))
        for _ in range(3):
            e.step()
        engines.append(e)
    ref, e = engines
    ns, nb = e.kv.num_slots, e.kv.num_blocks
    before = [{k: t.clone() for k, t in layer.items()} for layer in e.kv.state.layers]
    e.kv.state.layers[0]["window"][e.kv.pad_slot].fill_(7.0)  # the decode steps above already wrote what the
    pad_before = e.kv.state.layers[0]["window"][e.kv.pad_slot].clone()  # padding forwards write: a sentinel
    assert precompile_buckets(e.runner.graphs, workers=4, force=True) > 0
    for la, lb in zip(before, e.kv.state.layers):
        for name, ta in la.items():
            rows = ns if name in SLOT_ROWS else nb
            assert torch.equal(lb[name][:rows], ta[:rows]), name
    assert not torch.equal(e.kv.state.layers[0]["window"][e.kv.pad_slot], pad_before)  # the forwards ran
    e.kv.check_integrity()
    outs = {}
    for eng in (ref, e):
        toks = {}
        while eng.has_unfinished():
            for o in eng.step():
                if o.finished:
                    toks[o.request_id] = o.outputs[0].token_ids
        outs[id(eng)] = toks
    assert outs[id(ref)] == outs[id(e)] and len(outs[id(e)]) == 3


def test_off_when_capture_is_off(tiny_ckpt):
    e = LLM(str(tiny_ckpt), device="cpu", dtype="float32", max_num_seqs=4, num_kv_blocks=40).engine
    kv = KVCacheManager(e.model_config, num_blocks=e.kv.num_blocks, num_slots=e.kv.num_slots, block_size=e.block_size,
                        dtype=e.dtype, device=e.device, kv_format=e.kv.kv_format, pad_row=True)
    e.kv = e.scheduler.kv = e.runner.kv = kv
    e.runner.capture_graphs(4, e.max_model_len, capture=False, buckets=[1, 4])
    assert precompile_buckets(e.runner.graphs, workers=4) == 0.0  # CPU / no capture: nothing to compile


@pytest.mark.gpu
def test_threaded_compile_then_capture_equals_eager_gpu(tiny_ckpt, monkeypatch):
    """Graphs captured after the threaded pre-compilation (buckets 1..40, so some variants are new in this
    process) decode the tokens of --enforce-eager."""
    monkeypatch.setenv(WORKERS_ENV, "6")
    common = dict(device="cuda", max_num_seqs=40, num_kv_blocks=300)
    eager = LLM(str(tiny_ckpt), enforce_eager=True, **common)
    graphs = LLM(str(tiny_ckpt), **common)
    assert graphs.engine.runner.graphs is not None
    for n in (3, 33):
        p = [SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)] * n
        a, b = eager.generate(_prompts(n, base=n), p), graphs.generate(_prompts(n, base=n), p)
        same = sum(x.outputs[0].token_ids == y.outputs[0].token_ids for x, y in zip(a, b))
        assert same >= n - 1  # bf16: at most one near-tie divergence
    assert graphs.engine.runner.num_graph_steps > 0
