"""The runner builds the batch, an executor runs it: building a batch sends nothing anywhere; running a
step hands the tensor-parallel executor exactly the host description the local forward used."""

from __future__ import annotations

import contextlib

import torch

from engine import LLM, SamplingParams
from engine.distributed.executor import TPExecutor
from engine.local_executor import LocalExecutor


class RecordingExecutor(TPExecutor):
    """The real TPExecutor.forward with no worker processes: records what a step sends to them."""

    def __init__(self, model):  # no spawn, no process group
        self.model, self.sent = model, []

    def send_step(self, host, kind: str = "step") -> None:
        self.sent.append((kind, host))

    def guard(self):
        return contextlib.nullcontext()


def test_the_runner_always_hands_the_step_to_an_executor(tiny_ckpt):
    """One process: the default LocalExecutor runs every eager forward (graphs stay allowed)."""
    llm = LLM(str(tiny_ckpt), device="cpu", dtype="float32", num_kv_blocks=16)
    runner = llm.engine.runner
    assert isinstance(runner.executor, LocalExecutor) and not runner.executor.multi_process
    calls = []
    forward = runner.executor.forward
    runner.executor.forward = lambda *a: calls.append(a[2].input_ids) or forward(*a)
    out = llm.generate([[5, 6, 7, 8]], SamplingParams(temperature=0, max_tokens=2))
    assert calls and calls[0] == [5, 6, 7, 8] and len(out[0].outputs[0].token_ids) == 2


def test_build_batch_has_no_side_effect_and_execute_sends_the_step(tiny_ckpt):
    llm = LLM(str(tiny_ckpt), device="cpu", dtype="float32", num_kv_blocks=16)
    eng = llm.engine
    eng.add_request("r", [5, 6, 7, 8], SamplingParams(temperature=0, max_tokens=2))
    sched = eng.scheduler.schedule()
    runner = eng.runner
    runner.executor = ex = RecordingExecutor(runner.model)
    batch, host = runner.build_batch(sched, [False])
    assert ex.sent == []  # building is not running
    assert batch.input_ids.tolist() == host.input_ids == [5, 6, 7, 8]
    assert host.sample_rows == [(0, 0)] and host.logits_indices == [3]
    res = runner.execute(sched, [False])
    assert [k for k, _ in ex.sent] == ["step"]
    sent = ex.sent[0][1]
    assert sent["input_ids"] == [5, 6, 7, 8] and sent["logits_indices"] == [3]
    assert torch.equal(torch.as_tensor(sent["slot_ids"]), host.slot_ids)
    assert res.sample_logits.shape[0] == 1
