"""The tensor inventory of an official DeepSeek-V4 checkpoint, derived from a `ModelConfig`.

`expected_tensors(cfg, quantized)` lists every tensor (official names, no `model.` prefix; see
architecture.md §3.1/§3.2) with its on-disk shape and dtype. The loader validates checkpoints
against it and the synthetic writer produces exactly it. This module knows names, shapes and
dtypes only; it does not read or write files and holds no weights.

On-disk formats of a linear weight `[out, in]` (`TensorSpec.quant` on the `.weight` entry):
  "bf16": BF16 `[out, in]`, no scale
  "fp8" : F8_E4M3 `[out, in]` + `.scale` F8_E8M0 `[ceil(out/128), ceil(in/128)]`
  "fp4" : I8 `[out, in/2]` (two E2M1 nibbles per byte along K) + `.scale` F8_E8M0 `[out, in/32]`
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

import torch

from models.config import CSA_RATIO, ModelConfig

FP8_BLOCK = 128  # FP8 weight tile edge (weight_block_size)
FP4_BLOCK = 32  # MXFP4 scale block along K

# torch dtype <-> safetensors header dtype string.
ST_DTYPE_NAMES: dict[torch.dtype, str] = {
    torch.bfloat16: "BF16",
    torch.float16: "F16",
    torch.float32: "F32",
    torch.float64: "F64",
    torch.float8_e4m3fn: "F8_E4M3",
    torch.float8_e5m2: "F8_E5M2",
    torch.float8_e8m0fnu: "F8_E8M0",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.int16: "I16",
    torch.int32: "I32",
    torch.int64: "I64",
    torch.bool: "BOOL",
}
ST_DTYPES: dict[str, torch.dtype] = {v: k for k, v in ST_DTYPE_NAMES.items()}


@dataclass(frozen=True)
class TensorSpec:
    name: str  # official checkpoint key, e.g. "layers.3.attn.wq_a.weight"
    shape: tuple[int, ...]  # on-disk shape (packed for fp4, per-tile for scales)
    dtype: torch.dtype  # on-disk dtype
    quant: str | None = None  # on `.weight` of a linear: "bf16" | "fp8" | "fp4"; None for everything else
    logical_shape: tuple[int, ...] | None = None  # dequantized [out, in] of a linear weight (None otherwise)
    init: str = "const"  # initialisation family for the synthetic writer (see models/synthetic.py)

    @property
    def st_dtype(self) -> str:
        """The safetensors dtype string ("BF16", "F8_E4M3", ...)."""
        return ST_DTYPE_NAMES[self.dtype]

    @property
    def nbytes(self) -> int:
        n = self.dtype.itemsize
        for s in self.shape:
            n *= s
        return n


def scale_name(weight_name: str) -> str:
    """`x.weight` -> `x.scale` (the block-scale companion of a quantized linear)."""
    assert weight_name.endswith(".weight"), weight_name
    return weight_name[: -len(".weight")] + ".scale"


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


class _Builder:
    """Accumulates specs in checkpoint order; knows the linear formats of one checkpoint flavour."""

    def __init__(self, dense_fmt: str, expert_fmt: str):
        self.dense_fmt = dense_fmt  # format of wq_a/wq_b/wkv/wo_a/wo_b/shared/e_proj/h_proj/indexer.wq_b
        self.expert_fmt = expert_fmt  # format of routed experts
        self.out: dict[str, TensorSpec] = {}

    def add(self, name: str, shape: tuple[int, ...], dtype: torch.dtype, init: str) -> None:
        assert name not in self.out, f"duplicate tensor {name}"
        self.out[name] = TensorSpec(name, tuple(shape), dtype, init=init)

    def linear(self, prefix: str, out_f: int, in_f: int, fmt: str, init: str = "linear") -> None:
        """A linear `{prefix}.weight` [out_f, in_f] stored in `fmt` (+ `{prefix}.scale` if quantized)."""
        name, logical = f"{prefix}.weight", (out_f, in_f)
        if fmt == "bf16":
            shape, dtype, scale = logical, torch.bfloat16, None
        elif fmt == "fp8":
            shape, dtype = logical, torch.float8_e4m3fn
            scale = (_ceil_div(out_f, FP8_BLOCK), _ceil_div(in_f, FP8_BLOCK))
        elif fmt == "fp4":
            if in_f % FP4_BLOCK:
                raise ValueError(f"{name}: in_features {in_f} not a multiple of {FP4_BLOCK} (MXFP4 blocks)")
            shape, dtype, scale = (out_f, in_f // 2), torch.int8, (out_f, in_f // FP4_BLOCK)
        else:
            raise ValueError(f"unknown weight format {fmt!r}")
        assert name not in self.out, f"duplicate tensor {name}"
        self.out[name] = TensorSpec(name, shape, dtype, quant=fmt, logical_shape=logical, init=init)
        if scale is not None:
            self.add(f"{prefix}.scale", scale, torch.float8_e8m0fnu, "scale")

    def hc(self, prefix: str, cfg: ModelConfig, n_out: int, n_scale: int) -> None:
        """mHC parameters `{prefix}_fn` [n_out, hc*d], `{prefix}_base` [n_out], `{prefix}_scale` [n_scale]."""
        self.add(f"{prefix}_fn", (n_out, cfg.hc_mult * cfg.hidden_size), torch.float32, "hc_fn")
        self.add(f"{prefix}_base", (n_out,), torch.float32, "hc_base")
        self.add(f"{prefix}_scale", (n_scale,), torch.float32, "hc_scale")

    def compressor(self, prefix: str, d: int, width: int, ratio: int) -> None:
        """KV compressor producing `width`-wide entries; overlap (CSA, ratio 4) doubles the projections."""
        coff = 2 if ratio == CSA_RATIO else 1
        self.add(f"{prefix}.wkv.weight", (coff * width, d), torch.bfloat16, "linear")
        self.add(f"{prefix}.wgate.weight", (coff * width, d), torch.bfloat16, "linear")
        self.add(f"{prefix}.norm.weight", (width,), torch.bfloat16, "norm")
        self.add(f"{prefix}.ape", (ratio, coff * width), torch.float32, "ape")

    def block(self, p: str, cfg: ModelConfig, ratio: int, hash_router: bool) -> None:
        """One transformer block (main layer or MTP) under prefix `p` (ends with a dot)."""
        d, hd, H = cfg.hidden_size, cfg.head_dim, cfg.num_attention_heads
        mix = (2 + cfg.hc_mult) * cfg.hc_mult
        self.add(f"{p}attn_norm.weight", (d,), torch.bfloat16, "norm")
        self.add(f"{p}ffn_norm.weight", (d,), torch.bfloat16, "norm")
        self.hc(f"{p}hc_attn", cfg, mix, 3)
        self.hc(f"{p}hc_ffn", cfg, mix, 3)
        a = f"{p}attn."
        self.linear(f"{a}wq_a", cfg.q_lora_rank, d, self.dense_fmt)
        self.add(f"{a}q_norm.weight", (cfg.q_lora_rank,), torch.bfloat16, "norm")
        self.linear(f"{a}wq_b", H * hd, cfg.q_lora_rank, self.dense_fmt)
        self.linear(f"{a}wkv", hd, d, self.dense_fmt)
        self.add(f"{a}kv_norm.weight", (hd,), torch.bfloat16, "norm")
        self.linear(f"{a}wo_a", cfg.o_groups * cfg.o_lora_rank, H * hd // cfg.o_groups, self.dense_fmt)
        self.linear(f"{a}wo_b", d, cfg.o_groups * cfg.o_lora_rank, self.dense_fmt, init="linear_out")
        self.add(f"{a}attn_sink", (H,), torch.float32, "sink")
        if ratio > 0:
            self.compressor(f"{a}compressor", d, hd, ratio)
        if ratio == CSA_RATIO:
            ih = cfg.index_n_heads * cfg.index_head_dim
            self.linear(f"{a}indexer.wq_b", ih, cfg.q_lora_rank, self.dense_fmt)
            self.add(f"{a}indexer.weights_proj.weight", (cfg.index_n_heads, d), torch.bfloat16, "linear")
            self.compressor(f"{a}indexer.compressor", d, cfg.index_head_dim, ratio)
        f, E, inter = f"{p}ffn.", cfg.n_routed_experts, cfg.moe_intermediate_size
        self.add(f"{f}gate.weight", (E, d), torch.bfloat16, "linear")
        if hash_router:
            self.add(f"{f}gate.tid2eid", (cfg.vocab_size, cfg.num_experts_per_tok), torch.int64, "tid2eid")
        else:
            self.add(f"{f}gate.bias", (E,), torch.float32, "gate_bias")
        experts = [f"{f}shared_experts"] * cfg.n_shared_experts + [f"{f}experts.{e}" for e in range(E)]
        for i, q in enumerate(experts):
            fmt = self.dense_fmt if i < cfg.n_shared_experts else self.expert_fmt
            self.linear(f"{q}.w1", inter, d, fmt)
            self.linear(f"{q}.w2", d, inter, fmt, init="linear_out")
            self.linear(f"{q}.w3", inter, d, fmt)


def expected_tensors(cfg: ModelConfig, quantized: bool, include_mtp: bool = True) -> dict[str, TensorSpec]:
    """Every tensor of the checkpoint, in writing order: embed, layers, MTP blocks, final norm/head.

    Cached per (cfg, quantized, include_mtp) (Pro has 145k entries); each call returns a fresh dict.
    """
    return dict(_expected_tensors(cfg, quantized, include_mtp))


@lru_cache(maxsize=8)
def _expected_tensors(cfg: ModelConfig, quantized: bool, include_mtp: bool) -> dict[str, TensorSpec]:
    if quantized:
        dense, experts = "fp8", (cfg.expert_dtype if cfg.expert_dtype in ("fp4", "fp8") else "fp8")
    else:
        dense, experts = "bf16", "bf16"
    b = _Builder(dense, experts)
    d, V, hc = cfg.hidden_size, cfg.vocab_size, cfg.hc_mult
    b.add("embed.weight", (V, d), torch.bfloat16, "embed")
    for layer in range(cfg.num_hidden_layers):
        b.block(f"layers.{layer}.", cfg, cfg.compress_ratios[layer], cfg.is_hash_layer(layer))
    if include_mtp:
        for k in range(cfg.num_nextn_predict_layers):
            p = f"mtp.{k}."
            ratio = cfg.mtp_compress_ratios[k] if k < len(cfg.mtp_compress_ratios) else 0
            b.block(p, cfg, ratio, hash_router=False)
            b.linear(f"{p}e_proj", d, d, dense)
            b.linear(f"{p}h_proj", d, d, dense)
            for n in ("enorm", "hnorm", "norm"):
                b.add(f"{p}{n}.weight", (d,), torch.bfloat16, "norm")
            b.hc(f"{p}hc_head", cfg, hc, 1)
    b.add("norm.weight", (d,), torch.bfloat16, "norm")
    b.add("head.weight", (V, d), torch.bfloat16, "linear")
    b.hc("hc_head", cfg, hc, 1)
    return b.out


def dtype_census(specs: dict[str, TensorSpec]) -> dict[str, int]:
    """Tensor count per safetensors dtype string, e.g. {"BF16": 433, "F32": 417, ...}."""
    return dict(Counter(s.st_dtype for s in specs.values()))


def total_bytes(specs: dict[str, TensorSpec]) -> int:
    return sum(s.nbytes for s in specs.values())
