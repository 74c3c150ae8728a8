"""Measured decode configs of the block linear (`fp8_linear.pick_config`), FP8 weights, bf16 activations.

Key (N, K) of the launch (N = all groups' rows), then the row bucket: 1, <= 16, <= 64. Every entry is the
fastest correct config of `python bench/kernels.py --only fp8_decode_sweep` (bench/fp8_entries.py) on one
H200; shapes not listed take pick_config's rule. Fields as pick_config's dicts; VAR 0 token tiles x
dequantized weight tiles, 1 swap (weights as the MMA's left operand), 2 CUDA-core GEMV (BM 1)."""

from __future__ import annotations

DECODE: dict = {}


def lookup(m: int, n: int, k: int):
    """The measured config for m rows of an (n, k) FP8 linear, or None."""
    row = DECODE.get((n, k))
    if row is None:
        return None
    bucket = 1 if m == 1 else (16 if m <= 16 else 64)
    cfg = row.get(bucket)
    return dict(cfg) if cfg is not None else None
