"""How big the cache is: block size, blocks for a byte budget, and per-token byte reports.

Two kinds of numbers live here:

* what *this* engine allocates (`num_blocks_for_budget`): exact, from `models.state.state_bytes`,
  i.e. dense entries in the compute dtype plus FP32 compressor tails;
* what a given *entry format* costs (`kv_size_report`): the per-token growth and per-sequence fixed
  state of a V4 cache whose entries are stored as a `KVEntryFormat` (kernels/kv_format.py: bf16, or the 584-byte FP8 entry
  with an FP8/FP4 indexer, architecture.md §5.3-5.4). Used for planning and the startup log.

    python -m kvcache.sizing --preset flash --format fp8 --indexer fp4
"""

from __future__ import annotations

import argparse
import logging
import math
from dataclasses import dataclass

import torch

from kernels.kv_format import KVEntryFormat, get_encoding
from kernels.kv_format import find as find_kv_format
from models.config import CSA_RATIO, PRESETS, ModelConfig
from models.state import layer_state_specs, state_bytes

from .snapshots import snapshot_bytes

GiB = 1 << 30


# ---- block size and block count ------------------------------------------------------------
def choose_block_size(cfg: ModelConfig, requested: int | None = None) -> int:
    """`requested` if valid, else the smallest multiple of every compression ratio that is >= 64."""
    lcm = cfg.ratio_lcm
    if requested is not None:
        if requested < 1 or requested % lcm:
            raise ValueError(
                f"block_size {requested} must be a positive multiple of every compression ratio "
                f"{cfg.distinct_ratios} (i.e. of {lcm})"
            )
        return requested
    return lcm * max(1, -(-64 // lcm))


def num_blocks_for_budget(
    cfg: ModelConfig, budget_bytes: int, num_slots: int, block_size: int, dtype: torch.dtype,
    kv_format: str = "bf16", snapshot_interval: int | None = None,
) -> int:
    """Blocks that fit in `budget_bytes` after reserving `num_slots` state slots (and, with prefix
    caching, `num_snapshot_rows` slot-state snapshots of `snapshot_bytes` each)."""
    per_slot, per_block = state_bytes(cfg, block_size, dtype, kv_format)
    snap = snapshot_bytes(cfg, block_size, dtype, kv_format) if snapshot_interval else 0
    left = budget_bytes - num_slots * per_slot
    if per_block == 0:  # sliding-window-only model: nothing grows; one nominal block
        if left < num_slots * snap:
            raise ValueError(_budget_msg(budget_bytes, num_slots, per_slot + snap, per_block))
        return 1
    if not snap:
        n = left // per_block
    else:  # largest n with n * per_block + num_snapshot_rows(n) * snap <= left (rows = max(slots, n*bs//iv))
        def fits(k: int) -> bool:
            return k * per_block + num_snapshot_rows(k, block_size, snapshot_interval, num_slots) * snap <= left

        n_many = int(left // (per_block + snap * block_size / snapshot_interval))
        while n_many >= 1 and not fits(n_many):
            n_many -= 1
        while fits(n_many + 1):  # the floor in the row count can leave room for a few more
            n_many += 1
        n_few = min((left - num_slots * snap) // per_block, (num_slots + 1) * snapshot_interval // block_size - 1)
        n = max(n_many, n_few if n_few >= 1 and fits(n_few) else 0)
    if n < 1:
        raise ValueError(_budget_msg(budget_bytes, num_slots, per_slot + snap, per_block))
    return int(n)


# ---- prefix caching: slot-state snapshots (kvcache/snapshots.py) ----------------------------
PREFIX_SNAPSHOT_FRACTION = 0.2  # default interval: snapshots cost at most this share of the block bytes


def prefix_snapshot_interval(cfg: ModelConfig, block_size: int, dtype: torch.dtype, kv_format: str = "bf16",
                             requested: int | None = None, token_budget: int | None = None) -> int:
    """Tokens between the periodic snapshots: `requested` if valid, else the smallest multiple of
    block_size whose snapshots (one per interval) cost <= PREFIX_SNAPSHOT_FRACTION of the blocks, rounded up
    to a multiple of `token_budget` (the scheduler's max_num_batched_tokens) when that is whole blocks.
    Chunks end at snapshot points, so an interval that is not a multiple of the budget cuts a long prompt's
    chunks short: 6,016 with an 8,192 budget (8 V4-Flash layers) ran a 1M-token prompt in 174 chunks of
    6,016 tokens instead of 128 of 8,192, each below the MoE's grouped-GEMM threshold (measured, H200)."""
    if requested is not None:
        if requested < block_size or requested % block_size:
            raise ValueError(f"prefix snapshot interval {requested} must be a positive multiple of "
                             f"block_size {block_size}")
        return requested
    _, per_block = state_bytes(cfg, block_size, dtype, kv_format)
    snap = snapshot_bytes(cfg, block_size, dtype, kv_format)
    iv = block_size if per_block == 0 else block_size * max(1, math.ceil(snap / (PREFIX_SNAPSHOT_FRACTION * per_block)))
    if token_budget and token_budget % block_size == 0:
        iv = -(-iv // token_budget) * token_budget
    return iv


def num_snapshot_rows(num_blocks: int, block_size: int, interval: int, num_slots: int) -> int:
    """Snapshot rows: one per interval of the whole cache, at least one per state slot (small caches).
    Interval, prompt-end and divergence snapshots share the rows (LRU), so at scale the snapshots
    cost PREFIX_SNAPSHOT_FRACTION of the block bytes whatever the mix."""
    return max(num_slots, num_blocks * block_size // interval)


@dataclass(frozen=True)
class PrefixCacheReport:
    snapshot_bytes: int  # one snapshot: windows + open CSA tails, all layers
    interval: int  # tokens between periodic snapshots
    block_bytes_per_token: float  # paged state per token (compressed entries + indexer keys)
    snapshot_bytes_per_token: float  # snapshot rows of the whole cache / its token capacity

    @property
    def extra_fraction(self) -> float:
        return self.snapshot_bytes_per_token / self.block_bytes_per_token if self.block_bytes_per_token else 0.0


def prefix_cache_report(cfg: ModelConfig, block_size: int, dtype: torch.dtype, kv_format: str, interval: int,
                        num_blocks: int, num_slots: int) -> PrefixCacheReport:
    _, per_block = state_bytes(cfg, block_size, dtype, kv_format)
    snap = snapshot_bytes(cfg, block_size, dtype, kv_format)
    rows = num_snapshot_rows(num_blocks, block_size, interval, num_slots)
    return PrefixCacheReport(snap, interval, per_block / block_size, rows * snap / (num_blocks * block_size))


def _budget_msg(budget: int, num_slots: int, per_slot: int, per_block: int) -> str:
    need = num_slots * per_slot + per_block
    return (
        f"KV cache budget of {budget / GiB:.3f} GiB cannot hold {num_slots} sequence state slots "
        f"({per_slot / 2**20:.2f} MiB each) plus one block ({per_block / 2**20:.2f} MiB): need at least "
        f"{need / GiB:.3f} GiB. Lower max_num_seqs, or raise gpu_memory_utilization / kv_cache_memory."
    )


def gpu_kv_budget(gpu_memory_utilization: float, device: torch.device | str | int | None = None) -> int:
    """Bytes for the KV cache: `gpu_memory_utilization` of the GPU memory free now (call after weights)."""
    if not 0.0 < gpu_memory_utilization <= 1.0:
        raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}")
    if not torch.cuda.is_available():
        raise RuntimeError("gpu_kv_budget needs a CUDA GPU; on CPU pass an explicit kv_cache_memory")
    free, _total = torch.cuda.mem_get_info(device)
    return int(free * gpu_memory_utilization)


@dataclass(frozen=True)
class KVSizeReport:
    bytes_per_token: float  # growth per context token: compressed entries + indexer keys, all layers
    fixed_bytes_per_seq: int  # window + tail bytes, independent of the sequence length
    window_bytes_per_seq: int  # sliding-window rings (W entries per layer, every layer)
    tail_bytes_per_seq: int  # FP32 compressor tails (main + indexer), as in models/state.py

    def seq_bytes(self, num_tokens: int) -> float:
        return self.fixed_bytes_per_seq + self.bytes_per_token * num_tokens


def kv_size_report(
    cfg: ModelConfig, fmt: str | KVEntryFormat = "fp8", indexer_fmt: str | KVEntryFormat = "fp4"
) -> KVSizeReport:
    main, idx = get_encoding(fmt), get_encoding(indexer_fmt)
    if main.main_entry_bytes is None:
        raise ValueError(f"{main.name!r} is an indexer-only format; main entries use bf16 or fp8")
    entry = main.main_entry_bytes(cfg.head_dim, cfg.qk_rope_head_dim)
    key = idx.indexer_key_bytes(cfg.index_head_dim)
    per_token = 0.0
    tails = 0
    for layer, m in enumerate(cfg.compress_ratios):
        if m > 0:
            per_token += entry / m + (key / m if m == CSA_RATIO else 0.0)
        for s in layer_state_specs(cfg, layer, cfg.ratio_lcm):
            if s.scope == "slot" and s.fp32:
                tails += s.row_bytes(torch.float32)
    window = cfg.num_hidden_layers * cfg.sliding_window * entry
    return KVSizeReport(per_token, window + tails, window, tails)


# ---- reporting -----------------------------------------------------------------------------
def log_cache_plan(
    logger: logging.Logger,
    *,
    weights_bytes: int,
    kv_bytes: int,
    num_blocks: int,
    block_size: int,
    num_slots: int,
    max_model_len: int | None = None,
) -> None:
    """One info line: weights, KV bytes, blocks, max concurrent tokens and sequences."""
    extra = f", max_model_len {max_model_len}" if max_model_len is not None else ""
    logger.info(
        "cache plan: weights %.2f GiB, KV cache %.2f GiB = %d blocks x %d tokens -> %d concurrent tokens, "
        "%d concurrent sequences%s",
        weights_bytes / GiB, kv_bytes / GiB, num_blocks, block_size, num_blocks * block_size, num_slots, extra,
    )


def format_table(cfg: ModelConfig, name: str, fmt: str, indexer_fmt: str, dtype: torch.dtype) -> str:
    rep = kv_size_report(cfg, fmt, indexer_fmt)
    bs = choose_block_size(cfg)
    per_slot, per_block = state_bytes(cfg, bs, dtype)
    rows = [
        (f"{name}: entries {fmt}, indexer {indexer_fmt}", ""),
        ("layers (sliding/csa/hca)", "/".join(str(sum(cfg.layer_kind(i) == k for i in range(cfg.num_hidden_layers)))
                                              for k in ("sliding", "csa", "hca"))),
        ("bytes per token", f"{rep.bytes_per_token:,.2f}"),
        ("window bytes per seq", f"{rep.window_bytes_per_seq:,}"),
        ("tail bytes per seq (fp32)", f"{rep.tail_bytes_per_seq:,}"),
        ("one 2^20-token sequence", f"{rep.seq_bytes(1 << 20) / GiB:.2f} GiB"),
        (f"allocated here ({str(dtype).removeprefix('torch.')}, block {bs})",
         f"{per_slot:,} B/slot, {per_block:,} B/block ({per_block / bs:,.1f} B/token)"),
    ]
    # the engine's kv_format for this (entries, indexer) pair, if it has one: its prefix-cache snapshot cost
    dense = {"bf16": "dense"}
    engine_fmt = find_kv_format(dense.get(fmt, fmt), dense.get(indexer_fmt, indexer_fmt))
    if engine_fmt is not None:
        kv_format = engine_fmt.name
        iv = prefix_snapshot_interval(cfg, bs, dtype, kv_format)
        snap, paged = snapshot_bytes(cfg, bs, dtype, kv_format), state_bytes(cfg, bs, dtype, kv_format)[1] / bs
        rows.append(("prefix-cache snapshot (window + open CSA tails)",
                     f"{snap:,} B, every {iv:,} tokens -> {snap / iv:,.1f} B/cached token "
                     f"({snap / iv / paged:.1%} of the paged bytes)"))
    w = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{w}}  {v}".rstrip() for k, v in rows)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m kvcache.sizing", description="DeepSeek-V4 KV cache sizes")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="flash")
    ap.add_argument("--format", choices=["bf16", "fp8"], default="fp8")
    ap.add_argument("--indexer", choices=["bf16", "fp8", "fp4"], default="fp4")
    args = ap.parse_args(argv)
    print(format_table(PRESETS[args.preset](), args.preset, args.format, args.indexer, torch.bfloat16))


if __name__ == "__main__":
    main()
