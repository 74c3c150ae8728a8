"""Tensor + expert parallelism of the model over one torch.distributed process group (issue 7).

`ParallelContext(rank, world_size, group)` is what the model modules hold; with world_size 1 every
collective is a no-op and the model is exactly the single-device model. Sharding (architecture.md
§4.15, as the reference implementation does it):

  * attention: query heads split in contiguous ranges (`wq_b` rows, `attn_sink`), `wo_a` by output
    groups (groups are contiguous head ranges, so rank r's groups hold rank r's heads), `wo_b`
    row-parallel (its input columns) -> the block all-reduces the attention output;
  * indexer: `wq_b` and `weights_proj` column-parallel over indexer heads; every rank scores its heads,
    the head-partial index scores are all-reduced before top-k, so all ranks select the same entries;
  * MoE: the router is replicated; routed experts are partitioned (expert parallelism: rank r owns
    experts [r*E/N, (r+1)*E/N)); the shared expert runs on rank 0 only; the block all-reduces the output;
  * embedding / LM head: vocabulary-parallel (masked lookup + all-reduce / logits gathered on rank 0),
    the vocabulary padded to a multiple of N when it does not divide;
  * mHC, norms, compressors, window and compressed KV (single KV head): replicated.

Modules take the context in their constructors (no-op by default) and build rank r's share:
`Attention` / `Indexer` their heads from `local_config` (heads, o_groups, index heads divided by N),
`MoE` its experts and an `ExpertParallel`; nothing is patched onto a built module.
`shard_checkpoint_tensor` says which slice of every checkpoint tensor rank r reads
(models/sharded_loader.py).
"""

from __future__ import annotations

import dataclasses
import datetime
import re
from dataclasses import dataclass

import torch

from .config import ModelConfig


class ParallelConfigError(ValueError):
    """The model cannot be split over the requested number of ranks."""


def check_divisibility(cfg: ModelConfig, world_size: int) -> None:
    """Raise ParallelConfigError naming every dimension `world_size` does not divide."""
    if world_size < 1:
        raise ParallelConfigError(f"tensor_parallel_size must be >= 1, got {world_size}")
    if world_size == 1:
        return
    dims = [("num_attention_heads", cfg.num_attention_heads), ("o_groups", cfg.o_groups),
            ("index_n_heads", cfg.index_n_heads), ("n_routed_experts", cfg.n_routed_experts)]
    bad = [f"{name}={v}" for name, v in dims if v % world_size]
    if bad:
        raise ParallelConfigError(
            f"tensor_parallel_size={world_size} does not divide " + ", ".join(bad)
            + f" (heads, output groups, indexer heads and routed experts are split evenly across ranks; "
            f"choose a size that divides all of num_attention_heads={cfg.num_attention_heads}, "
            f"o_groups={cfg.o_groups}, index_n_heads={cfg.index_n_heads}, "
            f"n_routed_experts={cfg.n_routed_experts})")


def local_config(cfg: ModelConfig, world_size: int) -> ModelConfig:
    """The config one rank's attention modules are built with (heads / groups / index heads / N)."""
    if world_size == 1:
        return cfg
    check_divisibility(cfg, world_size)
    return dataclasses.replace(cfg, num_attention_heads=cfg.num_attention_heads // world_size,
                               o_groups=cfg.o_groups // world_size,
                               index_n_heads=cfg.index_n_heads // world_size)


@dataclass
class ParallelContext:
    """One rank of a tensor-parallel group. `group`: a torch ProcessGroup (gloo or NCCL) or None for
    world_size 1 (and for loading, which needs no collectives: attach the group later)."""

    rank: int = 0
    world_size: int = 1
    group: object | None = None

    def __post_init__(self):
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} outside world of {self.world_size}")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    # ---- ranges --------------------------------------------------------------------------------
    def split(self, n: int) -> tuple[int, int]:
        """This rank's contiguous range of n items (n divisible by world_size)."""
        per = n // self.world_size
        return self.rank * per, (self.rank + 1) * per

    def vocab_range(self, vocab: int) -> tuple[int, int, int]:
        """(first id, number of real rows, padded rows per rank) of this rank's vocabulary shard."""
        per = -(-vocab // self.world_size)
        v0 = min(self.rank * per, vocab)
        return v0, min(vocab, v0 + per) - v0, per

    # ---- collectives ---------------------------------------------------------------------------
    def _need_group(self):
        if self.group is None:
            raise RuntimeError("ParallelContext has no process group attached (world_size > 1)")
        return self.group

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        """Sum over ranks (in place when possible); identity for world_size 1."""
        if self.world_size == 1:
            return t
        g = self._need_group()
        buf = t if (t.is_contiguous() and not (t.device.type == "cpu" and t.dtype in (torch.bfloat16, torch.float16))) \
            else t.float().contiguous()
        g.allreduce([buf]).wait()
        if buf is not t:
            t.copy_(buf.to(t.dtype))
        return t

    def gather_last_dim(self, t: torch.Tensor) -> torch.Tensor | None:
        """Concatenate every rank's [.., k] along the last dim on rank 0 (None on the other ranks)."""
        if self.world_size == 1:
            return t
        g = self._need_group()
        t = t.contiguous()
        if t.is_cuda:  # NCCL gather is point-to-point heavy: all-gather is the well-trodden path
            outs = [torch.empty_like(t) for _ in range(self.world_size)]
            g.allgather([outs], [t]).wait()
            return torch.cat(outs, dim=-1) if self.rank == 0 else None
        opts = torch.distributed.GatherOptions()
        opts.rootRank = 0
        if self.rank == 0:
            outs = [torch.empty_like(t) for _ in range(self.world_size)]
            g.gather([outs], [t], opts).wait()
            return torch.cat(outs, dim=-1)
        g.gather([], [t], opts).wait()
        return None

    # ---- vocabulary-parallel embedding / head ---------------------------------------------------
    def embed(self, embedding: torch.nn.Embedding, ids: torch.Tensor, vocab: int) -> torch.Tensor:
        if self.world_size == 1:
            return embedding(ids)
        v0, _, per = self.vocab_range(vocab)
        local = ids - v0
        outside = (local < 0) | (local >= per)
        x = embedding(local.masked_fill(outside, 0))
        x = x.masked_fill(outside.unsqueeze(-1), 0)
        return self.all_reduce(x)

    def gather_logits(self, local_logits: torch.Tensor, vocab: int) -> torch.Tensor | None:
        """[S, V/N] per rank -> [S, V] on rank 0 (padding columns dropped); None elsewhere."""
        if self.world_size == 1:
            return local_logits
        full = self.gather_last_dim(local_logits)
        return None if full is None else full[:, :vocab]

    # ---- indexer: head-partial scores all-reduced before top-k -----------------------------------
    def indexer_topk(self, q, w, keys, meta, topk: int, *, ratio: int = 4, key_format: str) -> torch.Tensor:
        """Same contract as kernels.indexer_topk, for q/w holding this rank's indexer heads only:
        I[t, e] = sum over ALL heads = all-reduce of the local-head partial sums, per score tile of the kernels'
        own bounded tiling (no [tokens, heads, entries] tensor at long context); then top-k."""
        import kernels as kops

        return kops.indexer_topk(q, w, keys, meta, topk, ratio=ratio, key_format=key_format,
                                 reduce_scores=self.all_reduce if self.world_size > 1 else None)


class ExpertParallel:
    """Routed experts [e0, e1) live on this rank (stacks indexed e - e0); `moe_experts` has the
    contract of kernels.moe_experts for GLOBAL expert ids and returns this rank's partial sum."""

    def __init__(self, e0: int, e1: int):
        self.e0, self.e1 = e0, e1

    def moe_experts(self, x, w1, w3, w2, weights, ids, limit: float) -> torch.Tensor:
        import kernels

        n, k = ids.shape
        flat = ids.reshape(-1).long()
        mine = ((flat >= self.e0) & (flat < self.e1)).nonzero().squeeze(1)
        out = torch.zeros(n, x.shape[1], dtype=torch.float32, device=x.device)
        if mine.numel() == 0:
            return out
        tok = mine // k
        y = kernels.moe_experts(x.index_select(0, tok), w1, w3, w2, weights.reshape(-1)[mine].unsqueeze(1),
                                (flat[mine] - self.e0).to(ids.dtype).unsqueeze(1), limit)
        return out.index_add_(0, tok, y)


# ---- which slice of a checkpoint tensor each rank reads ----------------------------------------
_BLOCK = r"^((?:layers|mtp)\.\d+\.)"
_RULES = [  # (pattern, kind)
    (re.compile(_BLOCK + r"attn\.wq_b\.(weight|scale)$"), "heads_rows"),
    (re.compile(_BLOCK + r"attn\.attn_sink$"), "heads"),
    (re.compile(_BLOCK + r"attn\.wo_a\.(weight|scale)$"), "groups_rows"),
    (re.compile(_BLOCK + r"attn\.wo_b\.(weight|scale)$"), "groups_cols"),
    (re.compile(_BLOCK + r"attn\.indexer\.wq_b\.(weight|scale)$"), "iheads_rows"),
    (re.compile(_BLOCK + r"attn\.indexer\.weights_proj\.weight$"), "iheads"),
    (re.compile(_BLOCK + r"ffn\.shared_experts\."), "rank0"),
    (re.compile(r"^(embed|head)\.weight$"), "vocab"),
]
_EXPERT = re.compile(_BLOCK + r"ffn\.experts\.(\d+)\.(.*)$")


@dataclass(frozen=True)
class TensorShard:
    """How rank r reads one checkpoint tensor (logical [out, in] coordinates for linears).

    action: "full" | "skip" | "slice"; dim/start/end: the slice; pad_to: rows after zero padding
    (vocabulary); rename: the name the model knows it by (local expert index)."""

    action: str
    dim: int = 0
    start: int = 0
    end: int = 0
    pad_to: int | None = None
    rename: str | None = None


def shard_checkpoint_tensor(name: str, cfg: ModelConfig, ctx: ParallelContext) -> TensorShard:
    """This rank's part of checkpoint tensor `name` (a weight or a non-scale tensor)."""
    if ctx.world_size == 1:
        return TensorShard("full")
    m = _EXPERT.match(name)
    if m:
        e0, e1 = ctx.split(cfg.n_routed_experts)
        e = int(m.group(2))
        if not e0 <= e < e1:
            return TensorShard("skip")
        return TensorShard("full", rename=f"{m.group(1)}ffn.experts.{e - e0}.{m.group(3)}")
    for pat, kind in _RULES:
        if not pat.match(name):
            continue
        if kind == "rank0":
            return TensorShard("full" if ctx.rank == 0 else "skip")
        if kind == "vocab":
            v0, n, per = ctx.vocab_range(cfg.vocab_size)
            return TensorShard("slice", 0, v0, v0 + n, pad_to=per)
        if kind.startswith("heads"):
            h0, h1 = ctx.split(cfg.num_attention_heads)
            f = cfg.head_dim if kind == "heads_rows" else 1
            return TensorShard("slice", 0, h0 * f, h1 * f)
        if kind.startswith("iheads"):
            h0, h1 = ctx.split(cfg.index_n_heads)
            f = cfg.index_head_dim if kind == "iheads_rows" else 1
            return TensorShard("slice", 0, h0 * f, h1 * f)
        g0, g1 = ctx.split(cfg.o_groups)
        r = cfg.o_lora_rank
        return TensorShard("slice", 0 if kind == "groups_rows" else 1, g0 * r, g1 * r)
    return TensorShard("full")


def default_timeout() -> datetime.timedelta:
    """Collective timeout (V4SERVE_TP_TIMEOUT_S, default 300 s): a hung peer stops the engine."""
    import os

    return datetime.timedelta(seconds=float(os.environ.get("V4SERVE_TP_TIMEOUT_S", "300")))
