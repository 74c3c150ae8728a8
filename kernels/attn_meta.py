"""`AttnMeta`: the per-batch metadata every attention / indexer / compressor kernel consumes.

Built once per forward from the flat batch by `models.state.batch_metadata` (or by the CUDA-graph
static buffers, engine/cuda_graph.py); it lives here, with its readers, so kernels never import models.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PackedLayout:
    """Where each sequence's compressed entries go when a kernel packs them densely (AttnMeta.packed_layout)."""

    total: int  # packed rows in all (host int: sizes the buffer)
    most: int  # the largest sequence's packed rows (host int: bounds the pack grid)
    counts: torch.Tensor  # [B] int32 on the device: packed rows of sequence b (0: not packed)
    base: torch.Tensor  # [B] int64 on the device: sequence b's first packed row (exclusive prefix sum of counts)


@dataclass
class AttnMeta:
    """Per-batch metadata the kernels (kernels/__init__.py) consume; built once per forward.

    Device tensors are int32. Host ints bound the grids (no device->host sync in the kernels).
    """

    query_start: torch.Tensor  # [B+1] int32
    context_lens: torch.Tensor  # [B] int32
    slot_ids: torch.Tensor  # [B] int32
    block_tables: torch.Tensor  # [B, max_blocks] int32 (-1 = unused)
    tok_seq: torch.Tensor  # [N] int32: sequence index of each flat token
    positions: torch.Tensor  # [N] int32
    query_start_host: list[int]
    context_lens_host: list[int]
    max_query_len: int
    max_seq_len: int  # max over sequences of context_len + query_len

    @property
    def num_seqs(self) -> int:
        return len(self.context_lens_host)

    @property
    def num_tokens(self) -> int:
        return self.query_start_host[-1]

    def chunks(self):
        """(b, s0, s1, start) for every sequence with a non-empty chunk: flat token rows [s0, s1),
        the first of which is at position `start` (what the torch twins loop over)."""
        qs, cl = self.query_start_host, self.context_lens_host
        for b in range(len(cl)):
            if qs[b + 1] > qs[b]:
                yield b, qs[b], qs[b + 1], cl[b]

    def packed_layout(self, ratio: int, min_query: int = 1) -> PackedLayout:
        """Entries at compression `ratio` that the chunk of each sequence with >= min_query tokens can see,
        (context_len + query_len) // ratio, packed sequence after sequence: sizes from the host lists, the
        offsets computed on the device (no sync)."""
        qs, cl = self.query_start_host, self.context_lens_host
        lo = max(min_query, 1)
        host_n = [(cl[b] + qs[b + 1] - qs[b]) // ratio if qs[b + 1] - qs[b] >= lo else 0 for b in range(len(cl))]
        qlen = self.query_start[1:] - self.query_start[:-1]
        counts = torch.where(qlen >= lo, torch.div(self.context_lens + qlen, ratio, rounding_mode="floor"),
                             0).to(torch.int32)
        base = torch.cumsum(counts, 0, dtype=torch.int64) - counts
        return PackedLayout(sum(host_n), max(host_n, default=0), counts, base)
