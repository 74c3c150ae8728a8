"""Where an engine's time goes, step by step: how many steps of each kind ran and the wall time they took.

A serving engine that is slower than the same engine driven offline has lost its time somewhere: steps that
replayed a decode graph, decode steps that fell back to the eager forward, steps that carried prefill chunks,
speculative steps, or Triton compiles a request had to wait for (engine/kernel_compiles.py). These totals are
exported on /metrics (`v4serve:engine_steps_total{kind}`, `v4serve:engine_step_seconds_total{kind}`) and
reported by bench/throughput.py and bench/serve.py, so an offline run and a server run of one workload can be
compared kind by kind.

Seconds are host wall time of `LLMEngine.step()`. With the overlapped loop (engine/async_step.py) a step()
launches step N+1 and then waits for step N's tokens, so its wall time is, to within the host work, the
device time of step N: it is charged to step N's kind. Synchronous steps are charged to themselves.
"""

from __future__ import annotations

from dataclasses import dataclass, field

STEP_KINDS = ("graph_decode", "eager_decode", "prefill", "speculative")
# graph_decode: a pure-decode step through the static decode buffers (a CUDA-graph replay on a GPU)
# eager_decode: a pure-decode step run by the eager forward (no graphs, or more sequences than the largest bucket)
# prefill: a step with at least one prompt chunk (mixed prefill + decode included), always eager
# speculative: a verify (+ draft) step of MTP speculative decoding (engine/spec_decode.py)


@dataclass
class StepStats:
    steps: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STEP_KINDS, 0))  # kind -> steps
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STEP_KINDS, 0.0))  # kind -> wall s

    def record(self, kind: str, seconds: float) -> None:
        """One step of `kind` that took `seconds` of step() wall time."""
        if kind not in self.steps:
            raise ValueError(f"unknown step kind {kind!r} (one of {', '.join(STEP_KINDS)})")
        self.steps[kind] += 1
        self.seconds[kind] += seconds

    def snapshot(self) -> StepStats:
        """A copy (the engine thread keeps counting into the original)."""
        return StepStats(dict(self.steps), dict(self.seconds))

    def minus(self, earlier: StepStats) -> dict:
        """{"steps": {kind: n}, "seconds": {kind: s}} since `earlier` (a snapshot of the same engine)."""
        return {"steps": {k: self.steps[k] - earlier.steps[k] for k in STEP_KINDS},
                "seconds": {k: round(self.seconds[k] - earlier.seconds[k], 4) for k in STEP_KINDS}}
