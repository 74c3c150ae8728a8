"""`AttnMeta`: the per-batch metadata every attention / indexer / compressor kernel consumes.

Built once per forward from the flat batch by `models.state.batch_metadata` (or by the CUDA-graph
static buffers, engine/cuda_graph.py); it lives here, with its readers, so kernels never import models.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


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
