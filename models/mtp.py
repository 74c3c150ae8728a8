"""The multi-token-prediction block (`mtp.0.*`) as a draft model for speculative decoding.

Spec (../shared/docs/architecture.md §4.12): for position t, given the main model's final streams
X_t (flushed, before `hc_head`, [hc, d]) and the next token id x_{t+1}:

    X0 = e_proj(RMSNorm_enorm(embed[x_{t+1}]))  (broadcast to the hc streams)
       + h_proj(RMSNorm_hnorm(X_t))              (per stream)
    X  = Block(X0)                               (mHC + sliding-window-only attention, non-hash MoE)
    logits(x_{t+2}) = head(RMSNorm_norm(hc_head_mtp(X)))

The block runs at position t (RoPE of the sliding-only layers, no YaRN) and keeps its own window
ring (one slot-scoped tensor, row = t % W, allocated by `allocate_mtp_state`). Chained drafting
(k > 1) feeds the block's own output streams X back as the next position's X_t with the drafted
token (DeepSeek-V3 / SGLang convention).
"""

from __future__ import annotations

import torch

from kernels.kv_format import get as get_kv_format

from .mhc import flush, hc_head
from .state import ForwardBatch


def mtp_state_shapes(cfg, kv_format: str = "bf16") -> dict[str, tuple[tuple[int, ...], bool]]:
    """name -> (row shape, packed) of the MTP block's slot-scoped state: its sliding-window ring."""
    ratios = cfg.mtp_compress_ratios or (0,)
    if ratios[0] != 0:
        raise NotImplementedError(f"an MTP block with compress ratio {ratios[0]} (V4's is sliding-only: 0)")
    fmt = get_kv_format(kv_format)
    return {"window": ((cfg.sliding_window, fmt.entry_width(cfg.head_dim, cfg.qk_rope_head_dim)), fmt.packed)}


def allocate_mtp_state(cfg, num_slots: int, dtype: torch.dtype, device, kv_format: str = "bf16"
                       ) -> dict[str, torch.Tensor]:
    """The MTP block's per-slot state (same slot ids as the main model's state)."""
    out = {}
    for name, (shape, packed) in mtp_state_shapes(cfg, kv_format).items():
        out[name] = torch.zeros((num_slots, *shape), dtype=torch.uint8 if packed else dtype, device=device)
    return out


def check_mtp(model) -> None:
    if not len(getattr(model, "mtp", ())):
        raise ValueError("speculative decoding (method 'mtp') needs the model built with include_mtp=True "
                         "and a checkpoint with num_nextn_predict_layers >= 1")


@torch.no_grad()
def mtp_forward(model, streams: torch.Tensor, next_ids: torch.Tensor, batch: ForwardBatch,
                mtp_state: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """One MTP pass over a flat batch of chunks (positions t, slots, chunk offsets in `batch`; its
    `input_ids` are the next tokens x_{t+1}, `logits_indices` the rows to draft from).

    streams [N, hc, d]: X_t of every row. -> (output streams [N, hc, d] (flushed, before hc_head),
    normed hidden [S, d] at batch.logits_indices for `model.compute_logits`)."""
    cfg = model.cfg
    blk = model.mtp[0]
    n, hc, d = streams.shape
    e = model.tp.embed(model.embed, next_ids, cfg.vocab_size)
    e = blk.e_proj(blk.enorm(e))  # [N, d]
    h = blk.h_proj(blk.hnorm(streams.reshape(n * hc, d).to(e.dtype))).view(n, hc, d)
    x = (h + e.unsqueeze(1)).contiguous()
    rope = model.rope_main  # sliding-only block: theta = rope_theta, no YaRN
    cos, sin = rope.cos_sin(batch.positions)
    x, pending = blk(x, batch, mtp_state, rope, cos, sin, pending=None, key_format=None)  # no indexer keys
    x = flush(x, pending)
    hidden = hc_head(x[batch.logits_indices], blk.hc_head_fn, blk.hc_head_base, blk.hc_head_scale, cfg,
                     blk.norm.weight)
    return x, hidden
