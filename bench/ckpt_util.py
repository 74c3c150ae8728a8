"""Checkpoints and engines for the GPU benchmarks (bench/e2e.py, prefix.py, spec.py).

`ensure_checkpoint` draws a V4-shaped synthetic checkpoint once (models/synthetic.py, quantized like
the official one) and reuses the directory on later runs; `engine_on_weights` builds another engine
on weights an earlier engine already loaded (a new KV cache, state and CUDA graphs; no second load),
so one run can compare KV formats or engine variants without paying the load each time.
"""

from __future__ import annotations

import time
from pathlib import Path


def ensure_checkpoint(model: str | None, ckpt_dir: str | None, *, preset: str, layers: int, tag: str,
                      mtp: bool = False, device: str = "cuda") -> tuple[str, float]:
    """-> (checkpoint dir, seconds spent drawing it: 0 when reused). `model` given: that directory as is.
    Otherwise `ckpt_dir` (default /tmp/v4serve_{tag}_{preset}_L{layers}) holds a `preset`-shaped
    checkpoint of `layers` layers (+ the MTP block when `mtp`), drawn on `device` if it is not there yet."""
    if model:
        return model, 0.0
    out = Path(ckpt_dir or f"/tmp/v4serve_{tag}_{preset}_L{layers}")
    if (out / "config.json").exists():
        return str(out), 0.0
    from models import synthetic

    t = time.perf_counter()
    synthetic.main(["--preset", preset, "--layers", str(layers), "--quantize", *([] if mtp else ["--no-mtp"]),
                    "--device", device, "--out", str(out)])
    return str(out), time.perf_counter() - t


def engine_on_weights(engine_args, weights=None):
    """LLMEngine(engine_args); `weights` (an earlier engine's `.model`, same checkpoint, device and dtype,
    MTP block included if this engine speculates): used instead of loading the checkpoint again."""
    import engine.llm_engine as le

    if weights is None:
        return le.LLMEngine(engine_args)
    orig = le.load_model
    le.load_model = lambda *a, **k: weights
    try:
        return le.LLMEngine(engine_args)
    finally:
        le.load_model = orig
