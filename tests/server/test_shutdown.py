"""Graceful shutdown of the real `v4serve serve` process (demo model on the CPU).

SIGTERM while a streaming request is in flight: the server stops accepting connections, the open
stream runs to its end (uvicorn's graceful period) or is aborted, and the process exits 0.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(tmp_path_factory, *extra: str, env_extra: dict | None = None):
    port = _free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT),
               V4SERVE_CACHE_DIR=str(tmp_path_factory.getbasetemp() / "v4serve-cache"), **(env_extra or {}))
    log = tmp_path_factory.mktemp("shutdown") / "server.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen([sys.executable, "-m", "server.cli", "serve", "--port", str(port), "--device", "cpu",
                                 "--max-model-len", "512", "--served-model-name", "demo", "--log-level", "info",
                                 *extra], cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        assert proc.poll() is None, log.read_text()
        try:
            if httpx.get(base_url + "/health", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "server did not become healthy:\n" + log.read_text()
        time.sleep(0.1)
    return proc, base_url, log


@pytest.fixture
def start_server_proc(tmp_path_factory):
    procs = []

    def start(*extra: str, env_extra: dict | None = None):
        procs.append(None)
        procs[-1] = proc = _start(tmp_path_factory, *extra, env_extra=env_extra)
        return proc

    yield start
    for p in procs:
        if p is not None and p[0].poll() is None:
            p[0].kill()
            p[0].wait(10)


@pytest.fixture
def server_proc(start_server_proc):
    return start_server_proc()


def test_sigterm_finishes_inflight_and_exits_0(server_proc):
    proc, base_url, log = server_proc
    r = httpx.post(base_url + "/v1/chat/completions", timeout=30,
                   json={"model": "demo", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 3
    events: list[dict] = []
    first = threading.Event()
    errors: list[BaseException] = []

    def stream() -> None:
        try:
            with httpx.stream("POST", base_url + "/v1/completions", timeout=60,
                              json={"model": "demo", "prompt": "hello", "max_tokens": 40, "ignore_eos": True,
                                    "stream": True, "stream_options": {"include_usage": True}}) as resp:
                for line in resp.iter_lines():
                    if line.startswith("data: "):
                        events.append({"done": True} if line == "data: [DONE]" else json.loads(line[6:]))
                        first.set()
        except BaseException as e:  # noqa: BLE001 - reported by the test
            errors.append(e)
        finally:
            first.set()

    t = threading.Thread(target=stream, daemon=True)
    t.start()
    assert first.wait(30) and not errors
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0, log.read_text()
    t.join(10)
    assert not t.is_alive()
    # the in-flight stream either ran to completion or ended cleanly (abort): never a hang
    text = log.read_text()
    if not errors and events and events[-1] == {"done": True}:
        finishes = [c["finish_reason"] for e in events for c in e.get("choices", []) if c.get("finish_reason")]
        assert finishes in (["length"], ["abort"]), events[-3:]
        if finishes == ["length"]:
            assert events[-2]["usage"]["completion_tokens"] == 40
    assert "Traceback" not in text, text
    # nothing listens any more
    with pytest.raises(httpx.TransportError):
        httpx.get(base_url + "/health", timeout=2)


def _stream_events(base_url: str, body: dict, events: list, first: threading.Event, errors: list) -> None:
    try:
        with httpx.stream("POST", base_url + "/v1/chat/completions", timeout=60, json={**body, "stream": True}) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    events.append({"done": True} if line == "data: [DONE]" else json.loads(line[6:]))
                    first.set()
    except BaseException as e:  # noqa: BLE001 - reported by the test
        errors.append(e)
    finally:
        first.set()


def test_sigterm_aborts_after_shutdown_timeout(start_server_proc):
    """Requests still running when --shutdown-timeout expires are aborted: the stream's last chunk
    says finish_reason "abort" then [DONE], the non-streaming one gets a 503 envelope, a request
    arriving during the drain gets 503, and the process exits 0 within timeout + 2 s."""
    timeout = 1.5
    proc, base_url, log = start_server_proc("--shutdown-timeout", str(timeout))
    long = {"model": "demo", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 480,
            "ignore_eos": True}
    events: list[dict] = []
    errors: list[BaseException] = []
    first = threading.Event()
    streamer = threading.Thread(target=_stream_events, args=(base_url, long, events, first, errors), daemon=True)
    streamer.start()
    plain: list[httpx.Response] = []
    poster = threading.Thread(target=lambda: plain.append(httpx.post(base_url + "/v1/chat/completions", json=long,
                                                                     timeout=60)), daemon=True)
    poster.start()
    assert first.wait(30) and not errors
    with httpx.Client(base_url=base_url, timeout=10) as keep_alive:
        assert keep_alive.get("/health").status_code == 200
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        late = keep_alive.post("/v1/chat/completions", json={**long, "max_tokens": 2})
        assert late.status_code == 503 and late.json()["error"]["code"] == 503, late.text
        assert keep_alive.get("/health").status_code == 503
    assert proc.wait(timeout + 10) == 0, log.read_text()
    assert time.monotonic() - sent < timeout + 2, log.read_text()
    streamer.join(10)
    poster.join(10)
    assert not errors, errors
    assert events[-1] == {"done": True}
    finishes = [c["finish_reason"] for e in events for c in e.get("choices", []) if c.get("finish_reason")]
    assert finishes == ["abort"], events[-3:]
    assert plain and plain[0].status_code == 503, plain
    assert set(plain[0].json()) == {"error"}
    text = log.read_text()
    assert "Traceback" not in text and "CancelledError" not in text, text


def test_engine_fault_exits_nonzero(start_server_proc):
    """An exception inside an engine step (injected): the stream in flight ends with an error event
    then [DONE], and the process exits non-zero so an orchestrator restarts it."""
    proc, base_url, log = start_server_proc(env_extra={"V4SERVE_FAULT_AFTER_STEPS": "4"})
    events: list[dict] = []
    errors: list[BaseException] = []
    first = threading.Event()
    body = {"model": "demo", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50, "ignore_eos": True}
    _stream_events(base_url, body, events, first, errors)
    assert not errors, errors
    assert events[-1] == {"done": True} and "error" in events[-2], events[-3:]
    assert events[-2]["error"]["code"] >= 500
    assert proc.wait(30) not in (0, None), log.read_text()
    assert "the engine died" in log.read_text()
