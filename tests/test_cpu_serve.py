"""`v4serve serve` on a CPU machine without Triton (issue 14): a subprocess in which `import triton`
fails runs the real CLI on the demo model, answers a chat request (thinking on by default), logs a
failed request with its request id, and stops on SIGINT; Triton was never imported. Its start-up
log says how to turn thinking off and ends with the ready line (URL, model, max_model_len, KV
capacity)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r'''
import importlib.abc, json, logging, os, signal, sys, threading, time, urllib.error, urllib.request


class NoTriton(importlib.abc.MetaPathFinder):
    """A CPU install: `import triton` fails like a missing package."""

    def find_spec(self, name, path=None, target=None):
        if name == "triton" or name.startswith("triton."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")
        return None


sys.meta_path.insert(0, NoTriton())
assert "triton" not in sys.modules
import engine.async_engine, engine.llm, engine.guided, kernels, kvcache.manager, models.loading  # noqa: E401,F401
import server.app, server.cli  # noqa: E401,F401

port = int(sys.argv[1])
base = f"http://127.0.0.1:{port}"
ready = threading.Event()


class Ready(logging.Handler):
    def emit(self, record):
        if record.getMessage().startswith("ready: "):
            ready.set()


logging.getLogger("v4serve").addHandler(Ready())
report = {}


def post(path, body, headers=None):
    req = urllib.request.Request(base + path, data=body, method="POST",
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def drive():
    try:
        assert ready.wait(120), "no ready line"
        chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
        report["chat"] = post("/v1/chat/completions", json.dumps(chat).encode())
        report["bad"] = post("/v1/chat/completions", b"[1, 2]", {"X-Request-Id": "rid-issue14"})
        report["triton_modules"] = sorted(m for m in sys.modules if m == "triton" or m.startswith("triton.")
                                          or m.startswith("kernels.triton"))
    except BaseException as e:  # reported, then the server is stopped either way
        report["error"] = repr(e)
    finally:
        os.kill(os.getpid(), signal.SIGINT)


threading.Thread(target=drive, daemon=True).start()
rc = server.cli.main(["serve", "--port", str(port), "--device", "cpu", "--max-model-len", "512",
                      "--kv-cache-memory", str(16 << 20), "--max-num-seqs", "4"])
report["rc"] = rc
report["triton_at_exit"] = "triton" in sys.modules
print("REPORT " + json.dumps(report))
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_on_cpu_without_triton(tmp_path):
    port = _free_port()
    env = dict(os.environ, V4SERVE_CACHE_DIR=str(tmp_path / "cache"), OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    res = subprocess.run([sys.executable, "-c", CHILD, str(port)], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("REPORT ")]
    assert res.returncode == 0 and lines, res.stdout[-3000:] + res.stderr[-5000:]
    report = json.loads(lines[-1][len("REPORT "):])
    assert "error" not in report, report
    assert report["rc"] == 0 and report["triton_modules"] == [] and not report["triton_at_exit"], report

    status, body = report["chat"]  # a real demo-model step on the CPU, thinking on by default
    assert status == 200, body
    assert body["usage"]["completion_tokens"] == 4
    assert body["usage"]["completion_tokens_details"]["reasoning_tokens"] == 4, body
    assert body["choices"][0]["message"]["content"] == ""

    status, body = report["bad"]
    assert status == 400 and body["error"]["message"] == "The request body must be a JSON object, got an array"

    log = res.stderr.splitlines()
    ready_at = next(i for i, ln in enumerate(log) if "v4serve: ready: " in ln)
    ready = log[ready_at]
    assert f"http://127.0.0.1:{port}/v1" in ready and "'demo-model-v1'" in ready
    assert re.search(r"max_model_len 512, KV cache [\d,]+ tokens = [\d.]+ full-length sequences", ready), ready
    m = re.search(r"KV cache ([\d,]+) tokens = ([\d.]+) full-length", ready)
    tokens, seqs = int(m.group(1).replace(",", "")), float(m.group(2))
    assert tokens > 0 and abs(seqs - tokens / 512) < 0.01  # 512 is a whole number of 64-token blocks
    startup = log[:ready_at]
    assert any("Uvicorn running on" in ln for ln in startup)  # the ready line comes after uvicorn's
    thinking = [ln for ln in startup if "thinking is ON by default" in ln]
    assert thinking and '"reasoning_effort": "none"' in thinking[0] and "--default-reasoning-effort none" in thinking[0]
    after = log[ready_at + 1:]
    errors = [ln for ln in after if "rid-issue14" in ln]
    assert errors and "POST /v1/chat/completions -> 400" in errors[0] and "got an array" in errors[0], after
