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

import logging
from dataclasses import dataclass, field
from typing import Callable

log = logging.getLogger("v4serve.engine")

STEP_KINDS = ("graph_decode", "eager_decode", "prefill", "speculative")
# graph_decode: a pure-decode step through the static decode buffers (a CUDA-graph replay on a GPU)
# eager_decode: a pure-decode step run by the eager forward (no graphs, or more sequences than the largest bucket)
# prefill: a step with at least one prompt chunk (mixed prefill + decode included), always eager
# speculative: a verify (+ draft) step of MTP speculative decoding (engine/spec_decode.py)


SLOW_FACTOR = 10.0  # a step this many times its kind's running mean (and >= SLOW_MIN_S) is logged
SLOW_MIN_S = 0.25
_EMA = 0.05  # weight of a new step in the running mean


@dataclass
class StepStats:
    steps: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STEP_KINDS, 0))  # kind -> steps
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STEP_KINDS, 0.0))  # kind -> wall s
    mean_s: dict[str, float] = field(default_factory=dict)  # kind -> running mean of one step's seconds
    slow_steps: int = 0  # steps logged as slow (a stall: a compile, a fallback, a host pause)

    def record(self, kind: str, seconds: float, detail: Callable[[], str] | None = None) -> None:
        """One step of `kind` that took `seconds` of step() wall time. A step far above its kind's running mean
        is logged with `detail()` (what it ran, the compiles it waited for; built only then): the server's
        stalls, one line each."""
        if kind not in self.steps:
            raise ValueError(f"unknown step kind {kind!r} (one of {', '.join(STEP_KINDS)})")
        self.steps[kind] += 1
        self.seconds[kind] += seconds
        mean = self.mean_s.get(kind)
        if mean is not None and seconds >= SLOW_MIN_S and seconds > SLOW_FACTOR * mean:
            self.slow_steps += 1
            text = detail() if detail is not None else ""
            log.warning("slow %s step: %.3f s, %.0fx its running mean of %.1f ms%s", kind, seconds, seconds / mean,
                        1e3 * mean, f" ({text})" if text else "")
        self.mean_s[kind] = seconds if mean is None else (1 - _EMA) * mean + _EMA * seconds

    def snapshot(self) -> StepStats:
        """A copy (the engine thread keeps counting into the original)."""
        return StepStats(dict(self.steps), dict(self.seconds), dict(self.mean_s), self.slow_steps)

    def minus(self, earlier: StepStats) -> dict:
        """{"steps": {kind: n}, "seconds": {kind: s}} since `earlier` (a snapshot of the same engine)."""
        return {"steps": {k: self.steps[k] - earlier.steps[k] for k in STEP_KINDS},
                "seconds": {k: round(self.seconds[k] - earlier.seconds[k], 4) for k in STEP_KINDS}}
