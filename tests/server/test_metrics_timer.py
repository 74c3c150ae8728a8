"""Inter-token latency is observed live for streams and from the engine's clock for final-only outputs."""

from __future__ import annotations

from engine.llm_engine import EngineStats
from engine.outputs import CompletionOutput, RequestOutput
from server.metrics import ServerMetrics


def _itl_count(m: ServerMetrics) -> float:
    for fam in m.registry.collect():
        for s in fam.samples:
            if s.name == "vllm:inter_token_latency_seconds_count":
                return s.value
    raise AssertionError("no ITL histogram")


def _out(n_tokens: int, finished: bool) -> RequestOutput:
    return RequestOutput("r", [1, 2], [CompletionOutput(0, list(range(n_tokens)), "x" * n_tokens,
                                                        "length" if finished else None)],
                         finished=finished, metrics={"arrival": 0.0, "first_scheduled": 0.1, "first_token": 0.2,
                                                     "finished": 1.0})


def test_final_only_output_observes_mean_interval():
    m = ServerMetrics(lambda: EngineStats(0, 0, 0.0, 0, 0, 0, 0), "tiny")
    m.timer().on_output(_out(5, True))
    assert _itl_count(m) == 4


def test_streamed_outputs_observe_live_intervals_once():
    m = ServerMetrics(lambda: EngineStats(0, 0, 0.0, 0, 0, 0, 0), "tiny")
    t = m.timer()
    for k in range(1, 6):
        t.on_output(_out(k, k == 5))
    assert _itl_count(m) == 4
