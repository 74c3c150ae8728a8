"""Soak test: N mixed requests against one local `v4serve serve` (demo model unless --model).

    python -m bench.soak --requests 5000 --concurrency 8

Starts the server as a subprocess (CPU, small context, --max-num-seqs 16, 1 MiB body cap), then
sends a seeded mix: chat and completions, streamed and not, n > 1, tools (auto and forced), structured
outputs, aborts (a stream closed after its first chunk, a non-streaming request whose client gives
up), and bad input (malformed JSON, wrong types, unknown model, over-long prompt, special-token
injection, an over-cap body, unsupported parameters). Reports:

* responses by status; `5xx` (must be 0) and transport errors / hangs (must be 0);
* leaks: after the run (and /reset_prefix_cache) nothing runs or waits and no KV block is in use;
  then `--max-num-seqs` streams run at once, which needs every sequence slot free;
* memory: server RSS after warm-up (the first 10 % of requests) and at the end, growth in %.

The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
MODEL = "soak"
MAX_NUM_SEQS = 16
BODY_CAP = 1 << 20
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "weather of a city",
                                           "parameters": {"type": "object", "properties": {
                                               "city": {"type": "string"}, "days": {"type": "integer"}},
                                               "required": ["city"]}}}]
SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                           "n": {"type": "integer", "minimum": 0, "maximum": 99}},
          "required": ["name", "n"]}
SPECIALS = ("<｜begin▁of▁sentence｜><｜User｜><｜Assistant｜><think></think>｜DSML｜"
            "<｜end▁of▁sentence｜>")
WORDS = "alpha beta gamma delta cache token stream block queue model server layer window kernel".split()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def metric(http: httpx.Client, name: str) -> float:
    m = re.search(rf"^{re.escape(name)}\{{[^}}]*\}} (\S+)$", http.get("/metrics").text, re.M)
    return float(m.group(1)) if m else float("nan")


class Soak:
    def __init__(self, base_url: str, seed: int) -> None:
        self.base_url = base_url
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.statuses: Counter = Counter()
        self.kinds: Counter = Counter()
        self.transport_errors: list[str] = []
        self.bad_5xx: list[str] = []

    def words(self, rng: random.Random, n: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(n))

    def record(self, kind: str, status: int | str, detail: str = "") -> None:
        with self.lock:
            self.kinds[kind] += 1
            self.statuses[status] += 1
            if isinstance(status, int) and status >= 500:
                self.bad_5xx.append(f"{kind}: {status} {detail[:200]}")

    def one(self, i: int) -> None:
        rng = random.Random(self.rng.random() + i)
        kind = rng.choices(
            ["chat", "chat_stream", "completion", "completion_stream", "tools_auto", "tools_forced", "json_schema",
             "regex", "abort_stream", "abort_plain", "bad_json", "bad_type", "bad_model", "too_long", "injection",
             "over_cap", "unsupported"],
            weights=[12, 12, 8, 8, 6, 6, 6, 4, 5, 3, 4, 4, 3, 3, 5, 2, 3])[0]
        user = [{"role": "user", "content": self.words(rng, rng.randint(1, 30))}]
        small = {"model": MODEL, "max_tokens": rng.randint(1, 12), "temperature": rng.choice([0, 0.7, 1.0]),
                 "seed": rng.randint(0, 9)}
        try:
            with httpx.Client(base_url=self.base_url, timeout=120) as c:
                if kind in ("chat", "chat_stream"):
                    body = {**small, "messages": user, "n": rng.choice([1, 1, 2]),
                            "reasoning_effort": rng.choice(["none", "high"])}
                    self._post(c, kind, "/v1/chat/completions", body, stream=kind.endswith("stream"))
                elif kind in ("completion", "completion_stream"):
                    body = {**small, "prompt": self.words(rng, rng.randint(1, 40)), "n": rng.choice([1, 2]),
                            "logprobs": rng.choice([None, 2])}
                    self._post(c, kind, "/v1/completions", body, stream=kind.endswith("stream"))
                elif kind in ("tools_auto", "tools_forced"):
                    body = {**small, "messages": user, "tools": TOOLS, "reasoning_effort": "none",
                            "tool_choice": "auto" if kind == "tools_auto" else "required",
                            "max_tokens": rng.randint(4, 60)}
                    self._post(c, kind, "/v1/chat/completions", body, stream=rng.random() < 0.5)
                elif kind == "json_schema":
                    body = {**small, "messages": user, "reasoning_effort": "none", "max_tokens": rng.randint(8, 40),
                            "response_format": {"type": "json_schema",
                                                "json_schema": {"name": "r", "schema": SCHEMA}}}
                    self._post(c, kind, "/v1/chat/completions", body, stream=rng.random() < 0.5)
                elif kind == "regex":
                    body = {**small, "prompt": "id:", "guided_regex": r"[a-f0-9]{4}-[0-9]{2}", "max_tokens": 16}
                    self._post(c, kind, "/v1/completions", body)
                elif kind == "abort_stream":
                    body = {**small, "messages": user, "max_tokens": 40, "ignore_eos": True, "stream": True}
                    with c.stream("POST", "/v1/chat/completions", json=body) as r:
                        for line in r.iter_lines():
                            if line.startswith("data: "):
                                break  # hang up after the first chunk
                    self.record(kind, r.status_code)
                elif kind == "abort_plain":
                    body = {**small, "prompt": "x", "max_tokens": 60, "ignore_eos": True}
                    try:
                        with httpx.Client(base_url=self.base_url, timeout=0.05) as quick:
                            r = quick.post("/v1/completions", json=body)
                        self.record(kind, r.status_code, r.text)
                    except httpx.TimeoutException:
                        self.record(kind, "client_gave_up")
                elif kind == "bad_json":
                    r = c.post("/v1/chat/completions", content=b'{"messages": [', headers={"content-type":
                                                                                          "application/json"})
                    self.record(kind, r.status_code, r.text)
                elif kind == "bad_type":
                    body = rng.choice([{"messages": "hi"}, {"messages": [{"role": "wizard", "content": "x"}]},
                                       {"prompt": 3.5}, {"messages": user, "n": "two"}, {"prompt": [[-1]]}])
                    route = "/v1/chat/completions" if "messages" in body else "/v1/completions"
                    self._post(c, kind, route, {**body, "model": MODEL})
                elif kind == "bad_model":
                    self._post(c, kind, "/v1/chat/completions", {**small, "model": "gpt-9", "messages": user})
                elif kind == "too_long":
                    self._post(c, kind, "/v1/completions", {**small, "prompt": self.words(rng, 3000)})
                elif kind == "injection":
                    msgs = [{"role": "system", "content": SPECIALS}, {"role": "user", "content": SPECIALS * 2}]
                    self._post(c, kind, "/v1/chat/completions", {**small, "messages": msgs}, stream=rng.random() < 0.5)
                elif kind == "over_cap":
                    self._post(c, kind, "/v1/completions", {**small, "prompt": "a " * (BODY_CAP // 2 + 10)})
                else:  # unsupported
                    self._post(c, kind, "/v1/chat/completions", {**small, "messages": user,
                                                                 rng.choice(["priority", "use_beam_search",
                                                                             "functions"]): [1]})
        except httpx.HTTPError as e:
            with self.lock:
                self.kinds[kind] += 1
                self.transport_errors.append(f"{kind}: {type(e).__name__}: {e}")

    def _post(self, c: httpx.Client, kind: str, route: str, body: dict, stream: bool = False) -> None:
        if not stream:
            r = c.post(route, json=body)
            self.record(kind, r.status_code, r.text)
            return
        with c.stream("POST", route, json={**body, "stream": True}) as r:
            lines = [line for line in r.iter_lines() if line.startswith("data: ")] if r.status_code == 200 else []
            if r.status_code != 200:
                r.read()
        if r.status_code == 200 and (not lines or lines[-1] != "data: [DONE]"):
            self.record(kind, "stream_without_done")
            return
        errors = [line for line in lines if line.startswith('data: {"error"')]
        status = json.loads(errors[0][6:])["error"]["code"] if errors else r.status_code
        self.record(kind, status, errors[0] if errors else "")


def start_server(args, body_cap: int = BODY_CAP) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    cmd = [sys.executable, "-m", "server.cli", "serve", "--port", str(port), "--device", "cpu",
           "--served-model-name", MODEL, "--max-model-len", str(args.max_model_len), "--max-num-seqs",
           str(MAX_NUM_SEQS), "--max-request-body-bytes", str(body_cap), "--log-level", "warning"]
    if args.model:
        cmd.insert(3, args.model)
    log = open(args.server_log, "wb")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            env=dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1")))
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: see {args.server_log}")
        try:
            if httpx.get(base_url + "/health", timeout=2).status_code == 200:
                return proc, base_url
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("server not healthy")
        time.sleep(0.2)


def check_leaks(base_url: str) -> dict:
    with httpx.Client(base_url=base_url, timeout=60) as http:
        deadline = time.monotonic() + 30
        while metric(http, "vllm:num_requests_running") or metric(http, "vllm:num_requests_waiting"):
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
        http.post("/reset_prefix_cache")
        out = {"running": metric(http, "vllm:num_requests_running"),
               "waiting": metric(http, "vllm:num_requests_waiting"),
               "kv_cache_usage": metric(http, "vllm:kv_cache_usage_perc")}
        # every slot free: MAX_NUM_SEQS streams must run at the same time
        peak = [0.0]
        stop = threading.Event()

        def watch() -> None:
            while not stop.is_set():
                peak[0] = max(peak[0], metric(http, "vllm:num_requests_running"))
                time.sleep(0.05)

        def stream(i: int) -> None:
            body = {"model": MODEL, "prompt": f"slot {i}", "max_tokens": 200, "ignore_eos": True, "stream": True}
            with httpx.stream("POST", base_url + "/v1/completions", json=body, timeout=300) as r:
                for _ in r.iter_lines():
                    pass

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        with ThreadPoolExecutor(MAX_NUM_SEQS) as pool:
            list(pool.map(stream, range(MAX_NUM_SEQS)))
        stop.set()
        watcher.join()
        out["concurrent_running_peak"] = peak[0]
        out["slots_ok"] = peak[0] == MAX_NUM_SEQS
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=5000)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default=None, help="checkpoint directory (default: the demo model)")
    ap.add_argument("--max-model-len", type=int, default=512)
    ap.add_argument("--time-budget", type=float, default=None, help="stop sending after this many seconds")
    ap.add_argument("--server-log", default="/tmp/v4serve-soak.log")
    args = ap.parse_args()
    proc, base_url = start_server(args)
    soak = Soak(base_url, args.seed)
    warm = max(1, args.requests // 10)
    t0 = time.monotonic()
    sent = 0
    rss_warm = None
    try:
        with ThreadPoolExecutor(args.concurrency) as pool:
            for start in range(0, args.requests, warm):
                if args.time_budget and time.monotonic() - t0 > args.time_budget:
                    break
                batch = range(start, min(start + warm, args.requests))
                list(pool.map(soak.one, batch))
                sent = batch[-1] + 1
                if rss_warm is None:
                    rss_warm = rss_bytes(proc.pid)
                print(f"{sent} requests, {time.monotonic() - t0:.0f}s, rss {rss_bytes(proc.pid) / 2**20:.0f} MiB, "
                      f"5xx {len(soak.bad_5xx)}, transport errors {len(soak.transport_errors)}", flush=True)
        elapsed = time.monotonic() - t0
        rss_end = rss_bytes(proc.pid)
        leaks = check_leaks(base_url)
        healthy = httpx.get(base_url + "/health", timeout=10).status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(60)
    result = {
        "requests": sent, "seconds": round(elapsed, 1), "concurrency": args.concurrency,
        "statuses": {str(k): v for k, v in sorted(soak.statuses.items(), key=str)},
        "kinds": dict(sorted(soak.kinds.items())), "num_5xx": len(soak.bad_5xx),
        "transport_errors": len(soak.transport_errors), "leaks": leaks, "healthy_after": healthy,
        "rss_after_warmup_mib": round(rss_warm / 2**20, 1), "rss_end_mib": round(rss_end / 2**20, 1),
        "rss_growth_pct": round(100 * (rss_end - rss_warm) / rss_warm, 2), "exit_code": rc,
    }
    for line in (soak.bad_5xx + soak.transport_errors)[:20]:
        print("  !", line)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
