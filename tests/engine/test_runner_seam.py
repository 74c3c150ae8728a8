"""The runner builds the batch, an executor runs it: building a batch sends nothing anywhere; running a
step hands the tensor-parallel executor exactly the host description the local forward used."""

from __future__ import annotations

import contextlib

import torch

from engine import LLM, SamplingParams


class RecordingExecutor:
    """Stands in for TPExecutor: records what a step would send to the workers."""

    def __init__(self):
        self.sent: list[tuple[str, dict]] = []

    def send_step(self, host, kind: str = "step") -> None:
        self.sent.append((kind, host))

    def guard(self):
        return contextlib.nullcontext()


def test_build_batch_has_no_side_effect_and_execute_sends_the_step(tiny_ckpt):
    llm = LLM(str(tiny_ckpt), device="cpu", dtype="float32", num_kv_blocks=16)
    eng = llm.engine
    eng.add_request("r", [5, 6, 7, 8], SamplingParams(temperature=0, max_tokens=2))
    sched = eng.scheduler.schedule()
    runner = eng.runner
    runner.executor = ex = RecordingExecutor()
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
