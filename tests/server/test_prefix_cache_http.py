"""Prefix caching over HTTP (issue 12): a two-turn chat reuses the first turn's blocks and says so in
`usage.prompt_tokens_details.cached_tokens` (non-streaming and streaming, chat and completions);
`vllm:prefix_cache_queries_total` / `vllm:prefix_cache_hits_total` count prompt tokens exactly;
`POST /reset_prefix_cache` (behind --api-key) drops the unreferenced cached blocks."""

from __future__ import annotations

import re

import httpx
import openai
import pytest
from real_server import MODEL, make_engine, serve

KEY = "sekrit"
SYSTEM = "You are a careful assistant. " + " ".join(f"Rule {i}: answer briefly and stay on topic." for i in range(30))


@pytest.fixture(scope="module")
def served(demo_dir):
    engine = make_engine(demo_dir, block_size=16, prefix_snapshot_interval=64)
    base_url, stop = serve(engine, api_key=KEY)
    yield engine, base_url
    stop()


def _counter(http: httpx.Client, name: str) -> float:
    m = re.search(rf"^{re.escape(name)}\{{[^}}]*\}} (\S+)$", http.get("/metrics").text, re.M)
    assert m, name
    return float(m.group(1))


def test_two_turn_chat_reports_cached_tokens_and_metrics(served):
    engine, base_url = served
    bs = engine.engine.block_size
    client = openai.OpenAI(base_url=base_url + "/v1", api_key=KEY, max_retries=0, timeout=60)
    http = httpx.Client(base_url=base_url, timeout=30, headers={"Authorization": f"Bearer {KEY}"})
    extra = {"reasoning_effort": "none"}
    turn1 = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "What is a prefix cache?"}]
    r1 = client.chat.completions.create(model=MODEL, messages=turn1, max_tokens=8, temperature=0, extra_body=extra)
    p1 = r1.usage.prompt_tokens
    assert p1 > 4 * bs and r1.usage.prompt_tokens_details.cached_tokens == 0
    turn2 = turn1 + [{"role": "assistant", "content": r1.choices[0].message.content or "ok"},
                     {"role": "user", "content": "And why does it help?"}]
    stream = client.chat.completions.create(model=MODEL, messages=turn2, max_tokens=8, temperature=0, stream=True,
                                            stream_options={"include_usage": True}, extra_body=extra)
    usage = [c.usage for c in stream if c.usage is not None][-1]
    cached2 = usage.prompt_tokens_details.cached_tokens
    assert cached2 >= (p1 // bs) * bs and cached2 % bs == 0 and cached2 < usage.prompt_tokens
    # the same conversation again, non-streaming: the second turn's own prompt end
    r3 = client.chat.completions.create(model=MODEL, messages=turn2, max_tokens=4, temperature=0, extra_body=extra)
    assert r3.usage.prompt_tokens_details.cached_tokens == ((usage.prompt_tokens - 1) // bs) * bs
    # completions (streaming) on the same tokens' text prefix: counted too
    c = client.completions.create(model=MODEL, prompt=SYSTEM, max_tokens=2, temperature=0)
    c2 = list(client.completions.create(model=MODEL, prompt=SYSTEM, max_tokens=2, temperature=0, stream=True,
                                        stream_options={"include_usage": True}))
    cu = [x.usage for x in c2 if x.usage is not None][-1]
    assert cu.prompt_tokens_details.cached_tokens == ((c.usage.prompt_tokens - 1) // bs) * bs > 0
    prompts = [p1, usage.prompt_tokens, r3.usage.prompt_tokens, c.usage.prompt_tokens, cu.prompt_tokens]
    hits = [0, cached2, r3.usage.prompt_tokens_details.cached_tokens, c.usage.prompt_tokens_details.cached_tokens,
            cu.prompt_tokens_details.cached_tokens]
    assert _counter(http, "vllm:prefix_cache_queries_total") == sum(prompts)
    assert _counter(http, "vllm:prefix_cache_hits_total") == sum(hits)

    assert httpx.post(base_url + "/reset_prefix_cache").status_code == 401  # behind the key
    assert http.post("/reset_prefix_cache").status_code == 200
    assert engine.engine.kv.pool.num_cached == 0
    r4 = client.chat.completions.create(model=MODEL, messages=turn1, max_tokens=2, temperature=0, extra_body=extra)
    assert r4.usage.prompt_tokens_details.cached_tokens == 0


def test_bench_multi_turn_reports_hit_rate_against_a_no_cache_server(served, demo_dir, capsys):
    import json

    from bench.serve import main as bench_main

    _, base_url = served
    off = make_engine(demo_dir, block_size=16, enable_prefix_caching=False)
    off_url, stop = serve(off)
    try:
        bench_main(["--base-url", base_url, "--api-key", KEY, "--compare-url", off_url, "--num-prompts", "3",
                    "--turns", "2", "--shared-prefix-len", "120", "--input-len", "5", "10", "--output-len", "4", "4",
                    "--max-concurrency", "2"])
    finally:
        stop()
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["completed"] == 6 and report["failed"] == 0 and report["turns"] == 2, report
    assert 0 < report["total_cached_tokens"] < report["total_prompt_tokens"]
    assert report["prefix_cache_hit_rate"] > 0.3 and report["mean_ttft_later_turns_ms"] > 0
    cmp = report["compare"]
    assert cmp["completed"] == 6 and cmp["total_cached_tokens"] == 0 and cmp["prefix_cache_hit_rate"] == 0.0
    assert cmp["total_prompt_tokens"] == report["total_prompt_tokens"]  # the same workload


def test_cli_flag_and_llm_kwarg():
    from engine.config import EngineArgs
    from server.cli import build_parser, engine_args

    assert EngineArgs().enable_prefix_caching  # on by default, as vLLM
    assert engine_args(build_parser().parse_args(["serve", "/m"])).enable_prefix_caching
    assert not engine_args(build_parser().parse_args(["serve", "/m", "--no-enable-prefix-caching"])).enable_prefix_caching
    assert engine_args(build_parser().parse_args(["serve", "/m", "--enable-prefix-caching"])).enable_prefix_caching


def test_llm_kwarg_turns_it_off(demo_dir):
    from engine.llm import LLM

    llm = LLM(str(demo_dir), device="cpu", num_kv_blocks=16, enable_prefix_caching=False)
    assert llm.engine.kv.prefix is None and llm.engine.args.enable_prefix_caching is False
    assert LLM(str(demo_dir), device="cpu", num_kv_blocks=16).engine.kv.prefix is not None
