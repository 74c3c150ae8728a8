"""Helpers of the real-engine HTTP tests (`test_api_real_*`): the tiny demo model (random weights)
behind a real uvicorn server. The shared server is the session fixture `real` in conftest.py;
`make_engine` / `serve` build extra app instances.

With random weights the generated text is gibberish, so the tests assert structure: token counts,
where `</think>` falls, error envelopes, and what /metrics says about the cache.
"""

from __future__ import annotations

import re
import time

import httpx
from server_fixture import start_server

from engine.async_engine import AsyncLLM
from engine.config import EngineArgs
from server.app import create_app
from chat.encoder import SpecialTokens

MODEL = "v4-demo"
USER = [{"role": "user", "content": "hi"}]
MAX_MODEL_LEN = 1024
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}}}}]
TOOL_TEXT = ('\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name="get_weather">\n'
             '<｜DSML｜parameter name="city" string="true">Paris</｜DSML｜parameter>\n'
             '<｜DSML｜parameter name="days" string="false">3</｜DSML｜parameter>\n'
             '</｜DSML｜invoke>\n</｜DSML｜tool_calls>')


def make_engine(demo_dir, **kw) -> AsyncLLM:
    args = dict(model=str(demo_dir), device="cpu", max_model_len=MAX_MODEL_LEN, kv_cache_memory=48 << 20,
                max_num_seqs=64)
    args.update(kw)
    return AsyncLLM.from_engine_args(EngineArgs(**args))


def serve(engine: AsyncLLM, **kw):
    base_url, stop = start_server(create_app(engine, served_model_name=MODEL, **kw))
    deadline = time.monotonic() + 30
    with httpx.Client(base_url=base_url, timeout=5) as c:
        while c.get("/health").status_code != 200:
            assert time.monotonic() < deadline, "engine never became ready"
            time.sleep(0.02)
    return base_url, stop


class Served:
    def __init__(self, engine: AsyncLLM, base_url: str) -> None:
        self.engine, self.base_url = engine, base_url
        self.tok = engine.tokenizer
        self.special = SpecialTokens.from_tokenizer(engine.tokenizer)


# ---- helpers -------------------------------------------------------------------------------------
def get_metrics(http: httpx.Client) -> dict[str, float]:
    text = http.get("/metrics").text
    out = {}
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc"):
        m = re.search(rf"^{re.escape(name)}\{{[^}}]*\}} (\S+)$", text, re.M)
        assert m, name
        out[name] = float(m.group(1))
    return out


def wait_idle(http: httpx.Client, timeout: float = 5.0) -> None:
    """Poll /metrics until nothing runs or waits and the KV cache is empty."""
    deadline = time.monotonic() + timeout
    while True:
        m = get_metrics(http)
        if m["vllm:num_requests_running"] == 0 and m["vllm:num_requests_waiting"] == 0 \
                and m["vllm:kv_cache_usage_perc"] == 0:
            return
        assert time.monotonic() < deadline, f"engine not idle after {timeout}s: {m}"
        time.sleep(0.05)


def wait_metric(http: httpx.Client, cond, timeout: float = 10.0) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    while True:
        m = get_metrics(http)
        if cond(m):
            return m
        assert time.monotonic() < deadline, f"metric condition not reached: {m}"
        time.sleep(0.02)


def expect_error(r: httpx.Response, status: int, param: str | None = None) -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert err["code"] == status and isinstance(err["type"], str) and err["type"] and err["message"]
    if param is not None:
        assert err["param"] == param, err
    return err


def raw_text(client, **kw) -> str:
    """The same request in raw mode (no parsing, special tokens kept): what the model generated."""
    extra = dict(kw.pop("extra_body", {}) or {})
    extra["skip_special_tokens"] = False
    r = client.chat.completions.create(model=MODEL, extra_body=extra, **kw)
    return r.choices[0].message.content


def logprob_tokens(choice) -> list[str]:
    return [t.token for t in choice.logprobs.content]


def expected_reasoning_tokens(tokens: list[str], thinking: bool) -> int:
    if not thinking:
        return 0
    return tokens.index("</think>") if "</think>" in tokens else len(tokens)
