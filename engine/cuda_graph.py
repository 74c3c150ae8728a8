"""CUDA-graph decode: the model forward + LM head of a pure-decode step, captured once per batch bucket.

A decode step of B sequences (every chunk one token that samples) runs as the replay of the graph of
the smallest bucket Bp >= B. The graph reads static device buffers only:

    stage   int64 [3*Bmax + Bmax*Wmax]   host -> device in ONE copy per step: token ids [Bp],
                                         positions [Bp], state slots [Bp], then the B x width block table
    tables  int32 [Bmax, Wmax]           AttnMeta.block_tables (rows [:B], columns [:width] refreshed)
    ids/pos int64, AttnMeta int32 views  filled from `stage` by the first (captured) kernels of the graph

Padding rows B..Bp-1 decode token 0 at position 0 in the cache manager's scratch slot (`pad_slot`,
one block `pad_block`): at position 0 they read nothing but their own token, close no compressed
entry, and write only the scratch slot's rings, so no real sequence's state is touched.

Host ints in AttnMeta are fixed per graph: `max_query_len` = 1 and `max_seq_len` = max_model_len (the
kernels size their grids from it and every program stops at its row's real length), so one graph per
batch bucket serves every context length.

Mixed and prefill steps stay eager: their token counts, chunk boundaries and per-chunk lengths vary
every step (a graph per shape would be unbounded), and their kernels are large enough that launch
overhead is a small share of the step. On CPU (or `capture=False`) the same static-buffer path runs
the eager forward, which is how the padding is tested without a GPU.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from models.state import AttnMeta, ForwardBatch

from .graph_buckets import BucketGraphs, batch_buckets, pinned_int64

log = logging.getLogger("v4serve.cuda_graph")

__all__ = ["DecodeGraphs", "batch_buckets", "is_decode_step"]


def is_decode_step(chunks, want_prompt: list[bool]) -> bool:
    """Every chunk is one token that samples, and no prompt logprobs are wanted."""
    return bool(chunks) and all(c.num_tokens == 1 and c.sample for c in chunks) and not any(want_prompt)


@dataclass
class _Bucket:
    size: int  # Bp
    batch: ForwardBatch  # static views of the shared buffers (meta set: no batch_metadata rebuild)
    graphs: dict = field(default_factory=dict)  # "decode" -> CUDAGraph once captured
    out: dict = field(default_factory=dict)  # "logits": [Bp, V] fp32 output of the last run/replay

    @property
    def graph(self):
        return self.graphs.get("decode")

    @property
    def logits(self) -> torch.Tensor | None:
        return self.out.get("logits")


class DecodeGraphs(BucketGraphs):
    """Static buffers + one graph per batch bucket for the pure-decode steps of one model/cache."""

    graph_names = ("decode",)

    def __init__(self, model, kv, device: torch.device, *, max_num_seqs: int, max_model_len: int, valid_vocab: int,
                 capture: bool | None = None, buckets: list[int] | None = None):
        if kv.pad_slot is None:
            raise ValueError("CUDA-graph decode needs the cache manager's padding row (KVCacheManager(pad_row=True))")
        self.model, self.kv = model, kv
        self._init_buckets(device, max_num_seqs, capture, buckets)
        self.max_model_len = max_model_len
        self.vocab = model.cfg.vocab_size
        self.valid_vocab = valid_vocab
        bmax = self.max_bs
        self.width = max(1, -(-(max_model_len + 1) // kv.block_size))  # block-table columns
        i64 = dict(dtype=torch.int64, device=device)
        i32 = dict(dtype=torch.int32, device=device)
        self.stage = torch.zeros(4 * bmax + bmax * self.width, **i64)  # + device-token rows
        self.ids = torch.zeros(bmax, **i64)
        self.pos = torch.zeros(bmax, **i64)
        self.slots32 = torch.full((bmax,), kv.pad_slot, **i32)
        self.pos32 = torch.zeros(bmax, **i32)
        self.ctx32 = torch.zeros(bmax, **i32)
        self.tables = torch.full((bmax, self.width), -1, **i32)
        self.tables[:, 0] = kv.pad_block
        self.query_start = torch.arange(bmax + 1, **i32)
        self.tok_seq = torch.arange(bmax, **i32)
        self.rows = torch.arange(bmax, **i64)
        self.buckets = {b: self._make_bucket(b) for b in self.sizes}

    # ---- buffers -----------------------------------------------------------------------------
    def _make_bucket(self, bp: int) -> _Bucket:
        qs_host, ctx_host = list(range(bp + 1)), [0] * bp
        meta = AttnMeta(query_start=self.query_start[:bp + 1], context_lens=self.ctx32[:bp], slot_ids=self.slots32[:bp],
                        block_tables=self.tables[:bp], tok_seq=self.tok_seq[:bp], positions=self.pos32[:bp],
                        query_start_host=qs_host, context_lens_host=ctx_host, max_query_len=1,
                        max_seq_len=self.max_model_len)
        batch = ForwardBatch(input_ids=self.ids[:bp], positions=self.pos[:bp], slot_ids=self.slots32[:bp],
                             block_tables=self.tables[:bp], logits_indices=self.rows[:bp], query_start=qs_host,
                             context_lens=ctx_host, meta=meta)
        return _Bucket(bp, batch)

    def _fill(self, bp: int, ids: list[int], positions: list[int], slots: list[int], tables: torch.Tensor,
              extra: list[int] = ()) -> torch.Tensor:
        """ONE host -> device copy of the step's inputs (padding rows: token 0, position 0, scratch slot),
        from pinned memory on CUDA (the caching host allocator keeps the buffer until the copy ran, so
        the copy never waits for the step in flight). `extra` ints travel along: -> their device view."""
        n = len(ids)
        b, w = tables.shape
        size = 3 * bp + b * w
        host_t = pinned_int64(size + len(extra), self.device)
        host = host_t.numpy()
        host[0:n], host[n:bp] = ids, 0
        host[bp:bp + n], host[bp + n:2 * bp] = positions, 0
        host[2 * bp:2 * bp + n], host[2 * bp + n:3 * bp] = slots, self.kv.pad_slot
        host[3 * bp:size] = tables.reshape(-1).numpy()
        host[size:] = extra
        self.stage[:host_t.numel()].copy_(host_t, non_blocking=True)
        if b:  # block-table rows of the real sequences; columns past `w` are never read for them
            self.tables[:b, :w].copy_(self.stage[3 * bp:size].view(b, w))
        bk = self.buckets[bp]  # host mirrors: only the torch twins (CPU, capture=False) read them
        bk.batch.context_lens[:] = list(positions) + [0] * (bp - n)
        return self.stage[size:size + len(extra)]

    def _fill_idle(self, bp: int, gen: torch.Generator | None = None) -> None:
        ids = [] if gen is None else torch.randint(0, self.valid_vocab, (bp,), generator=gen).tolist()
        n = len(ids)
        tables = torch.full((n, 1), self.kv.pad_block, dtype=torch.int64)
        self._fill(bp, ids, [0] * n, [self.kv.pad_slot] * n, tables)

    def _sections(self, bk: _Bucket, name: str, out: dict):
        """What the graph runs: unpack the stage, forward, LM head; -> out["logits"] [Bp, V] fp32."""
        bp = bk.size

        def stage():
            self.ids[:bp].copy_(self.stage[0:bp])
            self.pos[:bp].copy_(self.stage[bp:2 * bp])
            self.pos32[:bp].copy_(self.stage[bp:2 * bp])
            self.ctx32[:bp].copy_(self.stage[bp:2 * bp])
            self.slots32[:bp].copy_(self.stage[2 * bp:3 * bp])

        def forward():
            out["hidden"] = self.model(bk.batch, self.kv.state)

        def head():
            logits = self.model.compute_logits(out["hidden"])
            if self.valid_vocab < self.vocab:
                logits[:, self.valid_vocab:] = float("-inf")
            out["logits"] = logits

        return [("stage", stage), ("forward", forward), ("head", head)]

    # ---- capture / run -----------------------------------------------------------------------
    def capture(self) -> float:
        """Warm up and capture every bucket, largest first, into one memory pool (graph_buckets.py)."""
        if not self.capture_enabled:
            return 0.0
        super().capture()
        log.info("captured %d decode CUDA graphs (batch buckets %s, context bound %d) in %.1fs",
                 len(self.sizes), self.sizes, self.max_model_len, self.capture_s)
        return self.capture_s

    def run(self, ids: list[int], positions: list[int], slots: list[int], tables: torch.Tensor,
            device_tokens=None) -> torch.Tensor:
        """One decode step of n = len(ids) <= max bucket rows -> logits [n, V] fp32 (a view of the graph's
        output buffer: valid until the next run). `device_tokens` (engine.async_step.DeviceTokens, async
        scheduling): row chunk_idx[k]'s id is token_ids[k], on the device (its `ids` entry is a placeholder)."""
        n = len(ids)
        bp = self.bucket_for(n)
        if bp is None:
            raise ValueError(f"decode batch {n} exceeds the largest CUDA-graph bucket {self.max_bs}")
        bk = self.buckets[bp]
        extra = device_tokens.chunk_idx if device_tokens is not None else ()
        rows = self._fill(bp, ids, positions, slots, tables, extra)
        if device_tokens is not None:  # stage[0:bp] holds the ids; the graph copies them in
            self.stage[:bp].index_copy_(0, rows, device_tokens.token_ids)
        self._run(bk, "decode")
        return bk.out["logits"][:n]
