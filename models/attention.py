"""V4 attention for one layer over a flat batch: shared K=V head, sliding window, and (CSA/HCA)
compressed entries; CSA picks its compressed entries per query with the lightning indexer.

Per sequence b with chunk [start, start+n):
  window keys   = ring positions [max(0, start-W+1), start) ++ this chunk's kv
  compressed    = entries 0 .. (start+n)//m - 1 gathered through the block table
  query t sees  window positions (t-W, t] and compressed entries s < (t+1)//m
                (CSA: only the indexer's top-k among those)
The layer calls only the public ops of `kernels` (kv_entries, compress_and_store, indexer_topk,
sparse_attention, window_store): Triton on CUDA, the pure-torch twins in kernels/ref on CPU.
"""

from __future__ import annotations

import torch
from torch import nn

import kernels as kops

from .compressor import Compressor
from .config import CSA_RATIO, ModelConfig
from .layers import Linear, RMSNorm, Rope
from .parallel import ParallelContext, local_config
from .state import AttnMeta, ForwardBatch, batch_metadata


class Indexer(nn.Module):
    """Lightning indexer (CSA layers). Official names under `attn.indexer.`."""

    def __init__(self, cfg: ModelConfig, tp: ParallelContext | None = None):
        """cfg: the model's (global) config; a tensor-parallel rank builds its share of the heads."""
        super().__init__()
        self.tp = tp = tp or ParallelContext()  # tensor parallel: head-partial scores all-reduced
        self.weight_scale = cfg.index_head_dim ** -0.5 * cfg.index_n_heads ** -0.5  # global head count
        cfg = local_config(cfg, tp.world_size)
        self.n_heads, self.head_dim, self.topk = cfg.index_n_heads, cfg.index_head_dim, cfg.index_topk
        self.wq_b = Linear(cfg.q_lora_rank, self.n_heads * self.head_dim)
        self.weights_proj = Linear(cfg.hidden_size, self.n_heads)
        self.compressor = Compressor(cfg.hidden_size, self.head_dim, CSA_RATIO, True, cfg.rms_norm_eps)

    def queries(self, q_lat, q_norm: RMSNorm, x, cos, sin, key_format: str) -> tuple[torch.Tensor, torch.Tensor]:
        """q_lat: wq_a(x) before the attention's q_norm (applied here, in the GEMM's prologue on CUDA)
        -> (q [N, HI, cI] with RoPE in the activation dtype, rotated by the Hadamard matrix for MXFP4 keys
        (`key_format` "fp4", stored rotated), head weights [N, HI] fp32 incl. both scales)."""
        q = kops.norm_linear(q_lat, q_norm.weight, q_norm.eps, self.wq_b.quant_weight())
        q = q.view(-1, self.n_heads, self.head_dim)
        q = kops.norm_rope(q, None, None, cos, sin, rotate=key_format == "fp4")  # one kernel on CUDA
        w = kops.linear_scaled(x, self.weights_proj.quant_weight(), self.weight_scale)
        return q, w

    def select(self, q: torch.Tensor, w: torch.Tensor, keys: torch.Tensor, meta: AttnMeta,
               key_format: str) -> torch.Tensor:
        """Top-k eligible entries per query -> [N, topk] int32 entry indices, -1 = none."""
        if self.tp.enabled:
            return self.tp.indexer_topk(q, w, keys, meta, self.topk, ratio=CSA_RATIO, key_format=key_format)
        return kops.indexer_topk(q, w, keys, meta, self.topk, ratio=CSA_RATIO, key_format=key_format)


class Attention(nn.Module):
    """Official names under `layers.{L}.attn.`: wq_a, q_norm, wq_b, wkv, kv_norm, wo_a, wo_b,
    attn_sink, compressor.*, indexer.*"""

    def __init__(self, cfg: ModelConfig, ratio: int, tp: ParallelContext | None = None):
        """cfg: the model's (global) config; a tensor-parallel rank builds its heads (models/parallel.py)."""
        super().__init__()
        tp = tp or ParallelContext()
        global_cfg, cfg = cfg, local_config(cfg, tp.world_size)
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
        self.indexer = Indexer(global_cfg, tp) if self.ratio == CSA_RATIO else None

    def forward(
        self, x: torch.Tensor, batch: ForwardBatch, state: dict[str, torch.Tensor], rope: Rope,
        cos: torch.Tensor, sin: torch.Tensor, *, key_format: str | None,
    ) -> torch.Tensor:
        """x [N, d] normalized input -> [N, d]. Reads and updates this layer's `state` tensors.
        `key_format`: the state's indexer-key format (KVFormat.index_keys); always passed, None only
        for a state without indexer keys (the MTP block's), which a CSA layer refuses."""
        cfg = self.cfg
        meta = batch_metadata(batch)
        n_tok = x.shape[0]
        q_lat = self.wq_a(x)  # q_norm runs as the prologue of the wq_b GEMMs (kops.norm_linear)
        q = kops.norm_linear(q_lat, self.q_norm.weight, self.q_norm.eps, self.wq_b.quant_weight())
        # per-head weightless rms + rope, and kv_norm + rope: one kernel each on CUDA
        q = kops.norm_rope(q.view(n_tok, self.n_heads, self.head_dim), None, cfg.rms_norm_eps, cos, sin)
        ring = state["window"]  # kv_norm + rope of K=V [N, c], in the ring's format (FP8: packed in the kernel)
        kv_cur = kops.kv_entries(self.wkv(x), self.kv_norm.weight, self.kv_norm.eps, cos, sin, ring,
                                 cfg.qk_rope_head_dim)
        pool = topk = None
        if self.compressor is not None:
            pool = state["compressed"]
            ckv, csc = self.compressor.project(x, batch.positions)
            self.compressor.store(ckv, csc, state["kv_tail"], state["score_tail"], pool, meta, rope)
            if self.indexer is not None:
                if key_format is None:
                    raise ValueError("a CSA layer needs the state's indexer-key format (key_format)")
                ikv, isc = self.indexer.compressor.project(x, batch.positions)
                self.indexer.compressor.store(ikv, isc, state["idx_kv_tail"], state["idx_score_tail"],
                                              state["index_keys"], meta, rope, index_keys=key_format)
                idx_q, idx_w = self.indexer.queries(q_lat, self.q_norm, x, cos, sin, key_format)
                topk = self.indexer.select(idx_q, idx_w, state["index_keys"], meta, key_format)
        out = kops.sparse_attention(q, kv_cur, ring, pool, topk, meta, self.attn_sink, ratio=self.ratio,
                                    scale=cfg.softmax_scale, rope_dim=cfg.qk_rope_head_dim, out_rope=(cos, sin))
        kops.window_store(kv_cur, ring, meta)
        return self._project_out(out)

    def _project_out(self, o: torch.Tensor) -> torch.Tensor:
        """Grouped output projection: each group of H/g heads -> o_lora_rank (one launch; resident FP8:
        group j = weight rows [j*r, (j+1)*r), whole 128-blocks), then wo_b."""
        g, r = self.cfg.o_groups, self.cfg.o_lora_rank
        n = o.shape[0]
        z = kops.grouped_linear(o.reshape(n, g, -1), self.wo_a.quant_weight(), g)  # [N, g, r]
        return self.wo_b(z.reshape(n, g * r).to(o.dtype))
