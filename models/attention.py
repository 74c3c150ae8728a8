"""V4 attention for one layer over a flat batch: shared K=V head, sliding window, and (CSA/HCA)
compressed entries; CSA picks its compressed entries per query with the lightning indexer.

Per sequence b with chunk [start, start+n):
  window keys   = ring positions [max(0, start-W+1), start) ++ this chunk's kv
  compressed    = entries 0 .. (start+n)//m - 1 gathered through the block table
  query t sees  window positions (t-W, t] and compressed entries s < (t+1)//m
                (CSA: only the indexer's top-k among those)
The per-sequence loop lives here on the torch path; the Triton kernels replace it later.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .compressor import Compressor
from .config import CSA_RATIO, ModelConfig
from .layers import Linear, RMSNorm, Rope, rms
from .state import ForwardBatch


class Indexer(nn.Module):
    """Lightning indexer (CSA layers). Official names under `attn.indexer.`."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.head_dim, self.topk = cfg.index_n_heads, cfg.index_head_dim, cfg.index_topk
        self.wq_b = Linear(cfg.q_lora_rank, self.n_heads * self.head_dim)
        self.weights_proj = Linear(cfg.hidden_size, self.n_heads)
        self.compressor = Compressor(cfg.hidden_size, self.head_dim, CSA_RATIO, True, cfg.rms_norm_eps)
        self.weight_scale = self.head_dim ** -0.5 * self.n_heads ** -0.5

    def queries(self, q_lat, x, cos, sin, rope: Rope) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (q [N, HI, cI] fp32 with RoPE, head weights [N, HI] fp32 incl. both scales)."""
        q = self.wq_b(q_lat).view(-1, self.n_heads, self.head_dim)
        q = rope.apply(q, cos, sin).float()
        w = self.weights_proj(x).float() * self.weight_scale
        return q, w

    def select(self, q: torch.Tensor, w: torch.Tensor, keys: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Top-k eligible entries per query -> bool mask [n, E] (entries s < (t+1)//4)."""
        n, e = q.shape[0], keys.shape[0]
        mask = torch.zeros(n, e, dtype=torch.bool, device=q.device)
        if e == 0:
            return mask
        scores = torch.einsum("nhc,ec->nhe", q, keys.float()).relu_()
        scores = (scores * w.unsqueeze(-1)).sum(1)  # [n, E]
        limit = (positions + 1) // CSA_RATIO  # [n] eligible entries per query
        eligible = torch.arange(e, device=q.device)[None, :] < limit[:, None]
        scores = scores.masked_fill(~eligible, float("-inf"))
        k = min(self.topk, e)
        idx = scores.topk(k, dim=-1).indices
        picked = torch.zeros_like(mask).scatter_(1, idx, True)
        return picked & eligible


class Attention(nn.Module):
    """Official names under `layers.{L}.attn.`: wq_a, q_norm, wq_b, wkv, kv_norm, wo_a, wo_b,
    attn_sink, compressor.*, indexer.*"""

    def __init__(self, cfg: ModelConfig, ratio: int):
        super().__init__()
        self.cfg = cfg
        self.ratio = ratio  # 0 sliding-only, 4 CSA, other m HCA
        h, c, d = cfg.num_attention_heads, cfg.head_dim, cfg.hidden_size
        self.n_heads, self.head_dim, self.window = h, c, cfg.sliding_window
        self.wq_a = Linear(d, cfg.q_lora_rank)
        self.q_norm = RMSNorm(cfg.q_lora_rank, cfg.rms_norm_eps)
        self.wq_b = Linear(cfg.q_lora_rank, h * c)
        self.wkv = Linear(d, c)
        self.kv_norm = RMSNorm(c, cfg.rms_norm_eps)
        self.wo_a = Linear(h * c // cfg.o_groups, cfg.o_groups * cfg.o_lora_rank)
        self.wo_b = Linear(cfg.o_groups * cfg.o_lora_rank, d)
        self.attn_sink = nn.Parameter(torch.zeros(h))
        self.compressor = (
            Compressor(d, c, self.ratio, self.ratio == CSA_RATIO, cfg.rms_norm_eps) if self.ratio else None
        )
        self.indexer = Indexer(cfg) if self.ratio == CSA_RATIO else None

    def forward(
        self, x: torch.Tensor, batch: ForwardBatch, state: dict[str, torch.Tensor], rope: Rope,
        cos: torch.Tensor, sin: torch.Tensor,
    ) -> torch.Tensor:
        """x [N, d] normalized input -> [N, d]. Reads and updates this layer's `state` tensors."""
        cfg = self.cfg
        n_tok = x.shape[0]
        q_lat = self.q_norm(self.wq_a(x))
        q = rms(self.wq_b(q_lat).view(n_tok, self.n_heads, self.head_dim), cfg.rms_norm_eps)
        q = rope.apply(q, cos, sin)
        kv = rope.apply(self.kv_norm(self.wkv(x)), cos, sin)  # [N, c]
        comp = idx_q = idx_w = None
        if self.compressor is not None:
            comp = self.compressor.project(x, batch.positions)
            if self.indexer is not None:
                idx_proj = self.indexer.compressor.project(x, batch.positions)
                idx_q, idx_w = self.indexer.queries(q_lat, x, cos, sin, rope)
        out = torch.empty_like(q)
        for b in range(batch.num_seqs):
            s0, s1 = batch.query_start[b], batch.query_start[b + 1]
            if s1 == s0:
                continue
            start = batch.context_lens[b]
            slot = int(batch.slot_ids[b])
            table = batch.block_tables[b]
            pos = batch.positions[s0:s1]
            keys, key_pos = self._window_keys(kv[s0:s1], start, state["window"][slot])
            allowed = (key_pos[None, :] <= pos[:, None]) & (key_pos[None, :] > pos[:, None] - self.window)
            if self.compressor is not None:
                ckeys = self._compress(comp, s0, s1, start, slot, table, state, "kv_tail", "score_tail",
                                       "compressed", self.compressor, rope)
                if self.indexer is not None:
                    ikeys = self._compress(idx_proj, s0, s1, start, slot, table, state, "idx_kv_tail",
                                           "idx_score_tail", "index_keys", self.indexer.compressor, rope)
                    cmask = self.indexer.select(idx_q[s0:s1], idx_w[s0:s1], ikeys, pos)
                else:
                    limit = (pos + 1) // self.ratio
                    cmask = torch.arange(ckeys.shape[0], device=x.device)[None, :] < limit[:, None]
                keys = torch.cat((keys, ckeys.to(keys.dtype)), 0)
                allowed = torch.cat((allowed, cmask), 1)
            out[s0:s1] = self._attend(q[s0:s1], keys, allowed)
        out = rope.apply(out, cos, sin, inverse=True)
        return self._project_out(out)

    # ---- pieces ------------------------------------------------------------------------------
    def _window_keys(self, kv_chunk, start, ring) -> tuple[torch.Tensor, torch.Tensor]:
        """Ring entries before the chunk ++ the chunk; then store the chunk's tail in the ring."""
        n, w, dev = kv_chunk.shape[0], self.window, kv_chunk.device
        lo = max(0, start - w + 1)
        if lo < start:
            prev_pos = torch.arange(lo, start, device=dev)
            keys = torch.cat((ring[prev_pos % w], kv_chunk.to(ring.dtype)), 0)
            key_pos = torch.arange(lo, start + n, device=dev)
        else:
            keys = kv_chunk.to(ring.dtype)
            key_pos = torch.arange(start, start + n, device=dev)
        keep = min(n, w)
        ring[torch.arange(start + n - keep, start + n, device=dev) % w] = kv_chunk[n - keep:].to(ring.dtype)
        return keys, key_pos

    def _compress(self, proj, s0, s1, start, slot, table, state, kv_name, sc_name, pool_name, comp, rope):
        """Run the compressor on this chunk, store new entries, return all entries so far [E, c]."""
        kv, score = proj
        entries, first = comp.step(kv[s0:s1], score[s0:s1], start, state[kv_name][slot], state[sc_name][slot], rope)
        pool = state[pool_name]
        per_block = pool.shape[1]
        n_total = (start + (s1 - s0)) // comp.ratio
        if entries.shape[0]:
            e = torch.arange(first, first + entries.shape[0], device=pool.device)
            pool[table[e // per_block], e % per_block] = entries.to(pool.dtype)
        e_all = torch.arange(n_total, device=pool.device)
        return pool[table[e_all // per_block], e_all % per_block]

    def _attend(self, q: torch.Tensor, keys: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """q [n, H, c], keys [L, c] (K = V), allowed [n, L] -> [n, H, c]; per-head sink in the softmax."""
        s = torch.einsum("nhc,lc->nhl", q.float(), keys.float()) * self.cfg.softmax_scale
        s = s.masked_fill(~allowed[:, None, :], float("-inf"))
        sink = self.attn_sink.float()[None, :, None].expand(s.shape[0], -1, 1)
        p = torch.softmax(torch.cat((s, sink), -1), dim=-1)[..., :-1]
        return torch.einsum("nhl,lc->nhc", p, keys.float()).to(q.dtype)

    def _project_out(self, o: torch.Tensor) -> torch.Tensor:
        """Grouped output projection: each group of H/g heads -> o_lora_rank, then wo_b."""
        g, r = self.cfg.o_groups, self.cfg.o_lora_rank
        n = o.shape[0]
        og = o.reshape(n, g, -1)  # [N, g, H/g*c]
        w = self.wo_a.weight.view(g, r, -1)  # [g, r, H/g*c]
        z = torch.einsum("ngk,grk->ngr", og, w)
        return self.wo_b(z.reshape(n, g * r))
