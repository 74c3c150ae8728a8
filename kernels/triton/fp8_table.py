"""Measured decode configs of the block linear (`fp8_linear.pick_config`), FP8 weights, bf16 activations.

Key (N, K) of the launch (N = all groups' rows), then the row bucket: 1, <= 16, <= 64, <= 128, <= 256.
Every entry is the fastest correct config of `python bench/kernels.py --only fp8_decode_sweep`
(bench/fp8_entries.py) on one H200; shapes not listed take pick_config's rule. Fields as pick_config's dicts;
VAR 0 token tiles x dequantized weight tiles, 1 swap (weights as the MMA's left operand), 2 CUDA-core GEMV (BM 1).
Below: the FP8 x FP8 tables (SCALED_MM_MIN_M, ACT_FP8_MIN_M) and their dispatch rules."""

from __future__ import annotations

import os

import torch

from .device_info import capability


def _c(bm, bn, st, split, var, warps=4):
    return dict(BM=bm, BN=bn, BK=128, GROUP_M=1, num_warps=warps, num_stages=st, SPLIT_K=split, VAR=var)


# sweep 1 (2026-12-02 04:33, window 5, bench/fp8_entries.py set 1; % of the 4.22 TB/s measured HBM read,
# rule's pick -> this entry); buckets where the rule's pick was within 2 % of the best are left to the rule
DECODE: dict = {
    (32768, 1024): {1: _c(1, 32, 3, 1, 2),     # wq_b: 45.1 -> 47.1 %
                    64: _c(64, 128, 4, 1, 1)},  # 26.7 -> 29.4 %
    (4096, 8192): {1: _c(1, 16, 3, 4, 2)},      # wo_b: 40.1 -> 43.0 %
    (4096, 4096): {1: _c(1, 16, 3, 4, 2)},      # mtp_proj: 31.8 -> 33.2 %
    (2048, 4096): {64: _c(64, 32, 4, 4, 0)},    # shared_w13: 13.1 -> 15.4 %
    (4096, 2048): {64: _c(64, 32, 4, 2, 0)},    # shared_w2: 14.7 -> 16.4 %
}
# sweep 3 (2026-12-02 session 3, FP8_SWEEP_M=256,128, bench/fp8_entries.py sweep_configs_big): rows 65..256
# (decode batches 128 / 256); the rule's pick (64 x 128 tiles, no K split: 16-128 programs) -> this entry, us
BIG = {  # (N, K): {bucket: config}  # shape: rule -> entry at M=128 / at M=256 (us)
    (1024, 4096): {128: _c(64, 64, 4, 8, 0), 256: _c(64, 64, 4, 4, 0)},  # wq_a 56.4 -> 13.8 / 56.4 -> 18.3
    (32768, 1024): {128: _c(128, 128, 3, 1, 0, 8),
                    256: _c(128, 128, 3, 1, 0, 8)},  # wq_b 65.0 -> 40.8 / 126 -> 78.9
    (512, 4096): {128: _c(64, 64, 4, 16, 0), 256: _c(64, 64, 4, 8, 0)},  # wkv 56.5 -> 13.2 / 56.2 -> 14.2
    (4096, 8192): {128: _c(128, 64, 3, 4, 1), 256: _c(128, 64, 3, 2, 1)},  # wo_b 112 -> 43.1 / 112 -> 71.7
    (8192, 1024): {128: _c(64, 64, 4, 1, 0), 256: _c(128, 64, 3, 1, 1)},  # idx_wq_b 17.1 -> 14.7 / 32.2 -> 21.9
    (2048, 4096): {128: _c(64, 64, 4, 4, 0), 256: _c(128, 64, 3, 4, 1)},  # shared_w13 56.7 -> 18.4 / 56.9 -> 26.2
    (4096, 2048): {128: _c(64, 64, 4, 2, 0), 256: _c(128, 64, 3, 2, 1)},  # shared_w2 30.0 -> 17.9 / 30.4 -> 24.7
    (4096, 4096): {128: _c(128, 64, 3, 4, 1), 256: _c(128, 64, 3, 2, 1)},  # mtp_proj 57.0 -> 26.8 / 57.2 -> 39.8
    (8192, 4096): {128: _c(128, 64, 3, 2, 1), 256: _c(128, 64, 3, 1, 1)},  # grouped wo_a 58.5 -> 40.7 / 114 -> 72.2
}
for _key, _row in BIG.items():
    DECODE.setdefault(_key, {}).update(_row)

def lookup(m: int, n: int, k: int):
    """The measured config for m rows of an (n, k) FP8 linear, or None."""
    row = DECODE.get((n, k))
    if row is None:
        return None
    bucket = next(b for b in (1, 16, 64, 128, 256) if m <= b) if m <= 256 else None
    cfg = row.get(bucket)
    return dict(cfg) if cfg is not None else None


# FP8 x FP8 through torch's blockwise-scaled GEMM (fp8_scaled_mm.py) for linear / norm_linear / grouped_linear
# (key: all groups' rows) / swiglu_linear (key: one weight's rows) from this many rows on, per (N, K). Measured
# (bench entry `fp8_scaled_mm`, rows M = 128 / 256 / 1024 / 4096 / 8192; H200, 2026-12-02): the smallest M from
# which the scaled path beats the Triton block linear at every larger measured M. E.g. wq_b at M=256: 79.0 ->
# 25.9 us, wo_b 71.5 -> 29.8; prefill M=8192 wq_b 1581 -> 609 us. Glue rows (`fp8_scaled_mm_glue`): swiglu w13
# loses at 128 (35.5 vs 51.8 us) and wins from 256; grouped wo_a (8 per-group GEMMs) wins from 4096 only.
# V4SERVE_FP8_SCALED_MM_MIN_M=<rows> applies one threshold to every shape (an experiment switch for bench/e2e.py
# runs; read once at import).
SCALED_MM_MIN_M: dict = {
    (1024, 4096): 256,   # wq_a
    (32768, 1024): 128,  # wq_b (norm_linear: 128 rows 66.8 -> 25.1 us)
    (512, 4096): 1024,   # wkv
    (4096, 8192): 128,   # wo_b
    (8192, 1024): 128,   # indexer wq_b
    (2048, 4096): 256,   # shared expert w1 / w3 (swiglu_linear; the plain shape wins from 128)
    (4096, 2048): 128,   # shared expert w2
    (4096, 4096): 128,   # MTP projection
    (8192, 4096): 4096,  # grouped wo_a, all 8 groups' rows
}
_ENV_MIN_M = int(os.environ.get("V4SERVE_FP8_SCALED_MM_MIN_M", "0") or 0)


# The block linear's own FP8 x FP8 mode (fp8_linear.launch(act_quant=True): activations quantized per 1x128
# block inside the GEMM, FP8 wgmma, the same act_quant numerics as the scaled path) for linear / grouped_linear /
# swiglu_linear rows that the scaled path does not take, from this many rows on, per (N, K) (keys as
# SCALED_MM_MIN_M). Measured (bench `fp8_scaled_mm`, impl `triton_act_fp8`, H200 2026-12-02): at 128 and 256
# rows it is slower than the bf16-activation block linear on every shape (0.18-0.69x; grouped wo_a 77 -> 152 us
# at 256 rows), so the table is empty.
# V4SERVE_FP8_ACT_MIN_M=<rows> applies one threshold to every shape (experiment switch, read once at import).
ACT_FP8_MIN_M: dict = {}
_ENV_ACT_MIN_M = int(os.environ.get("V4SERVE_FP8_ACT_MIN_M", "0") or 0)


# The LM head (`linear_glue.logits_linear`, plain bf16 weight [vocab, d]): from this many rows on, per (vocab, d),
# one cuBLAS GEMM writes fp32 logits directly (torch.mm out_dtype) instead of bf16 logits plus a cast pass over
# [rows, vocab]. Measured (bench `logits_linear`, H200 2026-12-02, cast -> fp32 out, us): M=1 253.6 -> 250.3,
# 64: 302.9 -> 286.8, 256: 478.5 -> 414.2, 512: 951 -> 800 (faster at every M); e2e batch 256 15.98 -> 15.83 ms.
# V4SERVE_HEAD_FP32_MIN_M=<rows> forces it from that many rows for other shapes (A/B switch).
HEAD_FP32_OUT_MIN_M: dict = {(129280, 4096): 1}  # V4-Flash vocab x hidden
_ENV_HEAD_MIN_M = int(os.environ.get("V4SERVE_HEAD_FP32_MIN_M", "0") or 0)


# The FP8 x FP8 tables and the LM head table were measured on an H200 (sm_90: FP8 tensor cores, cuBLASLt
# blockwise scaling): other GPUs keep the bf16-activation block linear and the bf16 head until measured there
# (an sm_80 part has no FP8 MMA at all).
MEASURED_CAPABILITY = (9, 0)


def _on_measured_gpu(rows: torch.Tensor) -> bool:
    return rows.is_cuda and capability(rows.device) == MEASURED_CAPABILITY


def use_fp32_out_mm(rows: torch.Tensor, n: int, k: int) -> bool:
    """Whether the LM head's rows [M, k] x plain weight [n, k] take the fp32-output GEMM (CUDA rows on the
    measured GPU class only, like use_scaled_mm)."""
    if not _on_measured_gpu(rows):
        return False
    lo = _ENV_HEAD_MIN_M if _ENV_HEAD_MIN_M > 0 else HEAD_FP32_OUT_MIN_M.get((n, k))
    return lo is not None and rows.shape[0] >= lo


def use_act_fp8(rows: torch.Tensor, n: int, k: int) -> bool:
    """Whether the rows of an (n, k) FP8 linear that do not take the scaled GEMM take the block linear's FP8 x FP8
    mode (CUDA rows on the measured GPU class only, like use_scaled_mm)."""
    if not _on_measured_gpu(rows):
        return False
    lo = _ENV_ACT_MIN_M if _ENV_ACT_MIN_M > 0 else ACT_FP8_MIN_M.get((n, k))
    return lo is not None and rows.shape[0] >= lo


def use_scaled_mm(rows: torch.Tensor, n: int, k: int) -> bool:
    """Whether the activation rows `rows` [M, ...] of an (n, k) FP8 linear (keys as SCALED_MM_MIN_M) take the
    blockwise-scaled torch GEMM (a CUDA op on the measured GPU class: never for the interpreter's CPU tensors,
    never on a GPU of another compute capability)."""
    if not _on_measured_gpu(rows):
        return False
    m = rows.shape[0]
    if _ENV_MIN_M > 0:
        return m >= _ENV_MIN_M
    lo = SCALED_MM_MIN_M.get((n, k))
    return lo is not None and m >= lo
