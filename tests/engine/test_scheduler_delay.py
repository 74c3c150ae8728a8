"""scheduler_delay_factor (vLLM's): while sequences run, new prompts wait until the oldest waiting one has
waited delay_factor x the last prompt step's duration, then are admitted together; with nothing running they
are admitted at once; 0 keeps admission at the next step. Outputs are the same tokens either way."""

from __future__ import annotations

import pytest
import torch

from engine.config import EngineArgs, SchedulerConfig
from engine.scheduler import Scheduler
from engine.sequence import Sequence
from kvcache.manager import KVCacheManager
from models.config import tiny_config
from test_scheduler import FakeRunner, VOCAB, run_all, step


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def make(delay, clock, max_num_seqs=8, budget=64):
    kv = KVCacheManager(tiny_config(), num_blocks=128, num_slots=max_num_seqs, block_size=8, dtype=torch.float32,
                        device="cpu")
    cfg = SchedulerConfig(max_num_seqs=max_num_seqs, max_num_batched_tokens=budget, max_model_len=256,
                          delay_factor=delay)
    return Scheduler(cfg, kv, clock=clock), kv


def seq(i, arrival, prompt_len=20, max_tokens=30):
    return Sequence(f"s{i}", f"r{i}", 0, [(i * 31 + j * 7) % VOCAB for j in range(prompt_len)], max_tokens,
                    arrival_time=arrival)


def admitted(out):
    return sorted(c.seq.seq_id for c in out.chunks if c.start == 0)


def test_arrivals_wait_for_the_delay_then_share_one_step():
    clock = Clock()
    sched, kv = make(2.0, clock)
    runner = FakeRunner()
    sched.add(seq(0, 0.0))
    assert admitted(step(sched, kv, runner)) == ["s0"]  # nothing running: admitted at once
    clock.t = 0.1  # that prompt step took 0.1 s: new prompts now wait > 0.2 s
    assert admitted(step(sched, kv, runner)) == []  # a decode step
    sched.add(seq(1, 0.12))
    clock.t = 0.2
    assert admitted(step(sched, kv, runner)) == []  # s1 waited 0.08 s
    sched.add(seq(2, 0.25))
    clock.t = 0.3
    assert admitted(step(sched, kv, runner)) == []  # 0.18 s
    clock.t = 0.33
    assert admitted(step(sched, kv, runner)) == ["s1", "s2"]  # 0.21 s > 0.2 s: both in one step
    kv.check_integrity()


def test_zero_factor_admits_at_the_next_step():
    clock = Clock()
    sched, kv = make(0.0, clock)
    runner = FakeRunner()
    sched.add(seq(0, 0.0))
    step(sched, kv, runner)
    clock.t = 5.0
    step(sched, kv, runner)
    sched.add(seq(1, 5.0))
    assert admitted(step(sched, kv, runner)) == ["s1"]


@pytest.mark.parametrize("delay", [0.0, 0.5, 3.0])
def test_same_tokens_with_any_delay(delay):
    """The delay only moves admissions: each sequence's tokens are a function of its own prefix (FakeRunner),
    so every run ends with the same outputs; a clock that advances per call exercises the waiting."""
    class Ticking(Clock):
        def __call__(self):
            self.t += 0.01
            return self.t
    sched, kv = make(delay, Ticking(), max_num_seqs=3, budget=24)
    seqs = [seq(i, 0.0, prompt_len=10 + 7 * i, max_tokens=12) for i in range(6)]
    ref_sched, ref_kv = make(0.0, Clock(), max_num_seqs=3, budget=24)
    ref = run_all(ref_sched, ref_kv, [seq(i, 0.0, prompt_len=10 + 7 * i, max_tokens=12) for i in range(6)])
    assert run_all(sched, kv, seqs) == ref


def test_engine_args_reject_a_negative_or_nan_factor():
    for bad in (-0.1, float("nan")):
        with pytest.raises(ValueError, match="scheduler_delay_factor must be >= 0"):
            EngineArgs(scheduler_delay_factor=bad).validate()
