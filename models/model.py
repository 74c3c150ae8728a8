"""DeepSeek-V4 transformer: embedding -> 4 mHC streams -> blocks (attention + MoE) -> hc_head ->
norm -> LM head. Module and parameter names equal the official checkpoint names (`embed.weight`,
`layers.3.attn.wq_a.weight`, `layers.3.hc_attn_fn`, ...) except the stacked routed experts.

`forward(batch, state)` runs a flat batch of chunks from many sequences on cache-owned state
(models/state.py); `logits(input_ids)` is the one-call reference path for tests.
"""

from __future__ import annotations

import math
import re
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

import kernels
from kernels.kv_format import get as get_kv_format

from .attention import Attention
from .config import ModelConfig
from .layers import Linear, RMSNorm, make_ropes
from .mhc import HcSite, Pending, flush, hc_head, mix_in
from .moe import MoE
from .parallel import ParallelContext
from .state import ForwardBatch, ModelState, allocate_state, single_sequence_batch


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int, mtp: bool = False, tp: ParallelContext | None = None):
        super().__init__()
        self.tp = tp = tp or ParallelContext()
        hc, d = cfg.hc_mult, cfg.hidden_size
        mix = (2 + hc) * hc
        self.cfg = cfg
        self.attn_norm = RMSNorm(d, cfg.rms_norm_eps)
        self.ffn_norm = RMSNorm(d, cfg.rms_norm_eps)
        ratio = cfg.mtp_compress_ratios[layer - cfg.num_hidden_layers] if mtp else cfg.compress_ratios[layer]
        self.attn = Attention(cfg, ratio, tp)  # this rank's heads
        self.ffn = MoE(cfg, (not mtp) and cfg.is_hash_layer(layer), tp)  # this rank's experts
        for site in ("attn", "ffn"):
            self.register_parameter(f"hc_{site}_fn", nn.Parameter(torch.zeros(mix, hc * d)))
            self.register_parameter(f"hc_{site}_base", nn.Parameter(torch.zeros(mix)))
            self.register_parameter(f"hc_{site}_scale", nn.Parameter(torch.ones(3)))

    def _site(self, site: str) -> HcSite:
        return HcSite(getattr(self, f"hc_{site}_fn"), getattr(self, f"hc_{site}_base"),
                      getattr(self, f"hc_{site}_scale"))

    def forward(self, x, batch: ForwardBatch, state, rope, cos, sin,
                pending: Pending | None = None, *, key_format: str | None) -> tuple[torch.Tensor, Pending]:
        """x [N, hc, d] streams (with the previous block's FFN output `pending`, not yet mixed in) ->
        (streams, this block's FFN output pending). Each post-mix is fused with the next pre-mix."""
        x, u, post, comb = mix_in(x, pending, self._site("attn"), self.cfg, self.attn_norm.weight)
        a = self.tp.all_reduce(self.attn(u, batch, state, rope, cos, sin, key_format=key_format))  # wo_b row-parallel
        x, u, post, comb = mix_in(x, Pending(a, post, comb), self._site("ffn"), self.cfg, self.ffn_norm.weight)
        f = self.tp.all_reduce(self.ffn(u, batch.input_ids))  # expert-parallel partial sums
        return x, Pending(f, post, comb)


class MTPBlock(Block):
    """Multi-token-prediction module `mtp.{k}.`: built and loaded only with include_mtp=True (for
    speculative decoding: models/mtp.py runs it)."""

    def __init__(self, cfg: ModelConfig, k: int, tp: ParallelContext | None = None):
        super().__init__(cfg, layer=cfg.num_hidden_layers + k, mtp=True, tp=tp)
        d, hc = cfg.hidden_size, cfg.hc_mult
        self.e_proj = Linear(d, d)
        self.h_proj = Linear(d, d)
        self.enorm = RMSNorm(d, cfg.rms_norm_eps)
        self.hnorm = RMSNorm(d, cfg.rms_norm_eps)
        self.norm = RMSNorm(d, cfg.rms_norm_eps)
        self.hc_head_fn = nn.Parameter(torch.zeros(hc, hc * d))
        self.hc_head_base = nn.Parameter(torch.zeros(hc))
        self.hc_head_scale = nn.Parameter(torch.ones(1))


_EXPERT = re.compile(r"^(.*\.ffn)\.experts\.(\d+)\.(w[123])\.(weight|scale)$")
_STORED_AS_IS = (torch.float8_e4m3fn, torch.int8, torch.uint8)  # resident quantized data and scale bytes


def _check_dtype(name: str, p: torch.Tensor, t: torch.Tensor) -> None:
    """A quantized parameter must not silently cast a float tensor (or the reverse)."""
    if (p.dtype in _STORED_AS_IS or t.dtype in _STORED_AS_IS) and p.dtype != t.dtype:
        raise TypeError(f"{name}: checkpoint tensor {t.dtype} cannot fill model storage {p.dtype}")


class DeepseekV4(nn.Module):
    def __init__(self, cfg: ModelConfig, include_mtp: bool = False, parallel: ParallelContext | None = None):
        super().__init__()
        d, hc = cfg.hidden_size, cfg.hc_mult
        self.cfg = cfg
        self.tp = tp = parallel or ParallelContext()  # tensor/expert parallelism (world_size 1: none)
        vocab_rows = tp.vocab_range(cfg.vocab_size)[2]  # vocabulary-parallel embedding and head
        self.embed = nn.Embedding(vocab_rows, d, _weight=torch.empty(vocab_rows, d))  # no init: the checkpoint fills it
        self.layers = nn.ModuleList(Block(cfg, i, tp=tp) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(d, cfg.rms_norm_eps)
        self.head = Linear(d, vocab_rows)
        self.hc_head_fn = nn.Parameter(torch.zeros(hc, hc * d))
        self.hc_head_base = nn.Parameter(torch.zeros(hc))
        self.hc_head_scale = nn.Parameter(torch.ones(1))
        n_mtp = cfg.num_nextn_predict_layers if include_mtp else 0
        self.mtp = nn.ModuleList(MTPBlock(cfg, k, tp=tp) for k in range(n_mtp))
        with torch.device("cpu"):  # computed tables, not loaded (a meta build skips the slow meta arange)
            self.rope_main, self.rope_compress = make_ropes(cfg)

    # ---- forward -----------------------------------------------------------------------------
    def forward(self, batch: ForwardBatch, state: ModelState, return_streams: bool = False):
        """Run all layers on the batch; -> final hidden states [S, d] at batch.logits_indices
        (return_streams: also every row's final streams [N, hc, d] before hc_head, the MTP block's
        input, models/mtp.py)."""
        cfg = self.cfg
        x = self.tp.embed(self.embed, batch.input_ids, cfg.vocab_size)
        x = x.unsqueeze(1).expand(-1, cfg.hc_mult, -1).contiguous()  # [N, hc, d]
        trig = {}
        for name, rope in (("main", self.rope_main), ("compress", self.rope_compress)):
            trig[name] = rope.cos_sin(batch.positions)
        pending = None
        key_format = get_kv_format(state.kv_format).index_keys  # the format travels, never guessed from widths
        for i, block in enumerate(self.layers):
            rope, name = (self.rope_main, "main") if cfg.compress_ratios[i] == 0 else (self.rope_compress, "compress")
            x, pending = block(x, batch, state.layers[i], rope, *trig[name], pending=pending, key_format=key_format)
        streams = flush(x, pending)
        x = streams[batch.logits_indices]
        hidden = hc_head(x, self.hc_head_fn, self.hc_head_base, self.hc_head_scale, cfg, self.norm.weight)  # + norm
        return (hidden, streams) if return_streams else hidden

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor | None:
        """[S, d] -> [S, vocab] fp32 (tensor parallel: on rank 0; the other ranks get None)."""
        return self.tp.gather_logits(kernels.logits_linear(hidden, self.head.quant_weight()), self.cfg.vocab_size)

    @torch.no_grad()
    def logits(self, input_ids: torch.Tensor | list[int], block_size: int | None = None) -> torch.Tensor:
        """Reference path: one sequence from position 0 in one prefill -> [T, vocab] fp32 logits."""
        ids = torch.as_tensor(input_ids, dtype=torch.long, device=self.embed.weight.device).reshape(-1)
        bs = block_size or max(self.cfg.ratio_lcm, 1)
        n_blocks = max(1, math.ceil(ids.numel() / bs))
        state = self.new_state(num_slots=1, num_blocks=n_blocks, block_size=bs)
        batch = single_sequence_batch(ids, 0, torch.arange(n_blocks))
        return self.compute_logits(self.forward(batch, state))

    def new_state(self, num_slots: int, num_blocks: int, block_size: int, kv_format: str = "bf16") -> ModelState:
        w = self.embed.weight
        return allocate_state(self.cfg, num_slots, num_blocks, block_size, w.dtype, w.device, kv_format=kv_format)

    # ---- weights -----------------------------------------------------------------------------
    def load_weights(self, tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy (official name, tensor) pairs into the already allocated parameters, each tensor straight
        into place (host -> device copies included); every parameter must be covered. Resident quantized
        storage (FP8 / packed MXFP4 / UE8M0 bytes) only takes tensors of its own dtype."""
        params = dict(self.named_parameters())
        params.update(dict(self.named_buffers()))
        for skip in [k for k in params if k.endswith("inv_freq")]:
            del params[skip]
        loaded: set[str] = set()
        experts_seen: dict[str, int] = {}
        for name, t in tensors:
            m = _EXPERT.match(name)
            if m:
                key = f"{m.group(1)}.experts_{m.group(3)}" + ("_scale" if m.group(4) == "scale" else "")
                if key not in params:
                    raise KeyError(f"checkpoint tensor {name} has no place in the model")
                _check_dtype(name, params[key], t)
                params[key].data[int(m.group(2))].copy_(t)
                experts_seen[key] = experts_seen.get(key, 0) + 1
                continue
            if name not in params:
                raise KeyError(f"checkpoint tensor {name} has no place in the model")
            p = params[name]
            if tuple(p.shape) != tuple(t.shape):
                raise ValueError(f"{name}: checkpoint shape {tuple(t.shape)} != model shape {tuple(p.shape)}")
            _check_dtype(name, p, t)
            p.data.copy_(t)
            loaded.add(name)
        for key, cnt in experts_seen.items():
            if cnt != params[key].shape[0]:
                raise ValueError(f"{key}: loaded {cnt} of {params[key].shape[0]} experts")
            loaded.add(key)
        missing = sorted(set(params) - loaded)
        if missing:
            raise ValueError(f"{len(missing)} model tensors were not in the checkpoint: {missing[:10]}")

    def param_dtypes_fp32(self) -> list[str]:
        """Parameters kept in fp32 regardless of the compute dtype (F32 in the checkpoint)."""
        keep = ("hc_", "attn_sink", ".ape", "gate.bias")
        return [n for n, _ in self.named_parameters() if any(k in n for k in keep)]
