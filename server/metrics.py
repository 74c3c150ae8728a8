"""Prometheus metrics under vLLM's exact names (label `model_name`), on a private registry.

Engine-wide state (running/waiting counts, KV usage, token and preemption totals) is read from
`AsyncLLM.stats()` at scrape time by a custom collector; per-request latencies and sizes are
observed by the serving code through `RequestTimer`; HTTP traffic is counted by `HttpMetricsMiddleware`.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from engine.outputs import RequestOutput

_LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
                    10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
_ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3,
                0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)
_TOKEN_BUCKETS = tuple(float(b * m) for m in (1, 10, 100, 1000, 10000, 100000) for b in (1, 2, 5)) + (1048576.0,)


class _EngineStatsCollector:
    """Gauges and counters that mirror `engine.stats()` at collection time."""

    def __init__(self, stats_fn: Callable[[], Any], model_name: str) -> None:
        self.stats_fn, self.model_name = stats_fn, model_name

    def collect(self):
        s = self.stats_fn()
        lv = [self.model_name]
        G, C = GaugeMetricFamily, CounterMetricFamily
        single = [
            (G, "vllm:num_requests_running", "Number of requests running on the engine.", s.num_running),
            (G, "vllm:num_requests_waiting", "Number of requests waiting to be scheduled.", s.num_waiting),
            (G, "vllm:kv_cache_usage_perc", "KV-cache usage, 1 means 100 percent.", s.kv_cache_usage),
            (C, "vllm:prompt_tokens", "Number of prefill tokens processed.", s.prompt_tokens_total),
            (C, "vllm:generation_tokens", "Number of generation tokens processed.", s.generation_tokens_total),
            (C, "vllm:num_preemptions", "Cumulative number of preemptions.", s.num_preemptions_total),
            (C, "vllm:prefix_cache_queries", "Prefix-cache queries, in prompt tokens looked up.",
             s.prefix_cache_queries_total),
            (C, "vllm:prefix_cache_hits", "Prefix-cache hits, in prompt tokens reused.", s.prefix_cache_hits_total)]
        sd = s.spec_decode  # speculative decoding on (engine/spec_decode.py): vLLM's counters
        if sd is not None:
            single += [
                (C, "vllm:spec_decode_num_drafts", "Number of spec decoding drafts.", sd.num_drafts),
                (C, "vllm:spec_decode_num_draft_tokens", "Number of draft tokens.", sd.num_draft_tokens),
                (C, "vllm:spec_decode_num_accepted_tokens", "Number of accepted tokens.", sd.num_accepted_tokens)]
        for family, name, doc, value in single:
            m = family(name, doc, labels=["model_name"])
            m.add_metric(lv, float(value))
            yield m
        if sd is not None:
            c = CounterMetricFamily("vllm:spec_decode_num_accepted_tokens_per_pos",
                                    "Accepted tokens per draft position.", labels=["model_name", "position"])
            for pos, value in enumerate(list(sd.accepted_per_pos)):
                c.add_metric(lv + [str(pos)], float(value))
            yield c
        yield from _step_families(s, lv)


def _step_families(s, lv: list[str]):
    """v4serve's own counters (engine/step_stats.py): steps and their wall seconds by kind, and the Triton
    compiles steps waited for after start-up -- where a server's time goes next to the same engine offline."""
    C = CounterMetricFamily
    if s.steps is not None:
        n = C("v4serve:engine_steps", "Engine steps by kind (graph_decode, eager_decode, prefill, speculative).",
              labels=["model_name", "kind"])
        t = C("v4serve:engine_step_seconds", "Wall seconds of engine steps by kind (overlapped loop: the step a "
              "call waited for).", labels=["model_name", "kind"])
        for kind, count in s.steps.steps.items():
            n.add_metric(lv + [kind], float(count))
            t.add_metric(lv + [kind], float(s.steps.seconds[kind]))
        yield n
        yield t
    k = C("v4serve:kernel_compiles", "Triton kernel compiles (or on-disk cache loads) after start-up.",
          labels=["model_name"])
    k.add_metric(lv, float(s.kernel_compiles_total))
    yield k
    ks = C("v4serve:kernel_compile_seconds", "Seconds spent in kernel compiles after start-up.", labels=["model_name"])
    ks.add_metric(lv, float(s.kernel_compile_seconds_total))
    yield ks


class ServerMetrics:
    def __init__(self, stats_fn: Callable[[], Any], model_name: str) -> None:
        self.model_name = model_name
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_EngineStatsCollector(stats_fn, model_name))
        r, m = self.registry, ["model_name"]
        self.request_success = Counter("vllm:request_success", "Finished requests (per choice) by finish reason.",
                                       m + ["finished_reason"], registry=r)

        def hist(name: str, doc: str, buckets) -> Histogram:
            return Histogram(name, doc, m, buckets=buckets, registry=r).labels(model_name)

        self.ttft = hist("vllm:time_to_first_token_seconds", "Time to first token in seconds.", _LATENCY_BUCKETS)
        self.itl = hist("vllm:inter_token_latency_seconds", "Inter-token latency in seconds.", _ITL_BUCKETS)
        self.e2e = hist("vllm:e2e_request_latency_seconds", "End-to-end request latency in seconds.",
                        _LATENCY_BUCKETS)
        self.queue = hist("vllm:request_queue_time_seconds", "Time spent waiting to be scheduled.", _LATENCY_BUCKETS)
        self.prefill = hist("vllm:request_prefill_time_seconds", "Time from first schedule to first token.",
                            _LATENCY_BUCKETS)
        self.decode = hist("vllm:request_decode_time_seconds", "Time from first token to finish.", _LATENCY_BUCKETS)
        self.inference = hist("vllm:request_inference_time_seconds", "Time from first schedule to finish.",
                              _LATENCY_BUCKETS)
        self.prompt_tokens = hist("vllm:request_prompt_tokens", "Prompt length per request.", _TOKEN_BUCKETS)
        self.generation_tokens = hist("vllm:request_generation_tokens", "Generated tokens per request.",
                                      _TOKEN_BUCKETS)
        self.http_requests = Counter("http_requests", "HTTP requests by handler, method and status.",
                                     ["handler", "method", "status"], registry=r)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def timer(self, n: int = 1) -> "RequestTimer":
        return RequestTimer(self, n)


class RequestTimer:
    """Fed every output of one request (cumulative, delta or final-only: token counts come from
    `CompletionOutput.num_tokens`); observes ITL live and the rest at the end."""

    def __init__(self, metrics: ServerMetrics, n: int = 1) -> None:
        self.m, self.n = metrics, n  # n: choices of the request
        self.last: RequestOutput | None = None
        self.last_time: float | None = None
        self.last_tokens = 0
        self.itl_seen = False  # inter-token intervals observed live (streaming)
        self.done = False

    def on_output(self, out: RequestOutput) -> None:
        now = time.monotonic()
        self.last = out
        tokens = sum(c.num_tokens for c in out.outputs)
        new = tokens - self.last_tokens
        if new > 0:
            if self.last_time is not None:
                interval = (now - self.last_time) / new
                for _ in range(min(new, 64)):
                    self.m.itl.observe(interval)
                self.itl_seen = True
            self.last_time, self.last_tokens = now, tokens
        if out.finished:
            self.finish(out)

    def finish(self, out: RequestOutput) -> None:
        if self.done:
            return
        self.done = True
        t = out.metrics or {}
        tokens = sum(c.num_tokens for c in out.outputs)
        if not self.itl_seen and tokens > 1 and "first_token" in t and "finished" in t:
            # one final-only output (non-streaming): the mean decode interval from the engine's clock
            interval = max(0.0, t["finished"] - t["first_token"]) / (tokens - 1)
            for _ in range(min(tokens - 1, 64)):
                self.m.itl.observe(interval)
        # engine clock (engine/request_state.py): arrival -> first_scheduled (queue) -> first_token
        # (prefill) -> finished (decode); queue + prefill + decode = e2e, prefill + decode = inference
        arrival, sched, first, end = (t.get(k) for k in ("arrival", "first_scheduled", "first_token", "finished"))
        end = end if end is not None else time.monotonic()
        if arrival is not None:
            self.m.e2e.observe(max(0.0, end - arrival))
            if first is not None:
                self.m.ttft.observe(max(0.0, first - arrival))
            if sched is not None:
                self.m.queue.observe(max(0.0, sched - arrival))
        if sched is not None:
            self.m.inference.observe(max(0.0, end - sched))
            if first is not None:
                self.m.prefill.observe(max(0.0, first - sched))
        if first is not None:
            self.m.decode.observe(max(0.0, end - first))
        self.m.prompt_tokens.observe(len(out.prompt_token_ids))
        self.m.generation_tokens.observe(tokens)
        for c in out.outputs:
            self.m.request_success.labels(self.m.model_name, c.finish_reason or "abort").inc()

    def abort(self) -> None:
        """The request ended without a finished snapshot (client gone, sibling failed, shutdown):
        count its unfinished choices under finished_reason="abort", as vLLM does. Idempotent, and a
        no-op after `finish`, so callers may call it from any cleanup path."""
        if self.done:
            return
        self.done = True
        reasons = {c.index: c.finish_reason for c in self.last.outputs} if self.last is not None else {}
        for k in range(self.n):
            self.m.request_success.labels(self.m.model_name, reasons.get(k) or "abort").inc()


class HttpMetricsMiddleware:
    """Pure ASGI middleware counting `http_requests_total{handler,method,status}` (streaming-safe)."""

    def __init__(self, app, metrics: ServerMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = {"code": 500}

        async def _send(message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, _send)
        finally:
            route = scope.get("route")
            handler = getattr(route, "path", None) or "none"
            self.metrics.http_requests.labels(handler, scope.get("method", ""), str(status["code"])).inc()
