"""Public kernel entry points. Each op has a pure-torch twin (`kernels.ref`) used on CPU and as the
reference; Triton implementations (`kernels.triton`) are used on CUDA tensors.

`set_backend("ref" | "triton" | "auto")` overrides the choice (tests compare both). Triton modules
are imported lazily (first CUDA/forced call) so a test can set TRITON_INTERPRET before they load.
"""

from __future__ import annotations

import importlib

import torch

from .quant_weight import QuantWeight
from .ref import fp8_linear as _ref_fp8
from .ref import linear_glue as _ref_lin
from .ref import mhc as _ref_mhc
from .ref import norm as _ref_norm
from .ref import moe as _ref_moe
from .ref import routing as _ref_routing

_BACKEND = "auto"

__all__ = ["QuantWeight", "set_backend", "get_backend", "moe_route", "moe_align", "moe_experts", "fp8_linear",
           "linear", "grouped_linear", "swiglu_linear", "compressor_project", "norm_linear", "linear_scaled",
           "hc_pre", "hc_post", "hc_post_pre", "hc_head", "rms_norm", "rope", "norm_rope", "add_cast"]


def set_backend(name: str) -> None:
    global _BACKEND
    if name not in ("auto", "ref", "triton"):
        raise ValueError(f"unknown kernel backend {name!r}")
    _BACKEND = name


def get_backend() -> str:
    return _BACKEND


def _use_triton(t) -> bool:
    if _BACKEND == "ref":
        return False
    if _BACKEND == "triton":
        return True
    return bool(t.is_cuda)


def _tri(name: str):
    return importlib.import_module(f"kernels.triton.{name}")


# ---- MoE (issue 6) -------------------------------------------------------------------------------
def moe_route(logits, topk: int, routed_scaling: float, renorm: bool = True, bias=None, tid2eid=None,
              input_ids=None):
    """Router tail: sqrt(softplus(logits)) -> bias top-k (or tid2eid[input_ids]) -> renorm * scaling.
    -> (weights [N, k] fp32, ids [N, k] int32). See kernels.ref.routing.moe_route."""
    impl = _tri("routing") if _use_triton(logits) else _ref_routing
    return impl.moe_route(logits, topk, routed_scaling, renorm, bias, tid2eid, input_ids)


def moe_align(ids, num_experts: int, block_m: int):
    """Token->expert sort into `block_m`-aligned expert blocks -> (sorted_ids, expert_ids, num_post_padded)."""
    impl = _tri("routing") if _use_triton(ids) else _ref_routing
    return impl.moe_align(ids, num_experts, block_m)


def moe_experts(x, w1, w3, w2, weights, ids, limit: float, act_quant: bool = False) -> torch.Tensor:
    """Routed experts (clamped SwiGLU) and weighted combine -> [N, d] fp32. Weights: stacked tensors or
    QuantWeight stacks (fp8 / MXFP4); `act_quant`: FP8 activations per 1x128 block. See kernels.ref.moe."""
    if _use_triton(x):
        return _tri("moe").moe_experts(x, w1, w3, w2, weights, ids, limit, act_quant=act_quant)
    return _ref_moe.moe_experts(x, w1, w3, w2, weights, ids, limit, act_quant)


# ---- dense linears (issue 6) ---------------------------------------------------------------------
def fp8_linear(x, w, scale, act_quant: bool = False, out_dtype=None) -> torch.Tensor:
    """y = x @ dequant(w)^T with w float8_e4m3fn [N, K] and UE8M0 scale [ceil(N/128), ceil(K/128)]."""
    impl = _tri("fp8_linear") if _use_triton(x) else _ref_fp8
    return impl.fp8_linear(x, w, scale, act_quant, out_dtype)


def linear(x, weight, fp32: bool = False) -> torch.Tensor:
    """Linear layer entry: QuantWeight (fp8) -> FP8 block linear; plain tensor -> F.linear (fp32 if asked:
    on CUDA one kernel with bf16 operands and fp32 accumulation/output, no casts)."""
    impl = _tri("linear_glue") if _use_triton(x) else _ref_lin
    return impl.linear(x, weight, fp32)


def grouped_linear(x, weight, groups: int) -> torch.Tensor:
    """x [N, g, K] x weight [g*r, K] (plain or QuantWeight fp8) -> [N, g, r]: group j uses rows
    [j*r, (j+1)*r) (the grouped wo_a). One launch on CUDA."""
    impl = _tri("linear_glue") if _use_triton(x) else _ref_lin
    return impl.grouped_linear(x, weight, groups)


def swiglu_linear(x, w1, w3, limit: float) -> torch.Tensor:
    """silu(min(x W1^T, L)) * clamp(x W3^T, -L, L) in x's dtype (the shared expert's hidden)."""
    impl = _tri("linear_glue") if _use_triton(x) else _ref_lin
    return impl.swiglu_linear(x, w1, w3, limit)


def compressor_project(x, wkv, wgate, ape, positions, ratio: int):
    """Compressor projections -> (kv fp32, score fp32 incl. ape[positions % ratio])."""
    impl = _tri("linear_glue") if _use_triton(x) else _ref_lin
    return impl.compressor_project(x, wkv, wgate, ape, positions, ratio)


def norm_linear(x, norm_weight, eps: float, weight) -> torch.Tensor:
    """linear(RMSNorm(x), W): the norm as the GEMM's prologue on CUDA with FP8 weights (q_norm -> wq_b)."""
    impl = _tri("linear_glue") if _use_triton(x) else _ref_lin
    return impl.norm_linear(x, norm_weight, eps, weight)


def linear_scaled(x, weight, alpha: float) -> torch.Tensor:
    """linear(x, W) in x's dtype, then fp32 * alpha (indexer head weights)."""
    impl = _tri("linear_glue") if _use_triton(x) else _ref_lin
    return impl.linear_scaled(x, weight, alpha)


# ---- glue: mHC, norms, RoPE (issue 17) -----------------------------------------------------------
def hc_pre(x, fn, base, scale, hc: int, iters: int, hc_eps: float, norm_eps: float, norm_weight=None):
    """mHC pre-mix of streams x [N, hc, d] -> (u [N, d] (RMSNorm'ed with norm_weight if given),
    post [N, hc] fp32, comb [N, hc, hc] fp32 after `iters` Sinkhorn steps). See kernels.ref.mhc."""
    impl = _tri("mhc") if _use_triton(x) else _ref_mhc
    return impl.hc_pre(x, fn, base, scale, hc, iters, hc_eps, norm_eps, norm_weight)


def hc_post(o, x, post, comb) -> torch.Tensor:
    """mHC post-mix: X'[j] = post[j] * o + sum_i comb[i, j] * X[i]."""
    impl = _tri("mhc") if _use_triton(x) else _ref_mhc
    return impl.hc_post(o, x, post, comb)


def hc_post_pre(o, x, post, comb, fn, base, scale, hc: int, iters: int, hc_eps: float, norm_eps: float,
                norm_weight=None):
    """hc_post then the next site's hc_pre -> (x', u, post', comb'); one pass over the streams on CUDA."""
    impl = _tri("mhc") if _use_triton(x) else _ref_mhc
    return impl.hc_post_pre(o, x, post, comb, fn, base, scale, hc, iters, hc_eps, norm_eps, norm_weight)


def hc_head(x, fn, base, scale, hc_eps: float, norm_eps: float, norm_weight=None) -> torch.Tensor:
    """Final stream collapse [N, hc, d] -> [N, d] (then RMSNorm with norm_weight if given)."""
    impl = _tri("mhc") if _use_triton(x) else _ref_mhc
    return impl.hc_head(x, fn, base, scale, hc_eps, norm_eps, norm_weight)


def rms_norm(x, weight, eps: float) -> torch.Tensor:
    """RMSNorm over the last dim (weight None: weightless), fp32 math, x's dtype."""
    impl = _tri("norm") if _use_triton(x) else _ref_norm
    return impl.rms_norm(x, weight, eps)


def rope(x, cos, sin, inverse: bool = False) -> torch.Tensor:
    """Interleaved partial RoPE of the trailing 2*cos.shape[-1] channels (inverse: conjugate)."""
    impl = _tri("norm") if _use_triton(x) else _ref_norm
    return impl.rope(x, cos, sin, inverse)


def norm_rope(x, weight, eps, cos, sin, inverse: bool = False, out_dtype=None) -> torch.Tensor:
    """rms_norm (eps None: none) then rope (cos None: none) then a cast, per row of x [N, (H,) D]."""
    impl = _tri("norm") if _use_triton(x) else _ref_norm
    return impl.norm_rope(x, weight, eps, cos, sin, inverse, out_dtype)


def add_cast(a, b, out_dtype) -> torch.Tensor:
    """(a + b.float()).to(out_dtype)."""
    impl = _tri("norm") if _use_triton(a) else _ref_norm
    return impl.add_cast(a, b, out_dtype)


# ---- attention / indexer / compressor (issue 5) ----------------------------------------------
# Every op takes the batch's AttnMeta (models/state.batch_metadata). Storage tensors are dense
# (the model's KV dtype, the "bf16" format and parity reference) or packed FP8 (uint8 rows).
from .ref import attention as _ref_attn  # noqa: E402
from .ref import compressor as _ref_comp  # noqa: E402
from .ref import indexer as _ref_idx  # noqa: E402


_ATTN_BACKEND: str | None = None  # override for the attention ops only (None: follow set_backend)


def set_attention_backend(name: str | None) -> None:
    """Override the backend of the attention/indexer/compressor ops only (tests: Triton attention
    inside an otherwise-torch model)."""
    global _ATTN_BACKEND
    if name not in (None, "auto", "ref", "triton"):
        raise ValueError(f"unknown kernel backend {name!r}")
    _ATTN_BACKEND = name


def _attn_use_triton(t: torch.Tensor) -> bool:
    b = _ATTN_BACKEND or _BACKEND
    if b == "ref":
        return False
    if b == "triton":
        return True
    return t.is_cuda


def kv_pack(kv, ring, rope_dim: int):
    """Chunk K=V [N, c] -> rows in the ring's storage format (dense cast or 584-byte FP8 pack)."""
    if _attn_use_triton(kv):
        from .triton import attention as _tr_attn
        return _tr_attn.kv_pack(kv, ring, rope_dim)
    return _ref_attn.kv_pack(kv, ring, rope_dim)


def window_store(kv_cur, ring, meta) -> None:
    """Store each sequence's last min(n, W) chunk rows into its window ring (after attention)."""
    if _attn_use_triton(kv_cur):
        from .triton import attention as _tr_attn
        return _tr_attn.window_store(kv_cur, ring, meta)
    return _ref_attn.window_store(kv_cur, ring, meta)


def sparse_attention(q, kv_cur, ring, pool, topk_idx, meta, sink, *, ratio: int, scale: float, rope_dim: int):
    """Window + compressed-entry attention with per-head sink, decode and (chunked) prefill.
    See kernels.ref.attention.sparse_attention for the semantics."""
    if _attn_use_triton(q):
        from .triton import attention as _tr_attn
        return _tr_attn.sparse_attention(q, kv_cur, ring, pool, topk_idx, meta, sink, ratio=ratio, scale=scale,
                                         rope_dim=rope_dim)
    return _ref_attn.sparse_attention(q, kv_cur, ring, pool, topk_idx, meta, sink, ratio=ratio, scale=scale,
                                      rope_dim=rope_dim)


def indexer_topk(q, w, keys, meta, topk: int, *, ratio: int = 4):
    """Lightning-indexer scores + top-k -> [N, topk] int32 entry indices, -1 = none."""
    if _attn_use_triton(q):
        from .triton import indexer as _tr_idx
        return _tr_idx.indexer_topk(q, w, keys, meta, topk, ratio=ratio)
    return _ref_idx.indexer_topk(q, w, keys, meta, topk, ratio=ratio)


def compress_and_store(kv, score, kv_tail, score_tail, norm_weight, inv_freq, pool, meta, *, ratio: int,
                       overlap: bool, eps: float, index_keys: bool = False) -> None:
    """Gated pooling + RMSNorm + RoPE of every entry closed by the chunk, paged write, tail update."""
    if _attn_use_triton(kv):
        from .triton import compressor as _tr_comp
        return _tr_comp.compress_and_store(kv, score, kv_tail, score_tail, norm_weight, inv_freq, pool, meta,
                                           ratio=ratio, overlap=overlap, eps=eps, index_keys=index_keys)
    return _ref_comp.compress_and_store(kv, score, kv_tail, score_tail, norm_weight, inv_freq, pool, meta,
                                        ratio=ratio, overlap=overlap, eps=eps, index_keys=index_keys)
