"""Per-request latency metrics are stamped at the right moments: `first_scheduled` before the model
runs (queue time ends, prefill starts), `first_token` after it, `finished` at the last token; the
/metrics histograms then obey queue + prefill + decode = e2e, prefill + decode = inference,
TTFT = queue + prefill, prefill > 0."""

from __future__ import annotations

import re

import httpx
import pytest
from real_server import USER, wait_idle

from engine.config import EngineArgs
from engine.llm_engine import LLMEngine
from engine.outputs import OutputKind
from engine.sampling_params import SamplingParams

_NAMES = ("time_to_first_token_seconds", "e2e_request_latency_seconds", "request_queue_time_seconds",
          "request_prefill_time_seconds", "request_decode_time_seconds", "request_inference_time_seconds")


def test_engine_stamps_schedule_before_the_model_runs(demo_dir, monkeypatch):
    eng = LLMEngine(EngineArgs(model=str(demo_dir), device="cpu", max_model_len=256, kv_cache_memory=16 << 20,
                               max_num_batched_tokens=16))
    runs: list[tuple[float, set[str]]] = []  # (time the model started, requests stamped by then)
    execute = eng.runner.execute

    def spy(sched, *a, **kw):
        import time
        runs.append((time.monotonic(), {r for r, st in eng.requests.items() if "first_scheduled" in st.metrics}))
        return execute(sched, *a, **kw)

    monkeypatch.setattr(eng.runner, "execute", spy)
    # a 40-token prompt with a 16-token budget: three prefill chunks, then decode; a second request queues
    eng.add_request("a", list(range(10, 50)), SamplingParams(max_tokens=4, ignore_eos=True),
                    output_kind=OutputKind.FINAL_ONLY)
    eng.add_request("b", list(range(10, 30)), SamplingParams(max_tokens=3, ignore_eos=True),
                    output_kind=OutputKind.FINAL_ONLY)
    outs = {}
    while eng.has_unfinished():
        outs.update({o.request_id: o for o in eng.step()})
    assert "a" in runs[0][1]  # stamped before the first forward that ran it
    for rid, o in outs.items():
        t = o.metrics
        assert t["arrival"] <= t["first_scheduled"] < t["first_token"] <= t["finished"], (rid, t)
        first_run = next(ts for ts, stamped in runs if rid in stamped)
        assert t["first_scheduled"] <= first_run < t["first_token"]
    # b waited for a's prefill chunks: its queue time covers at least one forward
    assert outs["b"].metrics["first_scheduled"] > runs[0][0]


def _sums(http: httpx.Client) -> dict[str, float]:
    text = http.get("/metrics").text
    out = {}
    for name in _NAMES:
        m = re.search(rf"^vllm:{name}_sum\{{[^}}]*\}} (\S+)$", text, re.M)
        assert m, name
        out[name] = float(m.group(1))
    return out


@pytest.mark.parametrize("stream", [False, True])
def test_metrics_relations_per_request(real, http, stream):
    wait_idle(http)
    before = _sums(http)
    body = {"messages": USER, "max_tokens": 5, "ignore_eos": True, "stream": stream}
    r = http.post("/v1/chat/completions", json=body)
    assert r.status_code == 200
    wait_idle(http)
    d = {k: v - before[k] for k, v in _sums(http).items()}
    q, p, dec = d["request_queue_time_seconds"], d["request_prefill_time_seconds"], d["request_decode_time_seconds"]
    assert p > 0 and dec > 0 and q >= 0, d
    eps = 1e-6  # the sums are of the same engine stamps: only float rounding separates them
    assert abs(q + p + dec - d["e2e_request_latency_seconds"]) < eps, d
    assert abs(p + dec - d["request_inference_time_seconds"]) < eps, d
    assert d["time_to_first_token_seconds"] >= q + p - eps, d
