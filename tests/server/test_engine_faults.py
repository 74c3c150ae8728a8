"""Engine faults: an exception inside an engine step fails the requests in flight with an error
envelope (streams: an error event, then [DONE]), /health turns 503 and the server is told to stop
(the CLI then exits non-zero: test_shutdown.py). A fault in one request's input fails only it."""

from __future__ import annotations

import json
import threading

import httpx
from real_server import MODEL, USER, expect_error, make_engine, serve


def test_step_fault_kills_the_engine(demo_dir):
    engine = make_engine(demo_dir)
    died: list[BaseException] = []
    steps = {"n": 0}
    release = threading.Event()

    def fault() -> None:  # a few steps run, then one raises once both requests are in
        steps["n"] += 1
        if release.is_set():
            raise RuntimeError("injected fault")

    engine.fault_hook = fault
    base_url, stop = serve(engine, on_engine_failure=died.append)
    try:
        with httpx.Client(base_url=base_url, timeout=30) as http:
            body = {"model": MODEL, "messages": USER, "max_tokens": 400, "ignore_eos": True}
            plain: list[httpx.Response] = []
            t = threading.Thread(target=lambda: plain.append(http.post("/v1/chat/completions", json=body)))
            t.start()
            with http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
                assert r.status_code == 200
                lines = r.iter_lines()
                first = next(line for line in lines if line.startswith("data: "))
                assert "error" not in first
                release.set()
                rest = [line for line in lines if line.startswith("data: ")]
            t.join(30)
            assert rest[-1] == "data: [DONE]"
            err = json.loads(rest[-2][6:])
            assert set(err) == {"error"} and err["error"]["code"] == 503, err
            assert "injected fault" in err["error"]["message"]
            expect_error(plain[0], 503)
            h = http.get("/health")
            assert h.status_code == 503 and "internal error" in h.json()["error"]["message"]
            expect_error(http.post("/v1/chat/completions", json=body), 503)
        assert len(died) == 1 and "injected fault" in str(died[0])
    finally:
        stop()


def test_bad_request_input_fails_only_that_request(real, http):
    """Grammars that cannot compile (invalid, nested past the recursion limit) are 400s for their
    own request while another request streams on; the engine stays healthy."""
    body = {"model": MODEL, "messages": USER, "max_tokens": 30, "ignore_eos": True, "reasoning_effort": "none"}
    with http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
        lines = r.iter_lines()
        assert "error" not in next(line for line in lines if line.startswith("data: "))
        for regex in ("(", "(" * 5000 + "a" + ")" * 5000):
            bad = http.post("/v1/chat/completions", json={"model": MODEL, "messages": USER, "guided_regex": regex,
                                                          "reasoning_effort": "none"})
            expect_error(bad, 400, "guided_regex")
        bad = http.post("/v1/completions", json={"model": MODEL, "prompt": "x", "guided_json": {"type": "nope"}})
        expect_error(bad, 400)
        rest = [line for line in lines if line.startswith("data: ")]
    assert rest[-1] == "data: [DONE]" and not any('"error"' in line for line in rest)
    finishes = [c["finish_reason"] for line in rest[:-1] for c in json.loads(line[6:])["choices"]
                if c.get("finish_reason")]
    assert finishes == ["length"]
    assert http.get("/health").status_code == 200
