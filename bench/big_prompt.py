"""A multi-megabyte prompt against one local `v4serve serve` (demo model): does the event loop stay
responsive, and does the memory come back?

    python -m bench.big_prompt --mb 10 --repeat 3

For each of --repeat rounds, on chat and on completions: one request with a --mb megabyte prompt
(longer than the context: the server tokenizes it, then answers 400), while /health is polled every
20 ms. Reports the request's time, the slowest /health answer during it, the server's RSS before the
first round, its peak, and after each round (sampled once the request returned and the server had
a second to settle). The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import threading
import time

import httpx

from bench.soak import rss_bytes, start_server


def one(base_url: str, route: str, text: str, pid: int) -> dict:
    body = {"model": "soak", "max_tokens": 1}
    body.update({"messages": [{"role": "user", "content": text}]} if "chat" in route else {"prompt": text})
    done: dict = {}
    peak = [rss_bytes(pid)]

    def big() -> None:
        t0 = time.monotonic()
        done["status"] = httpx.post(base_url + route, json=body, timeout=600).status_code
        done["seconds"] = time.monotonic() - t0

    worker = threading.Thread(target=big)
    health = []
    with httpx.Client(base_url=base_url, timeout=60) as c:
        worker.start()
        while worker.is_alive():
            t0 = time.monotonic()
            c.get("/health")
            health.append(time.monotonic() - t0)
            peak[0] = max(peak[0], rss_bytes(pid))
            time.sleep(0.02)
    worker.join()
    time.sleep(1.0)
    return {"route": route, "status": done["status"], "seconds": round(done["seconds"], 2),
            "health_max_ms": round(1000 * max(health), 1), "health_polls": len(health),
            "rss_peak_mib": round(peak[0] / 2**20, 1), "rss_after_mib": round(rss_bytes(pid) / 2**20, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, default=10.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--max-model-len", type=int, default=512)
    ap.add_argument("--model", default=None)
    ap.add_argument("--server-log", default="/tmp/v4serve-big-prompt.log")
    args = ap.parse_args()
    proc, base_url = start_server(args, body_cap=32 << 20)
    text = "lorem ipsum dolor sit amet " * int(args.mb * 1e6 / 27)
    try:
        httpx.post(base_url + "/v1/completions", json={"model": "soak", "prompt": "warm up", "max_tokens": 2},
                   timeout=60)
        time.sleep(1.0)
        before = rss_bytes(proc.pid)
        rounds = [one(base_url, route, text, proc.pid) for _ in range(args.repeat)
                  for route in ("/v1/chat/completions", "/v1/completions")]
    finally:
        proc.terminate()
        proc.wait(60)
    after = rounds[-1]["rss_after_mib"] * 2**20
    for r in rounds:
        print(r)
    print(json.dumps({"prompt_mb": args.mb, "rss_before_mib": round(before / 2**20, 1),
                      "rss_after_mib": round(after / 2**20, 1),
                      "rss_after_vs_before_pct": round(100 * (after - before) / before, 1),
                      "health_max_ms": max(r["health_max_ms"] for r in rounds), "rounds": rounds}))


if __name__ == "__main__":
    main()
