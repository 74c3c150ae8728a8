"""Real engine over HTTP under load: aborted requests free their cache, 50 concurrent streams, /metrics
names and counts, and the 429 queue limit on a second app instance.
"""

from __future__ import annotations

import asyncio
import re
import threading

import httpx
import openai
from real_server import MODEL, USER, expect_error, get_metrics, make_engine, serve, wait_idle, wait_metric

from tests.server.disconnect import post_then_disconnect
from tests.server.metric_names import VLLM_METRICS


# ---- disconnects free the cache ------------------------------------------------------------------
def _aborted(http: httpx.Client) -> float:
    m = re.search(r'^vllm:request_success_total\{finished_reason="abort"[^}]*\} (\S+)$', http.get("/metrics").text, re.M)
    return float(m.group(1)) if m else 0.0


def test_stream_disconnect_frees_cache(real, http):
    wait_idle(http)
    aborted = _aborted(http)
    for route, body in (("/v1/chat/completions", {"messages": USER}), ("/v1/completions", {"prompt": "hi"})):
        with httpx.Client(base_url=real.base_url, timeout=30) as c:
            with c.stream("POST", route, json={**body, "max_tokens": 400, "ignore_eos": True, "stream": True}) as r:
                assert r.status_code == 200
                lines = r.iter_lines()
                got = [line for line in (next(lines) for _ in range(6)) if line]
                assert got
                m = get_metrics(http)
                assert m["vllm:num_requests_running"] == 1 and m["vllm:kv_cache_usage_perc"] > 0
        wait_idle(http)
    assert _aborted(http) == aborted + 2  # counted as vLLM does: request_success_total{finished_reason="abort"}


def test_non_stream_cancel_frees_cache(real, http):
    wait_idle(http)
    aborted = _aborted(http)
    for route, body in (("/v1/chat/completions", {"messages": USER}), ("/v1/completions", {"prompt": "hi"})):
        post_then_disconnect(real.base_url, route, {**body, "max_tokens": 400, "ignore_eos": True},
                             lambda: wait_metric(http, lambda m: m["vllm:num_requests_running"] == 1))
        wait_idle(http)
    assert _aborted(http) == aborted + 2
    # the server still works afterwards
    r = http.post("/v1/completions", json={"prompt": "hi", "max_tokens": 2, "ignore_eos": True})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2


# ---- load ----------------------------------------------------------------------------------------
def test_50_concurrent_streams(real, http):
    n_clients, n_tokens = 50, 6

    async def one(aclient: openai.AsyncOpenAI, i: int) -> tuple[str, int, str | None, int]:
        stream = await aclient.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": f"client {i} says hello"}], max_tokens=n_tokens,
            stream=True, stream_options={"include_usage": True}, reasoning_effort="none" if i % 2 else "high",
            extra_body={"ignore_eos": True})
        rid, usage, finish, chunks = None, None, None, 0
        async for chunk in stream:
            rid = chunk.id
            chunks += 1
            if chunk.usage:
                usage = chunk.usage
            for ch in chunk.choices:
                finish = ch.finish_reason or finish
        return rid, usage.completion_tokens, finish, usage.prompt_tokens

    async def main():
        async with openai.AsyncOpenAI(base_url=real.base_url + "/v1", api_key="x", max_retries=0,
                                      timeout=60) as aclient:
            return await asyncio.gather(*(one(aclient, i) for i in range(n_clients)))

    results = asyncio.run(main())
    assert len({r[0] for r in results}) == n_clients
    assert all(r[1] == n_tokens and r[2] == "length" and r[3] > 0 for r in results), results
    wait_idle(http)


# ---- metrics -------------------------------------------------------------------------------------
def test_metrics_names_and_counts(http):
    before = http.get("/metrics").text

    def total(text: str, name: str) -> float:
        m = re.search(rf"^{re.escape(name)}\{{[^}}]*\}} (\S+)$", text, re.M)
        return float(m.group(1)) if m else 0.0
    r = http.post("/v1/completions", json={"prompt": "hi", "max_tokens": 3, "ignore_eos": True})
    assert r.status_code == 200
    text = http.get("/metrics").text
    for name in VLLM_METRICS:
        assert f"\n{name}{{" in text, name
    assert total(text, "vllm:generation_tokens_total") - total(before, "vllm:generation_tokens_total") == 3
    assert total(text, "vllm:prompt_tokens_total") - total(before, "vllm:prompt_tokens_total") == \
        r.json()["usage"]["prompt_tokens"]
    assert f'model_name="{MODEL}"' in text and 'handler="/v1/completions"' in text




def test_queue_full_429(demo_dir):
    engine = make_engine(demo_dir, max_num_seqs=1, max_queued_requests=1, kv_cache_memory=16 << 20)
    base_url, stop = serve(engine)  # the cap is the engine's only: one admission point
    long = {"max_tokens": 300, "ignore_eos": True, "stream": True}
    release, second = threading.Event(), []

    def hold_second() -> None:  # admitted but waiting (max_num_seqs=1): headers come once it runs
        with httpx.Client(base_url=base_url, timeout=30) as c2, \
                c2.stream("POST", "/v1/completions", json={"prompt": "x", **long}) as r2:
            second.append(r2.status_code)
            release.wait(30)

    try:
        with httpx.Client(base_url=base_url, timeout=30) as c, httpx.Client(base_url=base_url, timeout=30) as c1:
            with c1.stream("POST", "/v1/chat/completions", json={"messages": USER, **long}) as r1:
                assert r1.status_code == 200
                t = threading.Thread(target=hold_second, daemon=True)
                t.start()
                wait_metric(c, lambda m: m["vllm:num_requests_waiting"] == 1)
                for route, body in (("/v1/chat/completions", {"messages": USER, "max_tokens": 2}),
                                    ("/v1/chat/completions", {"messages": USER, "max_tokens": 2, "stream": True}),
                                    ("/v1/completions", {"prompt": "y", "max_tokens": 2})):
                    r = c.post(route, json=body)
                    expect_error(r, 429)
                    assert int(r.headers["retry-after"]) >= 1
                release.set()
            t.join(30)
            assert second == [200]
            wait_idle(c)
            r = c.post("/v1/completions", json={"prompt": "y", "max_tokens": 2})
            assert r.status_code == 200
    finally:
        release.set()
        stop()
