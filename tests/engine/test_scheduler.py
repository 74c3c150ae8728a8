"""Scheduler with a fake runner: budget sharing, chunked prefill, FCFS, preemption, abort, admission.

The fake runner keeps, per sequence, a rolling hash of the tokens whose "state" it has computed; it
insists that every chunk starts exactly where that state ends (start 0 resets it, as recompute does)
and "samples" a token from the hash. Its outputs are a pure function of the token prefix, so any
correct schedule, with or without preemption, must produce the same tokens.
"""

import random

import pytest
import torch

from engine.config import SchedulerConfig
from engine.scheduler import QueueFullError, RequestTooLongError, Scheduler, SchedulerOutput
from engine.sampling_params import SamplingParams
from engine.sequence import Sequence, SequenceStatus, reached_length, token_stop
from kvcache.manager import KVCacheManager
from models.config import tiny_config

VOCAB = 512
STOP = 7  # a sampled STOP token finishes the sequence (FINISHED_STOPPED)


class FakeRunner:
    def __init__(self):
        self.state: dict[str, tuple[int, int]] = {}  # seq_id -> (computed tokens, rolling hash)

    def __call__(self, out: SchedulerOutput) -> dict[str, int]:
        sampled = {}
        for c in out.chunks:
            sid = c.seq.seq_id
            n, h = (0, 17) if c.start == 0 else self.state[sid]
            assert n == c.start, f"{sid}: chunk starts at {c.start}, state holds {n} tokens"
            for t in c.seq.tokens(c.start, c.start + c.num_tokens):
                h = (h * 1_000_003 + t + 1) % (2**61 - 1)
            self.state[sid] = (c.start + c.num_tokens, h)
            if c.sample:
                sampled[sid] = h % VOCAB
        return sampled


def make(max_num_seqs=4, budget=32, max_model_len=256, num_blocks=64, block_size=8, max_queued=None):
    kv = KVCacheManager(tiny_config(), num_blocks=num_blocks, num_slots=max_num_seqs, block_size=block_size,
                        dtype=torch.float32, device="cpu")
    cfg = SchedulerConfig(max_num_seqs=max_num_seqs, max_num_batched_tokens=budget,
                          max_model_len=max_model_len, max_queued_requests=max_queued)
    return Scheduler(cfg, kv), kv


def seq(i, prompt_len, max_tokens=8, request_id=None, sample_index=0):
    prompt = [(i * 31 + j * 7) % VOCAB for j in range(prompt_len)]
    return Sequence(f"s{i}" if request_id is None else f"{request_id}-{sample_index}",
                    request_id or f"r{i}", sample_index, prompt, max_tokens, arrival_time=float(i))


def step(sched, kv, runner, log=None, stop=STOP):
    """One scheduler step around a fake runner: schedule, run, update, append sampled tokens, finish on
    stop/length (LLMEngine.step does the same with the real runner, sampler and detokenizer)."""
    out = sched.schedule()
    kv.check_integrity()
    assert out.num_batched_tokens == sum(c.num_tokens for c in out.chunks) <= sched.config.max_num_batched_tokens
    assert len({c.seq.seq_id for c in out.chunks}) == len(out.chunks) <= sched.config.max_num_seqs
    assert sched.num_running <= sched.config.max_num_seqs
    for c in out.chunks:
        assert c.start == c.seq.num_computed_tokens and c.num_tokens > 0
        assert c.sample == (c.start + c.num_tokens == c.seq.num_tokens)
        assert len(kv.block_table(c.seq.seq_id)) >= -(-(c.start + c.num_tokens) // kv.block_size)
    if log is not None:
        log.append(out)
    sampled = runner(out)
    sched.update_after_step(out)
    params = SamplingParams(stop_token_ids=[] if stop is None else [stop])
    for c in out.chunks:  # the engine's own stop rules (engine/sequence.py; stop strings need a tokenizer)
        s = c.seq
        if s.seq_id in sampled and not s.is_finished:
            t = sampled[s.seq_id]
            s.append_token(t)
            if token_stop(t, params, eos_token_id=None) is not None:
                sched.finish(s.seq_id, SequenceStatus.FINISHED_STOPPED)
            elif reached_length(s, sched.config.max_model_len):
                sched.finish(s.seq_id, SequenceStatus.FINISHED_LENGTH)
    kv.check_integrity()
    return out


def run_all(sched, kv, seqs, log=None, max_steps=5000):
    runner = FakeRunner()
    for s in seqs:
        sched.add(s)
    for _ in range(max_steps):
        if not sched.has_unfinished():
            break
        step(sched, kv, runner, log)
    assert not sched.has_unfinished()
    assert kv.num_free_blocks == kv.num_blocks and kv.num_free_slots == kv.num_slots
    return {s.seq_id: list(s.output_token_ids) for s in seqs}


def workload():
    return [seq(i, 5 + (i * 13) % 40, max_tokens=4 + i % 9) for i in range(10)]


def test_budget_shared_between_decode_and_prefill():
    sched, kv = make(budget=16)
    runner = FakeRunner()
    a, b = seq(0, 10, max_tokens=20), seq(1, 40, max_tokens=20)
    sched.add(a)
    out = step(sched, kv, runner)
    assert [(c.seq.seq_id, c.start, c.num_tokens, c.sample) for c in out.chunks] == [("s0", 0, 10, True)]
    sched.add(b)
    expected = [[("s0", 10, 1, True), ("s1", 0, 15, False)],
                [("s0", 11, 1, True), ("s1", 15, 15, False)],
                [("s0", 12, 1, True), ("s1", 30, 10, True)],
                [("s0", 13, 1, True), ("s1", 40, 1, True)]]
    for exp in expected:
        out = step(sched, kv, runner)
        assert [(c.seq.seq_id, c.start, c.num_tokens, c.sample) for c in out.chunks] == exp


def test_chunked_prefill_across_block_boundaries():
    sched, kv = make(budget=7, block_size=8)
    runner = FakeRunner()
    s = seq(0, 30, max_tokens=3)
    sched.add(s)
    starts = []
    while s.num_output_tokens == 0:
        out = step(sched, kv, runner)
        (c,) = out.chunks
        starts.append(c.start)
        assert len(kv.block_table("s0")) == -(-(c.start + c.num_tokens) // 8)
    assert starts == [0, 7, 14, 21, 28]
    while sched.has_unfinished():
        step(sched, kv, runner)
    ref_sched, ref_kv = make(budget=512)
    assert run_all(ref_sched, ref_kv, [seq(0, 30, max_tokens=3)]) == {"s0": s.output_token_ids}


def test_max_num_seqs_and_outputs_match_unconstrained():
    ref_sched, ref_kv = make(max_num_seqs=16, budget=1024, num_blocks=256)
    ref = run_all(ref_sched, ref_kv, workload())
    log = []
    sched, kv = make(max_num_seqs=2, budget=16)
    assert run_all(sched, kv, workload(), log) == ref
    assert max(len(o.chunks) for o in log) == 2
    assert sched.num_preemptions_total == 0


def test_fcfs_head_of_line_is_not_overtaken():
    sched, kv = make(max_num_seqs=4, budget=64, num_blocks=4, block_size=8)
    runner = FakeRunner()
    a, b, c = seq(0, 20, max_tokens=4), seq(1, 16, max_tokens=2), seq(2, 4, max_tokens=2)
    for s in (a, b, c):
        sched.add(s)
    step(sched, kv, runner, stop=None)  # a takes 3 of 4 blocks; b needs 2 -> blocked; c would fit but waits
    assert [s.seq_id for s in sched.running] == ["s0"] and [s.seq_id for s in sched.waiting] == ["s1", "s2"]
    first_step: dict[str, int] = {"s0": 0}
    for k in range(1, 100):
        if not sched.has_unfinished():
            break
        for ch in step(sched, kv, runner, stop=None).chunks:
            first_step.setdefault(ch.seq.seq_id, k)
    assert first_step["s0"] < first_step["s1"] <= first_step["s2"]


def test_preemption_under_tiny_cache_keeps_outputs():
    ref_sched, ref_kv = make(max_num_seqs=16, budget=1024, num_blocks=256)
    ref = run_all(ref_sched, ref_kv, workload())
    log = []
    sched, kv = make(max_num_seqs=6, budget=24, num_blocks=8, block_size=8)  # 64 tokens for 6 sequences
    assert run_all(sched, kv, workload(), log) == ref
    assert sched.num_preemptions_total > 0
    assert sum(len(o.preempted_seq_ids) for o in log) == sched.num_preemptions_total
    arrival = {s.seq_id: s.arrival_time for s in workload()}
    for o in (o for o in log if o.preempted_seq_ids):
        assert all(c.start > 0 for c in o.chunks)  # no admission (admissions start at 0) in a preempting step
        scheduled = [arrival[c.seq.seq_id] for c in o.chunks]
        assert max(scheduled, default=-1) < min(arrival[sid] for sid in o.preempted_seq_ids)  # victims = latest


def test_victim_is_latest_arrival_and_goes_to_front():
    sched, kv = make(max_num_seqs=3, budget=64, num_blocks=3, block_size=8)
    runner = FakeRunner()
    a, b, c = seq(0, 8, max_tokens=8), seq(1, 7, max_tokens=8), seq(2, 6, max_tokens=8)
    for s in (a, b, c):
        sched.add(s)
    step(sched, kv, runner, stop=None)  # each takes one block; all full after the next token of a
    out = step(sched, kv, runner, stop=None)  # a needs a 2nd block -> c (latest) is preempted
    assert out.preempted_seq_ids == ["s2"] and c.status == SequenceStatus.WAITING
    assert c.num_computed_tokens == 0 and c.num_preemptions == 1 and not kv.has("s2")
    assert list(sched.waiting) == [c]
    assert [ch.seq.seq_id for ch in out.chunks] == ["s0", "s1"]


def test_abort_waiting_running_and_preempted():
    sched, kv = make(max_num_seqs=3, budget=64, num_blocks=3, block_size=8)
    runner = FakeRunner()
    a, b, c = seq(0, 8, max_tokens=8), seq(1, 7, max_tokens=8), seq(2, 6, max_tokens=8)
    d = seq(3, 4, max_tokens=5)
    for s in (a, b, c, d):
        sched.add(s)
    step(sched, kv, runner, stop=None)
    step(sched, kv, runner, stop=None)  # c preempted; d waiting (slot-limited) behind it
    assert c.num_preemptions == 1 and d.status == SequenceStatus.WAITING
    for s in (c, d, b, a):  # preempted, waiting, running, running
        (done,) = sched.abort_request(s.request_id)
        assert done is s and s.status == SequenceStatus.FINISHED_ABORTED
        assert s.status.finish_reason == "abort"
        kv.check_integrity()
    assert not sched.has_unfinished() and sched.num_running == sched.num_waiting == 0
    assert kv.usage == 0 and kv.num_free_slots == kv.num_slots
    assert sched.abort_request("r0") == []  # idempotent
    with pytest.raises(KeyError):
        sched.get("s0")


def test_abort_all_samples_of_a_request_and_stale_output():
    sched, kv = make()
    runner = FakeRunner()
    sched.add_request([seq(0, 5, request_id="req", sample_index=k) for k in range(3)])
    out = step(sched, kv, runner)
    assert len(out.chunks) == 3 and all(s.seq_id.startswith("req-") for s in sched.running)
    out = sched.schedule()
    aborted = sched.abort_request("req")  # aborted between schedule and update: update skips them
    assert len(aborted) == 3
    sched.update_after_step(out)
    assert kv.usage == 0 and kv.num_free_slots == kv.num_slots
    kv.check_integrity()


def test_too_long_requests():
    sched, kv = make(max_model_len=100, num_blocks=8, block_size=8)
    with pytest.raises(RequestTooLongError) as e:
        sched.add(seq(0, 90, max_tokens=20))
    assert str(e.value) == ("This model's maximum context length is 100 tokens. However, you requested 110 tokens "
                            "(90 in the messages, 20 in the completion). Please reduce the length of the messages "
                            "or completion.")
    with pytest.raises(RequestTooLongError, match="KV cache can hold at most 64 tokens"):
        sched.add(seq(1, 60, max_tokens=10))
    assert isinstance(e.value, ValueError)
    with pytest.raises(ValueError, match="empty"):
        sched.add(seq(2, 0))
    with pytest.raises(ValueError, match="max_tokens"):
        sched.add(seq(3, 4, max_tokens=0))
    assert not sched.has_unfinished()
    sched.add(seq(4, 60, max_tokens=4))  # exactly fits
    with pytest.raises(ValueError, match="already"):
        sched.add(sched.get("s4"))


def test_queue_full_and_all_or_nothing_requests():
    sched, kv = make(max_queued=3)
    sched.add(seq(0, 4))
    sched.add(seq(1, 4))
    with pytest.raises(QueueFullError, match="max_queued_requests=3"):
        sched.add_request([seq(2, 4, request_id="big", sample_index=k) for k in range(2)])
    assert sched.num_waiting == 2  # nothing of the refused request was queued
    sched.add(seq(3, 4))
    with pytest.raises(QueueFullError):
        sched.add(seq(4, 4))
    step(sched, kv, FakeRunner())  # admission drains the queue
    assert sched.num_waiting == 0
    sched.add(seq(4, 4))


def test_admit_is_the_one_decision():
    """admit() (what LLMEngine.add_request calls once) resolves max_tokens and refuses what add_request
    refuses; the queue cap counts sequences; admitting queues nothing."""
    sched, kv = make(max_model_len=60, num_blocks=8, block_size=8, max_queued=3)
    assert sched.admit(30, None) == 30 and sched.admit(30, 5) == 5
    with pytest.raises(RequestTooLongError):
        sched.admit(60, None)
    with pytest.raises(ValueError, match="empty"):
        sched.admit(0, 4)
    with pytest.raises(ValueError, match="max_tokens"):
        sched.admit(4, 0)
    with pytest.raises(QueueFullError):
        sched.admit(4, 4, n=4)  # 4 sequences, cap 3
    assert sched.admit(4, 4, n=3) == 4 and sched.num_waiting == 0


def test_finish_statuses():
    sched, kv = make()
    outs = run_all(sched, kv, workload())
    assert all(0 < len(v) for v in outs.values())
    s = seq(99, 4)
    sched.add(s)
    with pytest.raises(ValueError, match="finished status"):
        sched.finish("s99", SequenceStatus.RUNNING)
    assert sched.finish("s99", SequenceStatus.FINISHED_LENGTH).status.finish_reason == "length"
    with pytest.raises(KeyError):
        sched.finish("s99", SequenceStatus.FINISHED_STOPPED)


def test_decode_step_256_running():
    """256 running decode sequences: one 1-token chunk each per step, one allocate call per sequence,
    no preemption (the step's cost is measured by bench/throughput.py, not asserted here)."""
    n = 256
    sched, kv = make(max_num_seqs=n, budget=8192, num_blocks=n * 8, block_size=8, max_model_len=64)
    for i in range(n):
        sched.add(seq(i, 16, max_tokens=40))
    runner = FakeRunner()
    step(sched, kv, runner)  # prefill all
    assert sched.num_running == n
    calls = []
    allocate = kv.allocate
    kv.allocate = lambda *a, **k: calls.append(a[0]) or allocate(*a, **k)
    for _ in range(20):
        calls.clear()
        out = step(sched, kv, runner, stop=None)
        assert len(out.chunks) == n and all(c.num_tokens == 1 and c.sample for c in out.chunks)
        assert sorted(calls) == sorted(c.seq.seq_id for c in out.chunks)
    assert sched.num_preemptions_total == 0


def test_random_arrivals_and_aborts_under_pressure():
    rng = random.Random(1)
    seqs = [seq(i, rng.randrange(1, 50), max_tokens=rng.randrange(1, 14)) for i in range(40)]
    ref_sched, ref_kv = make(max_num_seqs=64, budget=4096, num_blocks=512)
    ref = run_all(ref_sched, ref_kv, [seq(i, s.num_prompt_tokens, s.max_tokens) for i, s in enumerate(seqs)])
    sched, kv = make(max_num_seqs=5, budget=20, num_blocks=10, block_size=8)
    runner, pending, aborted = FakeRunner(), list(seqs), set()
    for _ in range(5000):
        while pending and rng.random() < 0.3:
            sched.add(pending.pop(0))
        if rng.random() < 0.03 and sched.has_unfinished():
            victim = rng.choice([*sched.running, *sched.waiting])
            sched.abort_request(victim.request_id)
            aborted.add(victim.seq_id)
            kv.check_integrity()
        if not pending and not sched.has_unfinished():
            break
        step(sched, kv, runner)
    assert not pending and not sched.has_unfinished() and kv.usage == 0
    assert aborted and sched.num_preemptions_total > 0
    for s in seqs:
        if s.seq_id in aborted:
            assert s.status == SequenceStatus.FINISHED_ABORTED
            assert s.output_token_ids == ref[s.seq_id][:s.num_output_tokens]
        else:
            assert s.is_finished and s.output_token_ids == ref[s.seq_id]
