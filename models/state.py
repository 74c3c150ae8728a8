"""What per-sequence attention state the model needs, and the flat batch it runs on.

The model owns the *math*; the KV-cache manager (kvcache/) owns the *storage*. This file is
the contract between them:

* `layer_state_specs(cfg, layer, block_size)` lists, for one layer, every state tensor with its
  scope: "slot" tensors have one row per live sequence (bounded state: the sliding-window ring
  and the compressor tails), "block" tensors have one row per paged block (growing state:
  compressed entries and indexer keys; a block covers `block_size` tokens, so it holds
  `block_size // ratio` entries).
* `allocate_state(...)` allocates all of them: `ModelState.layers[i][name]` is a tensor of shape
  `[num_slots or num_blocks, *spec.shape]`.
* `ForwardBatch` is the flat batch: sequences laid end to end, each with its state slot and its
  block table.

Layouts (per layer, per slot / per block):

    window      [W, c]           ring of the last W raw K=V vectors; row = position % W
    kv_tail     [coff*m, coff*c] compressor ring of projected kv; row = position % (coff*m)
    score_tail  [coff*m, coff*c] compressor ring of gate scores (+ape); same rows
    idx_kv_tail / idx_score_tail [2*4, 2*c_I]  the CSA indexer's own compressor ring
    compressed  [block_size//m, c]    compressed entries; entry e of a sequence lives in block
                                      block_table[e*m // block_size], row (e*m % block_size)//m
    index_keys  [block_size//4, c_I]  CSA indexer keys, same addressing as `compressed`

coff = 2 for CSA (overlapping windows: a token's first half feeds the next entry), 1 for HCA.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

import kernels.kv_format as kv_format_registry
from kernels.attn_meta import AttnMeta  # the kernels' batch metadata (built here, from a ForwardBatch)

from .config import CSA_RATIO, ModelConfig


@dataclass(frozen=True)
class StateTensorSpec:
    name: str  # "window" | "kv_tail" | "score_tail" | "idx_kv_tail" | "idx_score_tail" | "compressed" | "index_keys"
    scope: str  # "slot" (one row per live sequence) or "block" (one row per paged block)
    shape: tuple[int, ...]  # shape of one row
    fp32: bool  # True: always float32 (compressor tails); False: the model's compute/KV dtype
    packed: bool = False  # True: uint8 rows in an FP8 entry format (kernels/ref/kv_fp8.py)

    def row_bytes(self, kv_dtype: torch.dtype) -> int:
        n = 1
        for s in self.shape:
            n *= s
        if self.packed:
            return n
        return n * (4 if self.fp32 else torch.empty(0, dtype=kv_dtype).element_size())

    def dtype(self, kv_dtype: torch.dtype) -> torch.dtype:
        return torch.uint8 if self.packed else (torch.float32 if self.fp32 else kv_dtype)


def layer_state_specs(cfg: ModelConfig, layer: int, block_size: int, kv_format: str = "bf16") -> list[StateTensorSpec]:
    """State tensors of main layer `layer` (see the module docstring for the layouts).

    kv_format "bf16" (default, the parity reference): entries dense in the model's KV dtype.
    kv_format "fp8": window rows and compressed entries are uint8 rows of the 584-byte FP8 entry
    (448 E4M3 + 64 BF16 rope + 7 UE8M0 scales + pad, for V4 shapes), indexer keys uint8 rows of
    ci FP8 bytes + one fp32 scale (132 B); "fp8_fp4idx": the same entries, indexer keys MXFP4 rows
    (Hadamard-rotated, ci/2 code bytes + ci/32 UE8M0 scales = 68 B); see kernels/ref/kv_fp8.py.
    """
    fmt = kv_format_registry.get(kv_format)
    fp8 = fmt.packed
    c = cfg.head_dim
    ew = fmt.entry_width(c, cfg.qk_rope_head_dim)
    ratio = cfg.compress_ratios[layer]
    specs = [StateTensorSpec("window", "slot", (cfg.sliding_window, ew), False, fp8)]
    if ratio == 0:
        return specs
    if block_size % ratio:
        raise ValueError(f"block_size {block_size} is not a multiple of compress ratio {ratio}")
    coff = 2 if ratio == CSA_RATIO else 1
    specs += [
        StateTensorSpec("kv_tail", "slot", (coff * ratio, coff * c), True),
        StateTensorSpec("score_tail", "slot", (coff * ratio, coff * c), True),
        StateTensorSpec("compressed", "block", (block_size // ratio, ew), False, fp8),
    ]
    if ratio == CSA_RATIO:
        ci = cfg.index_head_dim
        specs += [
            StateTensorSpec("idx_kv_tail", "slot", (2 * ratio, 2 * ci), True),
            StateTensorSpec("idx_score_tail", "slot", (2 * ratio, 2 * ci), True),
            StateTensorSpec("index_keys", "block", (block_size // ratio, fmt.index_key_width(ci)), False, fp8),
        ]
    return specs


def state_bytes(cfg: ModelConfig, block_size: int, kv_dtype: torch.dtype, kv_format: str = "bf16") -> tuple[int, int]:
    """(bytes per slot, bytes per block) over all main layers."""
    per_slot = per_block = 0
    for layer in range(cfg.num_hidden_layers):
        for s in layer_state_specs(cfg, layer, block_size, kv_format):
            if s.scope == "slot":
                per_slot += s.row_bytes(kv_dtype)
            else:
                per_block += s.row_bytes(kv_dtype)
    return per_slot, per_block


@dataclass
class ModelState:
    """All attention state tensors of the model; allocated once, owned by the cache manager."""

    block_size: int  # tokens covered by one paged block (multiple of every compression ratio)
    num_slots: int
    num_blocks: int
    layers: list[dict[str, torch.Tensor]] = field(default_factory=list)  # layers[i][spec.name]
    kv_format: str = "bf16"  # "bf16": dense entries in the KV dtype; "fp8": packed uint8 entries


def allocate_state(
    cfg: ModelConfig,
    num_slots: int,
    num_blocks: int,
    block_size: int,
    dtype: torch.dtype,
    device: torch.device | str = "cpu",
    kv_format: str = "bf16",
) -> ModelState:
    st = ModelState(block_size=block_size, num_slots=num_slots, num_blocks=num_blocks, kv_format=kv_format)
    for layer in range(cfg.num_hidden_layers):
        d: dict[str, torch.Tensor] = {}
        for s in layer_state_specs(cfg, layer, block_size, kv_format):
            rows = num_slots if s.scope == "slot" else num_blocks
            d[s.name] = torch.zeros((rows, *s.shape), dtype=s.dtype(dtype), device=device)
        st.layers.append(d)
    return st


@dataclass
class ForwardBatch:
    """A flat batch of token chunks from B sequences, laid end to end (N tokens in all).

    Sequence b owns flat tokens [query_start[b], query_start[b+1]); its first token is at
    position context_lens[b] (tokens already in its state). Decode is a chunk of length 1.
    """

    input_ids: torch.Tensor  # [N] int64, device
    positions: torch.Tensor  # [N] int64, device: absolute position of every token
    slot_ids: torch.Tensor  # [B] int64, device: state slot of each sequence
    block_tables: torch.Tensor  # [B, max_blocks] int64, device: paged block ids, -1 = unused
    logits_indices: torch.Tensor  # [S] int64, device: flat token rows whose logits are wanted
    query_start: list[int]  # [B+1] host: prefix sums of chunk lengths
    context_lens: list[int]  # [B] host: tokens already processed before this chunk
    meta: "AttnMeta | None" = None  # device metadata for the attention kernels (see batch_metadata)

    @property
    def num_seqs(self) -> int:
        return len(self.context_lens)

    @property
    def num_tokens(self) -> int:
        return self.query_start[-1]

    def query_len(self, b: int) -> int:
        return self.query_start[b + 1] - self.query_start[b]


def single_sequence_batch(
    input_ids: torch.Tensor, start_pos: int, block_table: torch.Tensor, slot: int = 0, all_logits: bool = True
) -> ForwardBatch:
    """One sequence's chunk `input_ids` starting at `start_pos` (reference path and tests)."""
    dev = input_ids.device
    n = input_ids.numel()
    rows = torch.arange(n, device=dev) if all_logits else torch.tensor([n - 1], device=dev)
    return ForwardBatch(
        input_ids=input_ids.reshape(-1).long(),
        positions=torch.arange(start_pos, start_pos + n, device=dev),
        slot_ids=torch.tensor([slot], device=dev),
        block_tables=block_table.reshape(1, -1).to(dev).long(),
        logits_indices=rows,
        query_start=[0, n],
        context_lens=[start_pos],
    )


def batch_metadata(batch: ForwardBatch) -> AttnMeta:
    """The batch's AttnMeta (computed on first use and cached on the batch)."""
    if batch.meta is not None:
        return batch.meta
    dev = batch.positions.device
    qs, cl = list(batch.query_start), list(batch.context_lens)
    lens = [qs[b + 1] - qs[b] for b in range(len(cl))]
    tok_seq = torch.repeat_interleave(torch.arange(len(cl), dtype=torch.int32), torch.tensor(lens, dtype=torch.long))
    # one host->device copy for the three host-built vectors; on CUDA from pinned memory, non-blocking, so
    # an eager step never waits for the step in flight (a plain torch.tensor(..., device=cuda) syncs)
    host = torch.cat((torch.tensor(qs, dtype=torch.int32), torch.tensor(cl, dtype=torch.int32), tok_seq))
    if dev.type == "cuda":
        flat = host.pin_memory().to(dev, non_blocking=True)
    else:
        flat = host.to(dev)
    n_seq = len(cl)
    batch.meta = AttnMeta(
        query_start=flat[:n_seq + 1],
        context_lens=flat[n_seq + 1:2 * n_seq + 1],
        slot_ids=batch.slot_ids.to(device=dev, dtype=torch.int32),
        block_tables=batch.block_tables.to(device=dev, dtype=torch.int32).contiguous(),
        tok_seq=flat[2 * n_seq + 1:],
        positions=batch.positions.to(torch.int32),
        query_start_host=qs,
        context_lens_host=cl,
        max_query_len=max(lens, default=0),
        max_seq_len=max((c + n for c, n in zip(cl, lens)), default=0),
    )
    return batch.meta
