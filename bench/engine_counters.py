"""The engine's step counters as one dict shape for both benchmarks (engine/step_stats.py): bench.serve reads them
from a v4serve server's /metrics, bench.throughput from `LLMEngine.stats()`; `counters_delta` gives what the
engine did in between, so an offline run and a server run of one workload compare kind by kind."""

from __future__ import annotations

import re

_COUNTER = re.compile(r'^v4serve:(engine_steps_total|engine_step_seconds_total|kernel_compiles_total|'
                      r'kernel_compile_seconds_total)\{([^}]*)\} (\S+)$', re.M)


def engine_counters(metrics_text: str) -> dict | None:
    """v4serve's step counters from a /metrics page (engine/step_stats.py) -> {"steps": {kind: n}, "seconds":
    {kind: s}, "kernel_compiles": n, "kernel_compile_s": s}; None for a server without them (not v4serve)."""
    out = {"steps": {}, "seconds": {}, "kernel_compiles": 0.0, "kernel_compile_s": 0.0}
    found = False
    for name, labels, value in _COUNTER.findall(metrics_text):
        found = True
        kind = re.search(r'kind="(\w+)"', labels)
        if name == "engine_steps_total" and kind:
            out["steps"][kind.group(1)] = float(value)
        elif name == "engine_step_seconds_total" and kind:
            out["seconds"][kind.group(1)] = float(value)
        elif name == "kernel_compiles_total":
            out["kernel_compiles"] = float(value)
        elif name == "kernel_compile_seconds_total":
            out["kernel_compile_s"] = float(value)
    return out if found else None


def from_stats(stats) -> dict:
    """The same dict from an `EngineStats` (the offline engine)."""
    return {"steps": dict(stats.steps.steps), "seconds": dict(stats.steps.seconds),
            "kernel_compiles": stats.kernel_compiles_total, "kernel_compile_s": stats.kernel_compile_seconds_total}


def counters_delta(after: dict | None, before: dict | None) -> dict | None:
    """What the engine did between two `engine_counters` reads (None if either is missing)."""
    if after is None or before is None:
        return None
    return {"steps": {k: int(v - before["steps"].get(k, 0)) for k, v in after["steps"].items()},
            "seconds": {k: round(v - before["seconds"].get(k, 0.0), 4) for k, v in after["seconds"].items()},
            "kernel_compiles": int(after["kernel_compiles"] - before["kernel_compiles"]),
            "kernel_compile_s": round(after["kernel_compile_s"] - before["kernel_compile_s"], 3)}
