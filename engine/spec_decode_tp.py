"""Speculative decoding under tensor parallelism: the worker side (ranks >= 1).

Rank 0's SpecDecoder drives every speculative operation; each one that runs model code (and therefore
collectives) or touches per-rank state is mirrored on the workers by a message sent first
(engine/distributed/worker.py dispatches them here):

    ("step", host + spec_save_items/spec_streams)  row log of the draft positions, verify forward, streams kept
    ("spec_restore", reject_from)            put back the rejected positions' rows
    ("spec_mtp", host)                       one MTP pass: catch-up (rows `flat` of the kept streams)
                                             or chained (the previous pass's output rows); `save_items`:
                                             log the MTP ring rows the chain will write first
    ("spec_mtp_restore", n)                  put back the chain's MTP ring rows

Every rank keeps a replica of the MTP block's window ring (the K=V head is replicated), so the
rows each rank saves and restores are the same as rank 0's.
"""

from __future__ import annotations

import numpy as np
import torch

from kvcache.spec_rollback import RowLog
from models.mtp import allocate_mtp_state, mtp_forward


class SpecWorker:
    def __init__(self) -> None:
        self.mtp_state: dict[str, torch.Tensor] | None = None
        self.log = RowLog()
        self.mtp_log = RowLog()
        self.streams: torch.Tensor | None = None  # the last verify forward's streams [N, hc, d]
        self.h: torch.Tensor | None = None  # the last MTP pass's output rows (the chain's input)

    def _ensure(self, model, state) -> None:
        if self.mtp_state is None or self.mtp_state["window"].shape[0] != state.num_slots:
            self.mtp_state = allocate_mtp_state(model.cfg, state.num_slots, model.embed.weight.dtype,
                                                model.embed.weight.device, state.kv_format)

    @torch.inference_mode()
    def step(self, host: dict, batch, model, state, snaps, apply_state_ops) -> None:
        self._ensure(model, state)
        self.log = RowLog()
        self.log.save_positions(state.layers, list(model.cfg.compress_ratios), state.block_size,
                                [tuple(it) for it in host.get("spec_save_items", ())])

        def forward():
            hidden, self.streams = model(batch, state, return_streams=True)
            if batch.logits_indices.numel():
                model.compute_logits(hidden)  # joins the vocabulary gather to rank 0

        apply_state_ops(state, snaps, host.get("restores", ()), host.get("saves", ()), forward)

    @torch.inference_mode()
    def handle(self, msg, model, state, device, batch_from_host) -> None:
        kind = msg[0]
        if kind == "spec_restore":
            self.log.restore([int(x) for x in msg[1]])
        elif kind == "spec_mtp":
            host = msg[1]
            self._ensure(model, state)
            batch = batch_from_host(host, device)
            zero = np.asarray(host.get("zero_rows", ()), dtype=np.int64).reshape(-1, 2)
            if len(zero):  # window rows of a chunk the ring did not follow (prefix-cache hit)
                z = torch.from_numpy(zero).to(device)
                self.mtp_state["window"][z[:, 0], z[:, 1]] = 0
            if host.get("chain"):
                x = self.h
            else:
                flat = torch.from_numpy(np.asarray(host["flat"], dtype=np.int64)).to(device)
                x = self.streams.index_select(0, flat)
            if host.get("save_items") is not None:
                self.mtp_log = RowLog()
                self.mtp_log.save_positions([self.mtp_state], [0], state.block_size,
                                            [tuple(it) for it in host["save_items"]])
            out, hidden = mtp_forward(model, x, batch.input_ids, batch, self.mtp_state)
            if batch.logits_indices.numel():
                model.compute_logits(hidden)
            self.h = out[batch.logits_indices]
        elif kind == "spec_mtp_restore":
            self.mtp_log.restore([0] * int(msg[1]))
        else:
            raise RuntimeError(f"unknown speculative command {kind!r}")
