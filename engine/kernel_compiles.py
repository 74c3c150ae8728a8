"""Triton JIT compilations while something runs: how many, how long, which kernels and argument types.

A benchmark's warm-up is meant to compile every kernel the timed run launches. When the timed run uses a
specialization the warm-up did not (Triton specializes integer arguments by size and divisibility: an offset
past 2^31 turns an i32 argument into i64, a new compile), the compile lands in the timed number. Session 9's
1M-token prompt measured 48.5 s in the first process on a fresh machine and 40.0 s in the next one: this
watch reports such compiles so that a benchmark can name them instead of absorbing them, and a serving engine
counts the ones its requests wait for (`LLMEngine`: installed once start-up has compiled and captured what it
knows; `on_event` logs each one, `/metrics` exports the totals):

    with JitWatch() as jw:
        run()
    jw.summary()  # {"count": 3, "s": 2.41, "kernels": [["_score_kernel", 1.2, "i64: n_keys,stride"], ...]}

Uses `triton.knobs.runtime.jit_cache_hook` (called before a kernel-cache miss compiles, or loads from the
on-disk cache) and `jit_post_compile_hook` (after); previous hooks are chained and restored on exit.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable

log = logging.getLogger("v4serve.engine")


_PROCESS_WATCH: list = []  # the one serving watch of this process (Triton's hooks are process-wide)


def serving_watch() -> "JitWatch":
    """The process's watch for engines (installed by the first CUDA engine once its start-up is done, then
    shared: one hook and one log line per compile however many engines the process builds). An engine keeps
    the totals it started at and reports the difference."""
    if not _PROCESS_WATCH:
        _PROCESS_WATCH.append(JitWatch(on_event=log_compile, keep_events=False).__enter__())
    return _PROCESS_WATCH[0]


def log_compile(name: str, seconds: float, what: str) -> None:
    """The serving engine's `on_event`: a step waited `seconds` for kernel `name` (a compile, or a load from the
    on-disk cache: those take milliseconds and are logged at INFO)."""
    log.log(logging.WARNING if seconds >= 0.5 else logging.INFO,
            "kernel %s compiled while serving (%.2f s; %s): the step that launched it waited for it", name, seconds,
            what[:300])


def _key_parts(key) -> list:
    """Triton's cache key -> one entry per kernel argument, then the launch options. Triton 3.6 passes the key
    as one string, str(specialization list) + str(options) ("[('*bf16', 'D'), ('i32', None), ('constexpr', 64)]"
    "{'num_warps': 4, ...}"); a (specialization, options) pair is taken as it is."""
    if isinstance(key, tuple):
        return [*key[0], key[1]]
    if not key.startswith("["):
        raise ValueError("not a Triton cache key")
    items, depth, start = [], 0, 1
    for i, ch in enumerate(key):
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
            if depth == 0:  # the specialization list's closing bracket: the options follow
                if key[start:i].strip():
                    items.append(key[start:i].strip())
                return items + [key[i + 1:]]
        elif ch == "," and depth == 1:
            items.append(key[start:i].strip())
            start = i + 1
    raise ValueError("unbalanced Triton cache key")


@dataclass
class JitWatch:
    events: list[tuple[str, float, str]] = field(default_factory=list)  # (kernel, seconds, its i64 arguments)
    on_event: Callable[[str, float, str], None] | None = None  # called with each new event (e.g. a log line)
    keep_events: bool = True  # False: count and time only (a long-running server keeps no list)
    count: int = 0  # compile events seen (cache misses, including loads from Triton's on-disk cache)
    seconds: float = 0.0  # their summed wall time
    _start: dict = field(default_factory=dict)  # key -> perf_counter at the cache miss
    _prev: tuple = ()  # hooks installed before ours, restored on exit
    _ours: tuple = ()  # our (pre, post) hooks while installed
    _variants: dict = field(default_factory=dict)  # kernel name -> specialization keys compiled so far

    def __enter__(self) -> "JitWatch":
        from triton import knobs
        rt = knobs.runtime
        self._prev = (rt.jit_cache_hook, rt.jit_post_compile_hook)
        prev_pre, prev_post = self._prev

        def pre(*, key, repr, fn, compile, is_manual_warmup, already_compiled):
            self._start[str(key)] = time.perf_counter()
            if prev_pre is not None:
                return prev_pre(key=key, repr=repr, fn=fn, compile=compile, is_manual_warmup=is_manual_warmup,
                                already_compiled=already_compiled)
            return False

        def post(*, key, repr, fn, compile, is_manual_warmup, already_compiled):
            t0 = self._start.pop(str(key), None)
            dt = time.perf_counter() - t0 if t0 is not None else 0.0
            sig = compile.get("signature") or {}
            wide = sorted(k for k, v in sig.items() if v == "i64")
            what = "i64: " + ",".join(wide) if wide else "no i64 arguments"
            # the specialization key (argument types, divisibility by 16, constexpr values): two compiles of one
            # kernel differ in it, which names the argument that made the second one
            new = self._new_variant(fn, compile.get("key"))
            event = (fn.name, dt, f"{what}; {new}" if new else f"{what}; key {str(compile.get('key'))[:400]}")
            self.count += 1
            self.seconds += dt
            if self.keep_events:
                self.events.append(event)
            if self.on_event is not None:
                self.on_event(*event)
            if prev_post is not None:
                return prev_post(key=key, repr=repr, fn=fn, compile=compile, is_manual_warmup=is_manual_warmup,
                                 already_compiled=already_compiled)
            return None

        rt.jit_cache_hook, rt.jit_post_compile_hook = pre, post
        self._ours = (pre, post)
        return self

    def _new_variant(self, fn, key) -> str:
        """What sets this compile's key apart from the kernel's closest earlier one in this process: "new variant:
        arg old->new, ..." (the arguments by name, e.g. `N ('i32', 'D')->('i32', '')`: N was a multiple of 16
        before), or "" for a kernel's first compile here or a key this watch cannot read."""
        try:
            spec, params = _key_parts(key), [p.name for p in fn.jit_function.params] + ["options"]
        except (AttributeError, IndexError, TypeError, ValueError):
            return ""
        seen = self._variants.setdefault(fn.name, [])
        best = None
        for old in seen:
            if len(old) == len(spec):
                diff = [i for i, (a, b) in enumerate(zip(old, spec)) if a != b]
                if best is None or len(diff) < len(best[1]):
                    best = (old, diff)
        seen.append(spec)
        if best is None:
            return ""
        old, diff = best
        return "new variant: " + ", ".join(f"{params[i] if i < len(params) else i} {old[i]}->{spec[i]}"
                                           for i in diff[:6])

    def __exit__(self, *exc) -> None:
        from triton import knobs
        rt = knobs.runtime
        # hooks installed after ours (and not yet removed) chain to ours: left in place, ours keeps counting
        if (rt.jit_cache_hook, rt.jit_post_compile_hook) == self._ours:
            rt.jit_cache_hook, rt.jit_post_compile_hook = self._prev

    def summary(self, top: int = 12) -> dict:
        """{"count", "s" (sum of compile seconds), "kernels": the `top` slowest [name, s, their i64 arguments]}."""
        ev = sorted(self.events, key=lambda e: -e[1])
        return {"count": self.count, "s": round(self.seconds, 3),
                "kernels": [[n, round(s, 3), sig] for n, s, sig in ev[:top]]}
