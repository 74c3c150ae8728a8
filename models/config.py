"""Model configuration: the official DeepSeek-V4 `config.json`, parsed once into a frozen dataclass.

`compress_ratios[i]` decides the attention kind of layer i:
  0            -> "sliding"  (sliding window only)
  4            -> "csa"      (overlapped compressor m=4 + lightning indexer + top-k)
  other m > 0  -> "hca"      (non-overlapped dense compression with ratio m)
The official list has one entry per main layer plus one per MTP layer (the trailing entries).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

CSA_RATIO = 4

# Keys of later, incompatible revisions (architecture.md §9). Rejected rather than mis-loaded.
_FOREIGN_KEY_PREFIXES = ("dspark_", "engram_")


class ConfigError(ValueError):
    """The config.json does not describe a DeepSeek-V4 model we can serve."""


@dataclass(frozen=True)
class YarnConfig:
    factor: float  # context extension factor (16 for V4)
    original_max_position_embeddings: int  # L0 (65536 for V4)
    beta_fast: float = 32.0
    beta_slow: float = 1.0


@dataclass(frozen=True)
class QuantConfig:
    """Checkpoint quantization (`quantization_config`): FP8 E4M3 weights, UE8M0 block scales."""

    fmt: str = "e4m3"
    scale_fmt: str = "ue8m0"
    weight_block_size: tuple[int, int] = (128, 128)
    activation_scheme: str = "dynamic"


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    hidden_size: int  # d
    num_hidden_layers: int  # main stack only (MTP excluded)
    num_attention_heads: int  # H query heads; one shared K=V head
    q_lora_rank: int
    o_groups: int
    o_lora_rank: int
    moe_intermediate_size: int
    n_routed_experts: int
    num_experts_per_tok: int
    compress_ratios: tuple[int, ...]  # one per main layer (MTP entries split off into mtp_compress_ratios)
    mtp_compress_ratios: tuple[int, ...] = ()
    head_dim: int = 512  # c: shared K=V head width
    qk_rope_head_dim: int = 64  # r: trailing rope dims of every 512 (and of the 128-wide indexer heads)
    n_shared_experts: int = 1
    num_hash_layers: int = 3
    scoring_func: str = "sqrtsoftplus"
    norm_topk_prob: bool = True
    routed_scaling_factor: float = 1.5
    swiglu_limit: float = 10.0
    sliding_window: int = 128  # window length incl. the current token
    index_n_heads: int = 64
    index_head_dim: int = 128
    index_topk: int = 512
    hc_mult: int = 4
    hc_sinkhorn_iters: int = 20
    hc_eps: float = 1e-6
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    compress_rope_theta: float = 160000.0
    yarn: YarnConfig | None = None
    max_position_embeddings: int = 1048576
    num_nextn_predict_layers: int = 1
    expert_dtype: str | None = None  # "fp4" (MXFP4 experts), "fp8", or None (same as the rest)
    quantization: QuantConfig | None = None
    bos_token_id: int = 0
    eos_token_id: int = 1
    tie_word_embeddings: bool = False
    torch_dtype: str = "bfloat16"

    def __post_init__(self) -> None:
        errs = []
        if len(self.compress_ratios) != self.num_hidden_layers:
            errs.append(f"compress_ratios has {len(self.compress_ratios)} main entries, expected {self.num_hidden_layers}")
        for r in (*self.compress_ratios, *self.mtp_compress_ratios):
            if r < 0:
                errs.append(f"negative compress ratio {r}")
        if self.num_attention_heads % self.o_groups:
            errs.append(f"num_attention_heads {self.num_attention_heads} not divisible by o_groups {self.o_groups}")
        if self.qk_rope_head_dim % 2 or self.qk_rope_head_dim > min(self.head_dim, self.index_head_dim):
            errs.append(f"bad qk_rope_head_dim {self.qk_rope_head_dim}")
        if self.num_experts_per_tok > self.n_routed_experts:
            errs.append("num_experts_per_tok > n_routed_experts")
        if self.scoring_func != "sqrtsoftplus":
            errs.append(f"scoring_func {self.scoring_func!r} unsupported (DeepSeek-V4 uses 'sqrtsoftplus')")
        if self.n_shared_experts not in (0, 1):
            errs.append(f"n_shared_experts={self.n_shared_experts} unsupported (V4 has 1)")
        if self.expert_dtype not in (None, "fp4", "fp8", "bf16"):
            errs.append(f"expert_dtype {self.expert_dtype!r} unsupported")
        if errs:
            raise ConfigError("invalid DeepSeek-V4 config: " + "; ".join(errs))

    # ---- derived -------------------------------------------------------------------------
    @property
    def nope_head_dim(self) -> int:
        return self.head_dim - self.qk_rope_head_dim

    @property
    def softmax_scale(self) -> float:
        return self.head_dim ** -0.5

    def layer_kind(self, layer: int) -> str:
        """"sliding" | "csa" | "hca" for main layer `layer`."""
        return ratio_kind(self.compress_ratios[layer])

    def is_hash_layer(self, layer: int) -> bool:
        return layer < self.num_hash_layers

    @property
    def distinct_ratios(self) -> tuple[int, ...]:
        return tuple(sorted({r for r in self.compress_ratios if r > 0}))

    @property
    def ratio_lcm(self) -> int:
        """Smallest token count that is a multiple of every compression ratio (1 if none)."""
        out = 1
        for r in self.distinct_ratios:
            out = out * r // math.gcd(out, r)
        return out

    @property
    def expert_weight_format(self) -> str:
        """How routed expert weights are stored in the checkpoint: "fp4" | "fp8" | "bf16"."""
        if self.quantization is None:
            return "bf16"
        return self.expert_dtype if self.expert_dtype in ("fp4", "fp8") else "fp8"

    @property
    def dense_weight_format(self) -> str:
        """How the FP8-able dense linears (wq_a, wq_b, wkv, wo_a, wo_b, shared experts, ...) are stored."""
        return "fp8" if self.quantization is not None else "bf16"

    def with_layers(self, n: int) -> "ModelConfig":
        """Same model with only the first `n` main layers (for benchmarks that do not fit)."""
        return replace(self, num_hidden_layers=n, compress_ratios=self.compress_ratios[:n])

    # ---- (de)serialisation -----------------------------------------------------------------
    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "ModelConfig":
        return _from_dict(cls, raw)

    @classmethod
    def from_json(cls, path: str | Path) -> "ModelConfig":
        p = Path(path)
        if p.is_dir():
            p = p / "config.json"
        try:
            raw = json.loads(p.read_text())
        except FileNotFoundError as e:
            raise ConfigError(f"no config.json at {p}") from e
        except json.JSONDecodeError as e:
            raise ConfigError(f"{p} is not valid JSON: {e}") from e
        return cls.from_dict(raw)

    def to_dict(self) -> dict[str, Any]:
        """The official config.json layout (what the synthetic writer emits)."""
        d: dict[str, Any] = {
            "architectures": ["DeepseekV4ForCausalLM"],
            "model_type": "deepseek_v4",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": 1,
            "head_dim": self.head_dim,
            "qk_rope_head_dim": self.qk_rope_head_dim,
            "q_lora_rank": self.q_lora_rank,
            "o_groups": self.o_groups,
            "o_lora_rank": self.o_lora_rank,
            "moe_intermediate_size": self.moe_intermediate_size,
            "n_routed_experts": self.n_routed_experts,
            "n_shared_experts": self.n_shared_experts,
            "num_experts_per_tok": self.num_experts_per_tok,
            "num_hash_layers": self.num_hash_layers,
            "scoring_func": self.scoring_func,
            "topk_method": "noaux_tc",
            "norm_topk_prob": self.norm_topk_prob,
            "routed_scaling_factor": self.routed_scaling_factor,
            "swiglu_limit": self.swiglu_limit,
            "hidden_act": "silu",
            "sliding_window": self.sliding_window,
            "index_n_heads": self.index_n_heads,
            "index_head_dim": self.index_head_dim,
            "index_topk": self.index_topk,
            "hc_mult": self.hc_mult,
            "hc_sinkhorn_iters": self.hc_sinkhorn_iters,
            "hc_eps": self.hc_eps,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "compress_rope_theta": self.compress_rope_theta,
            "max_position_embeddings": self.max_position_embeddings,
            "num_nextn_predict_layers": self.num_nextn_predict_layers,
            "compress_ratios": [*self.compress_ratios, *self.mtp_compress_ratios],
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": False,
            "attention_dropout": 0.0,
            "initializer_range": 0.02,
            "torch_dtype": self.torch_dtype,
            "use_cache": True,
        }
        if self.yarn is not None:
            d["rope_scaling"] = {
                "type": "yarn",
                "factor": self.yarn.factor,
                "original_max_position_embeddings": self.yarn.original_max_position_embeddings,
                "beta_fast": self.yarn.beta_fast,
                "beta_slow": self.yarn.beta_slow,
            }
        if self.expert_dtype is not None:
            d["expert_dtype"] = self.expert_dtype
        if self.quantization is not None:
            q = self.quantization
            d["quantization_config"] = {
                "quant_method": "fp8",
                "fmt": q.fmt,
                "scale_fmt": q.scale_fmt,
                "activation_scheme": q.activation_scheme,
                "weight_block_size": list(q.weight_block_size),
            }
        return d


def ratio_kind(ratio: int) -> str:
    if ratio == 0:
        return "sliding"
    if ratio == CSA_RATIO:
        return "csa"
    return "hca"


def _from_dict(cls, raw: dict[str, Any]) -> ModelConfig:
    mt = raw.get("model_type")
    if mt != "deepseek_v4":
        raise ConfigError(
            f"unsupported model_type {mt!r}: v4serve serves DeepSeek-V4 checkpoints (model_type 'deepseek_v4')"
        )
    foreign = sorted(k for k in raw if k.startswith(_FOREIGN_KEY_PREFIXES))
    if foreign:
        raise ConfigError(
            "this checkpoint belongs to a later DeepSeek revision (keys "
            + ", ".join(foreign[:5])
            + ") that v4serve does not support; only the DeepSeek-V4 (Flash/Pro) architecture is served"
        )
    for key in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "q_lora_rank",
                "o_groups", "o_lora_rank", "moe_intermediate_size", "n_routed_experts",
                "num_experts_per_tok", "compress_ratios"):
        if key not in raw:
            raise ConfigError(f"config.json is missing required key {key!r}")
    if raw.get("num_key_value_heads", 1) != 1:
        raise ConfigError("DeepSeek-V4 has one shared K=V head; num_key_value_heads must be 1")
    n = int(raw["num_hidden_layers"])
    ratios = [int(r) for r in raw["compress_ratios"]]
    if len(ratios) < n:
        raise ConfigError(f"compress_ratios has {len(ratios)} entries, fewer than num_hidden_layers={n}")
    n_mtp = int(raw.get("num_nextn_predict_layers", 0))
    extra = ratios[n:]
    if len(extra) > max(n_mtp, 0):
        raise ConfigError(
            f"compress_ratios has {len(ratios)} entries for {n} layers + {n_mtp} MTP layers "
            "(a later revision with extra speculative stages?)"
        )
    rs = raw.get("rope_scaling") or raw.get("rope_parameters")
    yarn = None
    if isinstance(rs, dict) and rs.get("type", rs.get("rope_type")) == "yarn":
        yarn = YarnConfig(
            factor=float(rs["factor"]),
            original_max_position_embeddings=int(rs["original_max_position_embeddings"]),
            beta_fast=float(rs.get("beta_fast", 32)),
            beta_slow=float(rs.get("beta_slow", 1)),
        )
    elif rs not in (None, {}) and not (isinstance(rs, dict) and rs.get("type", rs.get("rope_type")) == "default"):
        raise ConfigError(f"unsupported rope_scaling {rs!r} (DeepSeek-V4 uses YaRN)")
    qc = raw.get("quantization_config")
    quant = None
    if qc is not None:
        if qc.get("quant_method") != "fp8" or qc.get("fmt", "e4m3") != "e4m3":
            raise ConfigError(f"unsupported quantization_config {qc!r} (expected FP8 E4M3 block quantization)")
        bs = tuple(qc.get("weight_block_size", (128, 128)))
        if bs != (128, 128):
            raise ConfigError(f"unsupported weight_block_size {list(bs)} (expected [128, 128])")
        quant = QuantConfig(
            fmt="e4m3",
            scale_fmt=qc.get("scale_fmt", "ue8m0") or "ue8m0",
            weight_block_size=bs,
            activation_scheme=qc.get("activation_scheme", "dynamic"),
        )
    if raw.get("hidden_act", "silu") != "silu":
        raise ConfigError(f"hidden_act {raw['hidden_act']!r} unsupported")
    eos = raw.get("eos_token_id", 1)
    if isinstance(eos, list):
        eos = eos[0]
    kw = dict(
        vocab_size=int(raw["vocab_size"]),
        hidden_size=int(raw["hidden_size"]),
        num_hidden_layers=n,
        num_attention_heads=int(raw["num_attention_heads"]),
        q_lora_rank=int(raw["q_lora_rank"]),
        o_groups=int(raw["o_groups"]),
        o_lora_rank=int(raw["o_lora_rank"]),
        moe_intermediate_size=int(raw["moe_intermediate_size"]),
        n_routed_experts=int(raw["n_routed_experts"]),
        num_experts_per_tok=int(raw["num_experts_per_tok"]),
        compress_ratios=tuple(ratios[:n]),
        mtp_compress_ratios=tuple(extra),
        head_dim=int(raw.get("head_dim", 512)),
        qk_rope_head_dim=int(raw.get("qk_rope_head_dim", 64)),
        n_shared_experts=int(raw.get("n_shared_experts", 1)),
        num_hash_layers=int(raw.get("num_hash_layers", 3)),
        scoring_func=raw.get("scoring_func", "sqrtsoftplus"),
        norm_topk_prob=bool(raw.get("norm_topk_prob", True)),
        routed_scaling_factor=float(raw.get("routed_scaling_factor", 1.0)),
        swiglu_limit=float(raw.get("swiglu_limit", 10.0)),
        sliding_window=int(raw.get("sliding_window", 128)),
        index_n_heads=int(raw.get("index_n_heads", 64)),
        index_head_dim=int(raw.get("index_head_dim", 128)),
        index_topk=int(raw.get("index_topk", 512)),
        hc_mult=int(raw.get("hc_mult", 4)),
        hc_sinkhorn_iters=int(raw.get("hc_sinkhorn_iters", 20)),
        hc_eps=float(raw.get("hc_eps", 1e-6)),
        rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
        rope_theta=float(raw.get("rope_theta", 10000.0)),
        compress_rope_theta=float(raw.get("compress_rope_theta", 160000.0)),
        yarn=yarn,
        max_position_embeddings=int(raw.get("max_position_embeddings", 1048576)),
        num_nextn_predict_layers=n_mtp,
        expert_dtype=raw.get("expert_dtype"),
        quantization=quant,
        bos_token_id=int(raw.get("bos_token_id", 0)),
        eos_token_id=int(eos),
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
        torch_dtype=str(raw.get("torch_dtype", "bfloat16")),
    )
    return cls(**kw)


# ---- presets ---------------------------------------------------------------------------------
_V4_YARN = YarnConfig(factor=16.0, original_max_position_embeddings=65536, beta_fast=32.0, beta_slow=1.0)
_V4_QUANT = QuantConfig()


def flash_config(num_layers: int = 43) -> ModelConfig:
    ratios = (0, 0) + (4, 128) * 20 + (4,)
    return ModelConfig(
        vocab_size=129280, hidden_size=4096, num_hidden_layers=43, num_attention_heads=64, q_lora_rank=1024,
        o_groups=8, o_lora_rank=1024, moe_intermediate_size=2048, n_routed_experts=256, num_experts_per_tok=6,
        compress_ratios=ratios, mtp_compress_ratios=(0,), routed_scaling_factor=1.5, index_topk=512,
        yarn=_V4_YARN, expert_dtype="fp4", quantization=_V4_QUANT,
    ).with_layers(num_layers)


def pro_config(num_layers: int = 61) -> ModelConfig:
    ratios = (128, 128) + tuple(4 if i % 2 == 0 else 128 for i in range(2, 61))
    return ModelConfig(
        vocab_size=129280, hidden_size=7168, num_hidden_layers=61, num_attention_heads=128, q_lora_rank=1536,
        o_groups=16, o_lora_rank=1024, moe_intermediate_size=3072, n_routed_experts=384, num_experts_per_tok=6,
        compress_ratios=ratios, mtp_compress_ratios=(0,), routed_scaling_factor=2.5, index_topk=1024,
        yarn=_V4_YARN, expert_dtype="fp4", quantization=_V4_QUANT,
    ).with_layers(num_layers)


def tiny_config(
    compress_ratios: tuple[int, ...] = (0, 4, 8, 4),
    vocab_size: int = 512,
    index_topk: int = 4,
    num_hash_layers: int = 1,
    **overrides: Any,
) -> ModelConfig:
    """A few-layer model with real V4 structure and tiny widths (CPU tests, the demo model).

    Small HCA ratios (8, 16) and a short window make short sequences cross many boundaries.
    16 indexer heads so ReLU rarely zeroes all index scores (stable top-k tie-breaking).
    """
    kw: dict[str, Any] = dict(
        vocab_size=vocab_size, hidden_size=64, num_hidden_layers=len(compress_ratios), num_attention_heads=4,
        q_lora_rank=32, o_groups=2, o_lora_rank=16, moe_intermediate_size=32, n_routed_experts=8,
        num_experts_per_tok=2, compress_ratios=tuple(compress_ratios), mtp_compress_ratios=(0,),
        head_dim=64, qk_rope_head_dim=16, num_hash_layers=num_hash_layers, routed_scaling_factor=1.5,
        sliding_window=16, index_n_heads=16, index_head_dim=32, index_topk=index_topk,
        hc_sinkhorn_iters=20, yarn=YarnConfig(factor=4.0, original_max_position_embeddings=1024),
        max_position_embeddings=4096,
    )
    kw.update(overrides)
    return ModelConfig(**kw)


PRESETS = {"tiny": tiny_config, "flash": flash_config, "pro": pro_config}
