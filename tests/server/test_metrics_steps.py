"""/metrics exports where the engine's steps went (engine/step_stats.py): steps and wall seconds by kind, and
the kernel compiles after start-up, so a server run can be set beside the same engine offline."""

from __future__ import annotations

import re

import httpx
from real_server import USER, wait_idle


def _steps(http: httpx.Client) -> dict[str, float]:
    text = http.get("/metrics").text
    out = {}
    for name in ("engine_steps_total", "engine_step_seconds_total"):
        for kind, value in re.findall(rf'^v4serve:{name}\{{kind="(\w+)",model_name="[^"]+"\}} (\S+)$', text, re.M):
            out[f"{name}/{kind}"] = float(value)
    m = re.search(r'^v4serve:kernel_compiles_total\{model_name="[^"]+"\} (\S+)$', text, re.M)
    assert m, "v4serve:kernel_compiles_total missing"
    out["compiles"] = float(m.group(1))
    return out


def test_a_request_shows_up_as_prefill_and_decode_steps(real, http):
    wait_idle(http)
    before = _steps(http)
    assert len([k for k in before if k.startswith("engine_steps_total/")]) == 4  # every kind, zeros included
    r = http.post("/v1/chat/completions", json={"messages": USER, "max_tokens": 4, "ignore_eos": True})
    assert r.status_code == 200
    wait_idle(http)
    d = {k: v - before[k] for k, v in _steps(http).items()}
    assert d["engine_steps_total/prefill"] >= 1 and d["engine_steps_total/eager_decode"] >= 2, d
    assert d["engine_steps_total/graph_decode"] == 0 and d["engine_steps_total/speculative"] == 0, d  # CPU
    assert d["engine_step_seconds_total/prefill"] > 0 and d["engine_step_seconds_total/eager_decode"] > 0, d
    assert d["compiles"] == 0


def test_bench_serve_reads_the_same_counters(real, http):
    """bench.serve's parser gives the page's numbers, and a server without them gives None."""
    from bench.engine_counters import counters_delta, engine_counters
    wait_idle(http)
    page = http.get("/metrics").text
    got, raw = engine_counters(page), _steps(http)
    assert got["steps"] == {k.split("/")[1]: v for k, v in raw.items() if k.startswith("engine_steps_total/")}
    assert got["kernel_compiles"] == raw["compiles"] == 0
    assert engine_counters("vllm:num_requests_running{model_name=\"m\"} 0.0\n") is None
    later = {**got, "steps": {**got["steps"], "prefill": got["steps"]["prefill"] + 2}}
    assert counters_delta(later, got)["steps"]["prefill"] == 2 and counters_delta(later, None) is None
