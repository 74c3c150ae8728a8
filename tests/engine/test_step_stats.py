"""engine/step_stats.py: every engine step is counted once under its kind (prefill, eager decode, graph decode)
with its wall time, synchronous and overlapped, and EngineStats carries a copy."""

from __future__ import annotations

import pytest

from engine import LLM, SamplingParams
from engine.step_stats import STEP_KINDS, StepStats
from kvcache.manager import KVCacheManager


def _run(eng, prompt_len: int = 40, max_tokens: int = 4) -> None:
    eng.add_request("a", list(range(3, 3 + prompt_len)), SamplingParams(temperature=0, max_tokens=max_tokens,
                                                                         ignore_eos=True))
    while eng.has_unfinished():
        eng.step()


@pytest.mark.parametrize("overlapped", [False, True])
def test_steps_by_kind(tiny_ckpt, overlapped):
    # a 40-token prompt in 16-token steps: chunks of 16, 16 and 8 (the last samples the first token), then the
    # other 3 tokens one decode step each (eager: no graphs on the CPU)
    eng = LLM(str(tiny_ckpt), device="cpu", dtype="float32", max_num_seqs=2, num_kv_blocks=16,
              max_num_batched_tokens=16, async_scheduling=overlapped).engine
    assert eng.async_scheduling is overlapped
    before = eng.stats().steps
    _run(eng)
    got = eng.stats().steps.minus(before)
    assert got["steps"]["prefill"] == 3 and got["steps"]["graph_decode"] == 0 and got["steps"]["speculative"] == 0
    # overlapped, a launched step is charged when a later step() waits for it; a step launched after the last
    # token was sampled is not waited for
    assert got["steps"]["eager_decode"] == 3 if not overlapped else 2 <= got["steps"]["eager_decode"] <= 3
    assert all(got["seconds"][k] > 0 for k in ("prefill", "eager_decode"))
    assert eng.stats().kernel_compiles_total == 0 and eng.kernel_compiles is None  # the watch is a GPU thing


def test_static_buffer_decode_counts_as_graph_decode(tiny_ckpt):
    eng = LLM(str(tiny_ckpt), device="cpu", dtype="float32", max_num_seqs=4, num_kv_blocks=40,
              max_num_batched_tokens=256).engine
    kv = KVCacheManager(eng.model_config, num_blocks=eng.kv.num_blocks, num_slots=eng.kv.num_slots,
                        block_size=eng.block_size, dtype=eng.dtype, device=eng.device, kv_format=eng.kv.kv_format,
                        pad_row=True)
    eng.kv = eng.scheduler.kv = eng.runner.kv = kv
    eng.runner.capture_graphs(4, eng.max_model_len, capture=False, buckets=[1, 2, 4])
    _run(eng, prompt_len=10, max_tokens=5)
    s = eng.stats().steps
    assert s.steps == {"graph_decode": 4, "eager_decode": 0, "prefill": 1, "speculative": 0}
    assert eng.runner.num_graph_steps == 4


def test_snapshot_is_a_copy_and_kinds_are_checked():
    st = StepStats()
    st.record("prefill", 0.5)
    snap = st.snapshot()
    st.record("prefill", 0.25)
    st.record("graph_decode", 0.01)
    assert snap.steps["prefill"] == 1 and set(snap.steps) == set(STEP_KINDS)
    d = st.minus(snap)
    assert d["steps"] == {"graph_decode": 1, "eager_decode": 0, "prefill": 1, "speculative": 0}
    assert d["seconds"]["prefill"] == 0.25
    with pytest.raises(ValueError, match="unknown step kind 'decode'"):
        st.record("decode", 1.0)


def test_a_step_far_above_its_kind_s_mean_is_logged(caplog):
    """One line per stall, naming the kind, the time and what the step ran; ordinary steps and the first step of
    a kind (no mean yet) are not logged."""
    st = StepStats()
    with caplog.at_level("WARNING", logger="v4serve.engine"):
        st.record("prefill", 5.0)  # the first of its kind: no mean to compare with
        for _ in range(20):
            st.record("graph_decode", 0.011)
        st.record("graph_decode", 0.2)  # 10x+ the mean but under SLOW_MIN_S: not a stall worth a line
        built = []
        st.record("graph_decode", 0.011, lambda: built.append(1) or "never built")  # not slow: no detail
        st.record("graph_decode", 3.0, lambda: "64 sequences, 64 tokens; 2.90 s of kernel compiles in this call")
    lines = [r.getMessage() for r in caplog.records]
    assert st.slow_steps == 1 and len(lines) == 1 and built == [], lines
    assert lines[0].startswith("slow graph_decode step: 3.000 s") and "2.90 s of kernel compiles" in lines[0]
