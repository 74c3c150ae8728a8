"""engine/kernel_compiles.py: compile events between Triton's two JIT hooks are counted and timed, hooks installed
before the watch still run, and the watch puts them back on exit."""

from __future__ import annotations

import os
from types import SimpleNamespace

import torch

if not torch.cuda.is_available():  # the suite's convention: Triton is first imported with the interpreter on
    os.environ["TRITON_INTERPRET"] = "1"

from triton import knobs  # noqa: E402

from engine.kernel_compiles import JitWatch  # noqa: E402


def _fire(name, key, sig):
    kw = dict(key=key, repr=f"{name}[num_warps=4](x_ptr: *bf16, n: i64)", fn=SimpleNamespace(name=name),
              compile={"signature": sig, "key": key}, is_manual_warmup=False, already_compiled=False)
    if knobs.runtime.jit_cache_hook(**kw):
        return "skipped"
    knobs.runtime.jit_post_compile_hook(**kw)
    return "compiled"


def test_counts_compiles_and_restores_the_hooks(monkeypatch):
    seen = []
    monkeypatch.setattr(knobs.runtime, "jit_cache_hook", lambda **kw: seen.append(("pre", kw["fn"].name)) or False)
    monkeypatch.setattr(knobs.runtime, "jit_post_compile_hook", lambda **kw: seen.append(("post", kw["fn"].name)))
    before = (knobs.runtime.jit_cache_hook, knobs.runtime.jit_post_compile_hook)
    with JitWatch() as jw:
        assert _fire("_score_kernel", ("k", 1), {"q_ptr": "*bf16", "n": "i64", "m": "i32", "s": "i64"}) == "compiled"
        assert _fire("_filter_kernel", ("k", 2), {"x_ptr": "*fp32", "n": "i32"}) == "compiled"
    assert (knobs.runtime.jit_cache_hook, knobs.runtime.jit_post_compile_hook) == before
    assert seen == [("pre", "_score_kernel"), ("post", "_score_kernel"), ("pre", "_filter_kernel"),
                    ("post", "_filter_kernel")]
    s = jw.summary()
    assert s["count"] == 2 and s["s"] >= 0
    assert {k[0] for k in s["kernels"]} == {"_score_kernel", "_filter_kernel"}
    got = dict((k[0], k[2]) for k in s["kernels"])
    assert got["_score_kernel"].startswith("i64: n,s; key ") and got["_filter_kernel"].startswith("no i64 arguments")


def test_an_earlier_hook_can_still_skip_the_compile(monkeypatch):
    monkeypatch.setattr(knobs.runtime, "jit_cache_hook", lambda **kw: True)
    monkeypatch.setattr(knobs.runtime, "jit_post_compile_hook", None)
    with JitWatch() as jw:
        assert _fire("_k", ("k",), {}) == "skipped"
    assert jw.summary()["count"] == 0


def test_engine_form_counts_without_a_list_and_calls_back(monkeypatch):
    """The serving engine's form: no event list (a long-running process), totals and one callback per compile;
    a hook installed after it and still in place is not removed when the watch exits."""
    monkeypatch.setattr(knobs.runtime, "jit_cache_hook", None)
    monkeypatch.setattr(knobs.runtime, "jit_post_compile_hook", None)
    seen = []
    jw = JitWatch(on_event=lambda name, s, sig: seen.append((name, sig.split(";")[0])), keep_events=False)
    with jw:
        _fire("_a", ("a",), {"n": "i64"})
        _fire("_b", ("b",), {"n": "i32"})
        later = (lambda **kw: False, lambda **kw: None)
        knobs.runtime.jit_cache_hook, knobs.runtime.jit_post_compile_hook = later
    assert jw.events == [] and jw.count == 2 and jw.seconds >= 0
    assert seen == [("_a", "i64: n"), ("_b", "no i64 arguments")]
    assert jw.summary()["count"] == 2
    assert (knobs.runtime.jit_cache_hook, knobs.runtime.jit_post_compile_hook) == later


def test_serving_watch_is_one_per_process(monkeypatch, caplog):
    """Engines share one installed watch: one hook, one log line per compile (WARNING from 0.5 s)."""
    import engine.kernel_compiles as kc
    monkeypatch.setattr(kc, "_PROCESS_WATCH", [])
    monkeypatch.setattr(knobs.runtime, "jit_cache_hook", None)
    monkeypatch.setattr(knobs.runtime, "jit_post_compile_hook", None)
    a = kc.serving_watch()
    hooks = (knobs.runtime.jit_cache_hook, knobs.runtime.jit_post_compile_hook)
    assert kc.serving_watch() is a and (knobs.runtime.jit_cache_hook, knobs.runtime.jit_post_compile_hook) == hooks
    with caplog.at_level("INFO", logger="v4serve.engine"):
        _fire("_score_kernel", ("k", 9), {"n": "i32"})
    assert a.count == 1 and a.events == []
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == ["kernel _score_kernel compiled while serving"]
    a.__exit__(None, None, None)  # the test's own clean-up: hooks back as they were


def test_a_second_variant_names_the_arguments_that_differ(monkeypatch):
    """A kernel's second compile in the process is reported by what changed against its closest earlier key,
    argument by name (the first compile shows its key)."""
    monkeypatch.setattr(knobs.runtime, "jit_cache_hook", None)
    monkeypatch.setattr(knobs.runtime, "jit_post_compile_hook", None)
    params = [SimpleNamespace(name=n) for n in ("x_ptr", "tok_ptr", "N", "BLOCK")]
    fn = SimpleNamespace(name="_finish_kernel", jit_function=SimpleNamespace(params=params))

    def fire(spec, warps=4):
        key = str(list(spec)) + str({"num_warps": warps, "debug": False})  # Triton 3.6's form: one string
        kw = dict(key=key, repr="", fn=fn, compile={"signature": {}, "key": key}, is_manual_warmup=False,
                  already_compiled=False)
        knobs.runtime.jit_cache_hook(**kw)
        knobs.runtime.jit_post_compile_hook(**kw)

    a = (("*bf16", "D"), ("*i32", "D"), ("i32", "D"), ("constexpr", 64))
    b = (("*bf16", "D"), ("*i32", ""), ("i32", ""), ("constexpr", 64))
    c = (("*bf16", "D"), ("*i32", "D"), ("i32", "D"), ("constexpr", 128))
    with JitWatch() as jw:
        fire(a)
        fire(b)
        fire(c)
        fire(c, warps=8)
    what = [e[2] for e in jw.events]
    assert "key" in what[0] and "new variant" not in what[0]
    assert what[1].endswith("new variant: tok_ptr ('*i32', 'D')->('*i32', ''), N ('i32', 'D')->('i32', '')")
    assert what[2].endswith("new variant: BLOCK ('constexpr', 64)->('constexpr', 128)")
    assert what[3].endswith("new variant: options {'num_warps': 4, 'debug': False}->{'num_warps': 8, 'debug': False}")
