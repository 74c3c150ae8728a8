"""The CLI builds the engine behind the HTTP server: /health answers 503 (OpenAI envelope) while the
weights load and 200 once ready; a failed load is reported and stops the server."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

import engine.async_engine as async_engine
from engine.async_engine import AsyncLLM
from engine.config import EngineArgs
from server.app import create_app
from tests.server.server_fixture import start_server


def _wait_status(url: str, want: int, timeout: float = 30.0) -> httpx.Response:
    end = time.monotonic() + timeout
    while True:
        r = httpx.get(url, timeout=5)
        if r.status_code == want or time.monotonic() > end:
            return r
        time.sleep(0.05)


def test_health_is_503_while_loading_then_200(tiny_ckpt, monkeypatch):
    gate = threading.Event()
    real = async_engine.LLMEngine

    def slow_engine(args):
        assert gate.wait(30), "test never released the load"
        return real(args)

    monkeypatch.setattr(async_engine, "LLMEngine", slow_engine)
    eng = AsyncLLM.from_engine_args(EngineArgs(model=str(tiny_ckpt), device="cpu", dtype="float32",
                                               max_num_seqs=4, kv_cache_memory=16 << 20), defer_load=True)
    assert eng.engine is None and eng.tokenizer is not None  # tokenizer/config ready, weights not
    url, stop = start_server(create_app(eng, served_model_name="tiny"))
    try:
        r = httpx.get(f"{url}/health", timeout=5)
        assert r.status_code == 503 and set(r.json()["error"]) == {"message", "type", "param", "code"}
        r = httpx.post(f"{url}/v1/completions", json={"prompt": "hi", "max_tokens": 2}, timeout=5)
        assert r.status_code == 503
        gate.set()
        assert _wait_status(f"{url}/health", 200).status_code == 200
        r = httpx.post(f"{url}/v1/completions", json={"prompt": "hi", "max_tokens": 2}, timeout=30)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2
    finally:
        gate.set()
        stop()


def test_failed_load_is_reported(tiny_ckpt, monkeypatch):
    def broken_engine(args):
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(async_engine, "LLMEngine", broken_engine)
    eng = AsyncLLM.from_engine_args(EngineArgs(model=str(tiny_ckpt), device="cpu", dtype="float32"), defer_load=True)
    failures: list[BaseException] = []
    url, stop = start_server(create_app(eng, served_model_name="tiny", on_engine_failure=failures.append))
    try:
        r = _wait_status(f"{url}/health", 503)
        end = time.monotonic() + 10
        while not failures and time.monotonic() < end:
            time.sleep(0.05)
        assert failures and "out of memory" in str(failures[0])
        r = httpx.get(f"{url}/health", timeout=5)
        assert r.status_code == 503 and "failed to start" in r.json()["error"]["message"]
    finally:
        stop()


def test_deferred_start_rejects_a_bad_checkpoint_early(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(ValueError):
        AsyncLLM.from_engine_args(EngineArgs(model=str(tmp_path), device="cpu"), defer_load=True)
