"""Online load generator for any OpenAI-compatible server (streaming chat or completions).

    python -m bench.serve --base-url http://127.0.0.1:8000 --num-prompts 200 --request-rate 8 \\
        --input-len 512 1024 --output-len 128 256 --max-concurrency 64

Prompts are random words from a fixed list (seeded, bench/workload.py: `python -m bench.throughput
--serve-workload` runs the same workload on the offline engine); each request asks for exactly its sampled
output length (`min_tokens` = `max_tokens`, `ignore_eos`) where the server supports the vLLM extras.
Arrivals are Poisson at --request-rate (inf = all at once), capped by --max-concurrency. Reports
TTFT, TPOT, ITL (mean/p50/p90/p99, ms), request and token throughput; the last line is JSON.

Prefix caching (shared-prefix / multi-turn mode):

    python -m bench.serve --shared-prefix-len 4000 --turns 4 --num-prompts 32 --input-len 64 128 \
        --output-len 64 64 --compare-url http://127.0.0.1:8001      # 8001: --no-enable-prefix-caching

--shared-prefix-len W starts every conversation with the same W-word system prompt (a completion
prompt: the same text prefix); --turns T makes each of --num-prompts conversations T requests in a
row, each resending the history (the earlier user turns and the server's replies) plus a new user
turn. The report adds the prefix-cache hit rate (usage.prompt_tokens_details.cached_tokens over the
prompt tokens) and TTFT of first vs later turns; --compare-url runs the same workload on a second
server (e.g. one started with --no-enable-prefix-caching) and reports it under "compare".
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
from dataclasses import dataclass, field

import httpx

from bench.engine_counters import counters_delta, engine_counters
from bench.workload import WARMUP_SEED_OFFSET, conversations, make_prompt


@dataclass
class Result:
    ok: bool = False
    error: str = ""
    ttft: float = 0.0
    latency: float = 0.0
    prompt_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0  # usage.prompt_tokens_details.cached_tokens (prefix-cache hit)
    turn: int = 0  # 0 = first request of its conversation
    text: str = ""  # the reply (the next turn's history)
    itl: list[float] = field(default_factory=list)


def _chunk_text(obj: dict, chat: bool) -> str:
    choices = obj.get("choices") or []
    if not choices:
        return ""
    if chat:
        delta = choices[0].get("delta") or {}
        return (delta.get("content") or "") + (delta.get("reasoning_content") or delta.get("reasoning") or "")
    return choices[0].get("text") or ""


async def one_request(client: httpx.AsyncClient, args, prompt: str | list[dict], out_len: int) -> Result:
    """`prompt`: the completion text, or the chat messages (a str is one user message)."""
    chat = args.endpoint == "chat"
    body: dict = {"model": args.model, "stream": True, "max_tokens": out_len, "temperature": 0.0,
                  "stream_options": {"include_usage": True}}
    if not args.no_vllm_extras:
        body.update(ignore_eos=True, min_tokens=out_len)
    if chat:
        body["messages"] = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        if args.reasoning_effort:
            body["reasoning_effort"] = args.reasoning_effort
    else:
        body["prompt"] = prompt
    url = "/v1/chat/completions" if chat else "/v1/completions"
    res = Result()
    start = last = time.perf_counter()
    try:
        async with client.stream("POST", url, json=body) as resp:
            if resp.status_code != 200:
                res.error = f"HTTP {resp.status_code}: {(await resp.aread())[:200]!r}"
                return res
            async for line in resp.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                obj = json.loads(line[6:])
                if "error" in obj:
                    res.error = str(obj["error"].get("message"))
                    return res
                if obj.get("usage") and not obj.get("choices"):
                    res.prompt_tokens = obj["usage"].get("prompt_tokens", 0)
                    res.output_tokens = obj["usage"].get("completion_tokens", 0)
                    res.cached_tokens = (obj["usage"].get("prompt_tokens_details") or {}).get("cached_tokens") or 0
                piece = _chunk_text(obj, chat)
                if piece:
                    res.text += piece
                    now = time.perf_counter()
                    if res.ttft == 0.0:
                        res.ttft = now - start
                    else:
                        res.itl.append(now - last)
                    last = now
        res.latency = time.perf_counter() - start
        res.ok = True
    except (httpx.HTTPError, json.JSONDecodeError) as e:
        res.error = f"{type(e).__name__}: {e}"
    return res


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return 0.0
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


def _summary(name: str, xs: list[float]) -> dict:
    ms = [x * 1000 for x in xs]
    return {f"mean_{name}_ms": statistics.fmean(ms) if ms else 0.0,
            **{f"p{q}_{name}_ms": _pct(ms, q) for q in (50, 90, 99)}}


async def _converse(client, args, sem, shared: str, turns: list[str], out_len: int) -> list[Result]:
    """One conversation: its turns in a row, each resending the history plus a new user turn."""
    results: list[Result] = []
    messages: list[dict] = [{"role": "system", "content": shared}] if shared else []
    text = shared
    for k, user in enumerate(turns):
        if args.endpoint == "chat":
            messages.append({"role": "user", "content": user})
            prompt: str | list[dict] = list(messages)
        else:
            text = f"{text} {user}".strip()
            prompt = text
        async with sem:
            res = await one_request(client, args, prompt, out_len)
        res.turn = k
        results.append(res)
        if not res.ok:
            break
        if args.endpoint == "chat":
            messages.append({"role": "assistant", "content": res.text})
        else:
            text += res.text
    return results


async def _scrape(client: httpx.AsyncClient) -> dict | None:
    try:
        r = await client.get("/metrics")
    except httpx.HTTPError:
        return None
    return engine_counters(r.text) if r.status_code == 200 else None


async def run_on(args, base_url: str) -> dict:
    rng = random.Random(args.seed + 1)
    shared = make_prompt(random.Random(args.seed + 2), args.shared_prefix_len) if args.shared_prefix_len else ""
    work = conversations(args.seed, args.num_prompts, args.input_len, args.output_len, args.turns)  # seeded
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    limits = httpx.Limits(max_connections=args.max_concurrency or 10000, max_keepalive_connections=None)
    sem = asyncio.Semaphore(args.max_concurrency or 10**9)
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=args.timeout,
                                 limits=limits) as client:
        if not args.model:
            args.model = (await client.get("/v1/models")).json()["data"][0]["id"]
        before = await _scrape(client)  # the engine's step counters around the timed run (v4serve servers)
        tasks = []
        t0 = time.perf_counter()
        for turns, out_len in work:
            tasks.append(asyncio.create_task(_converse(client, args, sem, shared, turns, out_len)))
            if args.request_rate != float("inf"):
                await asyncio.sleep(rng.expovariate(args.request_rate))
        results = [r for conv in await asyncio.gather(*tasks) for r in conv]
        duration = time.perf_counter() - t0
        engine = counters_delta(await _scrape(client), before)
    ok = [r for r in results if r.ok]
    tpot = [(r.latency - r.ttft) / (r.output_tokens - 1) for r in ok if r.output_tokens > 1]
    out_tokens = sum(r.output_tokens for r in ok)
    prompt_tokens = sum(r.prompt_tokens for r in ok)
    cached = sum(r.cached_tokens for r in ok)
    report = {"endpoint": args.endpoint, "model": args.model, "base_url": base_url, "num_prompts": args.num_prompts,
              "turns": args.turns, "shared_prefix_len": args.shared_prefix_len,
              "completed": len(ok), "failed": args.num_prompts * args.turns - len(ok), "duration_s": duration,
              "request_rate": args.request_rate, "max_concurrency": args.max_concurrency,
              "request_throughput": len(ok) / duration, "output_throughput": out_tokens / duration,
              "total_token_throughput": (out_tokens + prompt_tokens) / duration,
              "total_output_tokens": out_tokens, "total_prompt_tokens": prompt_tokens,
              "total_cached_tokens": cached, "prefix_cache_hit_rate": cached / prompt_tokens if prompt_tokens else 0.0,
              **_summary("ttft", [r.ttft for r in ok]), **_summary("tpot", tpot),
              **_summary("itl", [x for r in ok for x in r.itl]),
              **_summary("ttft_first_turn", [r.ttft for r in ok if r.turn == 0]),
              **_summary("ttft_later_turns", [r.ttft for r in ok if r.turn > 0]),
              "errors": sorted({r.error for r in results if not r.ok})[:5],
              # steps by kind and their wall seconds, kernel compiles, during the run (bench.throughput: the same
              # fields offline, to compare kind by kind); None when the server does not export them
              "engine": engine}
    return report


async def _warm(args, base_url: str) -> dict:
    """`--warmup-prompts` requests of the workload (another seed, same lengths and concurrency) before the
    timed run: the server compiles its kernels for the mixed prefill/decode steps on first use, which a cold
    timed run would count (measured: an offline run 2.6x slower in a fresh process). -> {completed, failed}."""
    w = argparse.Namespace(**{**vars(args), "num_prompts": args.warmup_prompts,
                              "seed": args.seed + WARMUP_SEED_OFFSET})
    rep = await run_on(w, base_url)
    return {"prompts": args.warmup_prompts, "completed": rep["completed"], "failed": rep["failed"]}


async def run(args) -> dict:
    warm = await _warm(args, args.base_url) if args.warmup_prompts else None
    report = await run_on(args, args.base_url)
    if warm:
        report["warmup"] = warm
    if args.compare_url:
        if args.warmup_prompts:
            await _warm(args, args.compare_url)
        other = await run_on(args, args.compare_url)
        report["compare"] = other
        if other["mean_ttft_ms"]:
            report["ttft_mean_ratio_vs_compare"] = report["mean_ttft_ms"] / other["mean_ttft_ms"]
    return report


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base-url", default="http://127.0.0.1:8000")
    p.add_argument("--endpoint", choices=("chat", "completions"), default="chat")
    p.add_argument("--model", default=None, help="model name (default: first of /v1/models)")
    p.add_argument("--api-key", default=None)
    p.add_argument("--num-prompts", type=int, default=100)
    p.add_argument("--input-len", type=int, nargs=2, default=(128, 256), metavar=("MIN", "MAX"),
                   help="prompt length range in words (about one token each)")
    p.add_argument("--output-len", type=int, nargs=2, default=(64, 128), metavar=("MIN", "MAX"))
    p.add_argument("--request-rate", type=float, default=float("inf"), help="Poisson arrivals per second")
    p.add_argument("--max-concurrency", type=int, default=None)
    p.add_argument("--reasoning-effort", default="none", help="chat only; 'none' benchmarks Non-Think")
    p.add_argument("--no-vllm-extras", action="store_true", help="do not send ignore_eos / min_tokens")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--warmup-prompts", type=int, default=0,
                   help="untimed requests of the same workload (other prompts) before the measured run")
    p.add_argument("--timeout", type=float, default=600.0)
    p.add_argument("--shared-prefix-len", type=int, default=0,
                   help="words of a system prompt (completions: text prefix) every conversation shares")
    p.add_argument("--turns", type=int, default=1, help="requests per conversation, each resending the history")
    p.add_argument("--compare-url", default=None,
                   help="run the same workload on this server too (e.g. --no-enable-prefix-caching)")
    args = p.parse_args(argv)
    if args.turns < 1 or args.shared_prefix_len < 0 or args.warmup_prompts < 0:
        p.error("--turns must be >= 1, --shared-prefix-len and --warmup-prompts >= 0")
    report = asyncio.run(run(args))
    for key in ("completed", "failed", "duration_s", "request_throughput", "output_throughput",
                "mean_ttft_ms", "p99_ttft_ms", "mean_tpot_ms", "p99_tpot_ms", "p50_itl_ms", "p99_itl_ms",
                "prefix_cache_hit_rate", "mean_ttft_first_turn_ms", "mean_ttft_later_turns_ms"):
        v = report[key]
        print(f"{key:>22}: {v:.2f}" if isinstance(v, float) else f"{key:>22}: {v}")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
