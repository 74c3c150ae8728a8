"""The speculative CUDA-graph step's static-buffer path (engine/spec_decode_graphs.py), run eagerly on
CPU (capture=False): same tokens, drafts and per-step state as the eager speculative step, padding
rows leave real sequences untouched. GPU: the captured graphs replay to the same tokens."""

from __future__ import annotations

import pytest
import torch

from tests.engine.test_spec_decode import (_logical_state, full_tokens, greedy, make, reference_hook, run,
                                           toks)

from models.config import tiny_config
from models.synthetic import write_synthetic_checkpoint

BS = 16


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("specg")
    write_synthetic_checkpoint(tiny_config(compress_ratios=(0, 4, 8, 4)), out, seed=11, quantize=False)
    return out


def graph_engine(ckpt, k, **kw):
    eng = make(ckpt, BS, k, **kw)
    eng.spec.enable_graphs(capture=False, buckets=[1, 2, 4])
    return eng


PROMPTS = [toks(n, n) for n in (5, 12, 30)]  # 3 sequences: bucket 4 has a padding row


@pytest.mark.parametrize("k,extra", [(1, {}), (3, {}), (2, {"logprobs": 1}), (3, {"repetition_penalty": 1.3})])
def test_graph_step_equals_eager_step(ckpt, k, extra):
    """Plain greedy rows take the one-graph device-side acceptance (verify_greedy); logprobs or processed
    logits take the verify graph + host rejection sampling + draft graph."""
    eager, graph = make(ckpt, BS, k), graph_engine(ckpt, k)
    params = greedy(16, **extra)
    for i, p in enumerate(PROMPTS):
        for eng in (eager, graph):
            eng.add_request(str(i), p, params)
    while eager.has_unfinished() or graph.has_unfinished():
        a, b = eager.step(), graph.step()
        assert [(o.request_id, o.outputs[0].token_ids) for o in a] == \
            [(o.request_id, o.outputs[0].token_ids) for o in b]
        assert {s: d for s, d in eager.spec.drafts.items()} == {s: d for s, d in graph.spec.drafts.items()}
        for seq in eager.scheduler.running:
            st_a = _logical_state(eager, seq.seq_id, seq.num_computed_tokens)
            st_b = _logical_state(graph, seq.seq_id, seq.num_computed_tokens)
            for name in st_a:
                torch.testing.assert_close(st_b[name], st_a[name], atol=1e-5, rtol=1e-5)
            slot_a, slot_b = eager.kv.slot(seq.seq_id), graph.kv.slot(seq.seq_id)
            torch.testing.assert_close(graph.spec.mtp_state["window"][slot_b], eager.spec.mtp_state["window"][slot_a],
                                       atol=1e-5, rtol=1e-5)
        graph.kv.check_integrity()
    assert graph.spec.graphs.num_steps > 0
    assert graph.spec.graphs.num_greedy_steps == (graph.spec.graphs.num_steps if not extra else 0)
    assert eager.spec.stats == graph.spec.stats


@pytest.mark.parametrize("mode", ["mixed", "all", "none"])
def test_graph_step_forced_drafts(ckpt, mode):
    params = greedy(14)
    base = run(make(ckpt, BS), PROMPTS, params)
    ref = full_tokens(PROMPTS, base)
    eng = graph_engine(ckpt, 3)
    eng.spec.draft_hook = reference_hook(ref, mode)
    out = run(eng, PROMPTS, params)
    assert {r: o.outputs[0].token_ids for r, o in out.items()} == {r: o.outputs[0].token_ids for r, o in base.items()}
    st = eng.spec.stats
    assert eng.spec.graphs.num_steps > 0
    if mode == "none":
        assert st.num_accepted_tokens == 0
    else:
        assert st.num_accepted_tokens > 0
    assert eng.kv.num_free_blocks == eng.kv.num_blocks


def test_threaded_precompile_touches_only_scratch(ckpt):
    """engine/graph_warmup.precompile_buckets on the speculative graphs (every bucket's sections from a thread
    pool, verify -> draft outputs shared) mid-run: real slots and blocks unchanged, same tokens after."""
    from engine.graph_warmup import precompile_buckets

    params = greedy(12)
    base = run(make(ckpt, BS, 2), PROMPTS, params)
    eng = graph_engine(ckpt, 2)
    for i, p in enumerate(PROMPTS):
        eng.add_request(str(i), p, params)
    for _ in range(4):
        eng.step()
    real = [eng.kv.slot(s.seq_id) for s in eng.scheduler.running]
    blocks = sorted({b for s in eng.scheduler.running for b in eng.kv.block_table(s.seq_id)})
    snap = [{n: t.clone() for n, t in st.items()} for st in eng.kv.state.layers]
    mtp = eng.spec.mtp_state["window"].clone()
    assert precompile_buckets(eng.spec.graphs, workers=3, force=True) > 0
    for st, old in zip(eng.kv.state.layers, snap):
        for n, t in st.items():
            idx = blocks if n in ("compressed", "index_keys") else real
            assert torch.equal(t[idx], old[n][idx]), n
    assert torch.equal(eng.spec.mtp_state["window"][real], mtp[real])
    out = {}
    while eng.has_unfinished():
        for o in eng.step():
            out[o.request_id] = o
    assert {r: o.outputs[0].token_ids for r, o in out.items()} == {r: o.outputs[0].token_ids for r, o in base.items()}


def test_graph_subset(ckpt):
    """Capturing only verify + draft: greedy rows take that path (the greedy graph is not used); a draft graph
    without its verify graph is refused."""
    params = greedy(10)
    base = run(make(ckpt, BS), PROMPTS, params)
    eng = make(ckpt, BS, 2)
    eng.spec.enable_graphs(capture=False, buckets=[1, 2, 4], names=("verify", "draft"))
    out = run(eng, PROMPTS, params)
    assert {r: o.outputs[0].token_ids for r, o in out.items()} == {r: o.outputs[0].token_ids for r, o in base.items()}
    assert eng.spec.graphs.num_steps > 0 and eng.spec.graphs.num_greedy_steps == 0
    with pytest.raises(ValueError, match="graph names"):
        eng.spec.enable_graphs(capture=False, buckets=[1], names=("draft",))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("extra", [{}, {"logprobs": 1}])
def test_captured_graphs_match_eager_gpu(ckpt, extra):
    """Plain greedy: the one-graph device-side acceptance; logprobs: verify graph + host + draft graph.

    This test once failed in a full GPU run and passed alone (no log kept). Two suspects, both handled:
    the old criterion (90 % of all tokens equal) fails on ONE early bf16 near-tie flip, which depends on
    the GEMM algorithms the libraries pick (workspace / memory state differs in a full run); and an
    uncollected engine of an earlier test could hold memory a capture needs (a failed capture falls back
    to eager steps silently): engines are collected first and the fallback is asserted by name."""
    import gc

    def go(graphs: bool):
        from engine.config import EngineArgs
        from engine.llm_engine import LLMEngine

        eng = LLMEngine(EngineArgs(model=str(ckpt), device="cuda", max_num_seqs=4,
                                   num_kv_blocks=64, block_size=BS, enforce_eager=not graphs,
                                   speculative_config={"method": "mtp", "num_speculative_tokens": 2}))
        assert (eng.spec.graphs is not None) == graphs, "speculative CUDA graphs were not captured"
        out = run(eng, PROMPTS, greedy(16, **extra))
        return {r: o.outputs[0].token_ids for r, o in out.items()}, eng

    gc.collect()
    torch.cuda.empty_cache()
    a, eager = go(False)
    del eager
    b, eng = go(True)
    assert eng.spec.graphs.num_steps > 0
    assert (eng.spec.graphs.num_greedy_steps > 0) == (not extra)
    # bf16: the replay batches rows differently from the eager step (padding, k+1 catch-up rows), so a
    # near-tie argmax may flip (then the rest of that sequence diverges): at most one sequence differs
    assert sum(a[r] == b[r] for r in a) >= len(a) - 1, (a, b)
    del eng
    gc.collect()
