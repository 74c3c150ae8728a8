"""Public kernel entry points. Each op has a pure-torch twin (`kernels.ref`) used on CPU and as the
reference; Triton implementations (`kernels.triton`) are used on CUDA tensors.

`_OPS` maps each op to its twin and its Triton module; `with backend("ref" | "triton" | "auto", ops=...)`
(or `set_backend` / `set_attention_backend`) overrides the choice (tests compare both). Triton modules
are imported lazily (first CUDA/forced call) so a test can set TRITON_INTERPRET before they load.
"""

from __future__ import annotations

import contextlib
import importlib

import torch

from .quant_weight import QuantWeight
from .ref import attention as _ref_attn
from .ref import compressor as _ref_comp
from .ref import fp8_linear as _ref_fp8
from .ref import indexer as _ref_idx
from .ref import linear_glue as _ref_lin
from .ref import mhc as _ref_mhc
from .ref import moe as _ref_moe
from .ref import norm as _ref_norm
from .ref import quant as _ref_quant
from .ref import routing as _ref_routing
from .ref import row_copy as _ref_row_copy

# op -> (pure-torch twin module, Triton module under kernels/triton, backend group). The one place
# that says which implementation an op has; a new op is one row here plus its public function below.
_OPS: dict[str, tuple[object, str, str]] = {
    "moe_route": (_ref_routing, "routing", "main"),
    "moe_align": (_ref_routing, "routing", "main"),
    "moe_experts": (_ref_moe, "moe", "main"),
    "fp8_linear": (_ref_fp8, "fp8_linear", "main"),
    "act_quant": (_ref_quant, "act_quant", "main"),
    **{op: (_ref_lin, "linear_glue", "main") for op in (
        "linear", "logits_linear", "grouped_linear", "swiglu_linear", "compressor_project", "norm_linear",
        "linear_scaled")},
    **{op: (_ref_mhc, "mhc", "main") for op in ("hc_pre", "hc_post", "hc_post_pre", "hc_head")},
    **{op: (_ref_norm, "norm", "main") for op in ("rms_norm", "rope", "norm_rope", "add_cast", "swiglu")},
    **{op: (_ref_attn, "attention", "attention") for op in ("kv_pack", "kv_entries", "window_store",
                                                            "sparse_attention")},
    "indexer_topk": (_ref_idx, "indexer", "attention"),
    "compress_and_store": (_ref_comp, "compressor", "attention"),
    **{op: (_ref_row_copy, "row_copy", "main") for op in ("row_copy", "spec_row_copy")},
}
_BACKENDS = ("auto", "ref", "triton")
# the backend override of each group: "all" (every op) and "attention" (attention / indexer / compressor
# ops only, None = follow "all"); "auto" = Triton on CUDA tensors, the twin elsewhere
_OVERRIDE: dict[str, str | None] = {"all": "auto", "attention": None}

__all__ = ["QuantWeight", "set_backend", "get_backend", "set_attention_backend", "backend", *_OPS]


def set_backend(name: str) -> None:
    """Override the backend of every op ("auto" | "ref" | "triton"); prefer the scoped `backend()`."""
    if name not in _BACKENDS:
        raise ValueError(f"unknown kernel backend {name!r}")
    _OVERRIDE["all"] = name


def get_backend() -> str:
    return _OVERRIDE["all"]


def set_attention_backend(name: str | None) -> None:
    """Override the backend of the attention/indexer/compressor ops only (tests: Triton attention
    inside an otherwise-torch model); None: follow set_backend."""
    if name not in (None, *_BACKENDS):
        raise ValueError(f"unknown kernel backend {name!r}")
    _OVERRIDE["attention"] = name


@contextlib.contextmanager
def backend(name: str, ops: str = "all"):
    """Scoped override: `with kernels.backend("ref"): ...` (ops="attention": those ops only); the
    previous setting comes back on exit, also after an exception."""
    if ops not in _OVERRIDE:
        raise ValueError(f"unknown op group {ops!r} (choose from {', '.join(_OVERRIDE)})")
    if name not in _BACKENDS:
        raise ValueError(f"unknown kernel backend {name!r}")
    saved = _OVERRIDE[ops]
    _OVERRIDE[ops] = name
    try:
        yield
    finally:
        _OVERRIDE[ops] = saved


def _impl(op: str, t):
    """The module implementing `op` for tensor `t` under the current override (Triton modules are
    imported on first use)."""
    ref, tri, group = _OPS[op]
    b = (_OVERRIDE[group] if group != "main" else None) or _OVERRIDE["all"]
    if b == "triton" or (b == "auto" and t.is_cuda):
        return importlib.import_module(f"kernels.triton.{tri}")
    return ref


# ---- MoE (issue 6) -------------------------------------------------------------------------------
def moe_route(logits, topk: int, routed_scaling: float, renorm: bool = True, bias=None, tid2eid=None,
              input_ids=None):
    """Router tail: sqrt(softplus(logits)) -> bias top-k (or tid2eid[input_ids]) -> renorm * scaling.
    -> (weights [N, k] fp32, ids [N, k] int32). See kernels.ref.routing.moe_route."""
    impl = _impl("moe_route", logits)
    return impl.moe_route(logits, topk, routed_scaling, renorm, bias, tid2eid, input_ids)


def moe_align(ids, num_experts: int, block_m: int):
    """Token->expert sort into `block_m`-aligned expert blocks -> (sorted_ids, expert_ids, num_post_padded)."""
    impl = _impl("moe_align", ids)
    return impl.moe_align(ids, num_experts, block_m)


def moe_experts(x, w1, w3, w2, weights, ids, limit: float, act_quant: bool = False) -> torch.Tensor:
    """Routed experts (clamped SwiGLU) and weighted combine -> [N, d] fp32. Weights: stacked tensors or
    QuantWeight stacks (fp8 / MXFP4); `act_quant`: FP8 activations per 1x128 block. See kernels.ref.moe."""
    return _impl("moe_experts", x).moe_experts(x, w1, w3, w2, weights, ids, limit, act_quant=act_quant)


# ---- dense linears (issue 6) ---------------------------------------------------------------------
def fp8_linear(x, w, scale, act_quant: bool = False, out_dtype=None) -> torch.Tensor:
    """y = x @ dequant(w)^T with w float8_e4m3fn [N, K] and UE8M0 scale [ceil(N/128), ceil(K/128)]."""
    impl = _impl("fp8_linear", x)
    return impl.fp8_linear(x, w, scale, act_quant, out_dtype)


def act_quant(x, pad_to: int = 1):
    """FP8 activation quantization, the reference act_quant: x [M, K] -> (codes float8_e4m3fn [Mp, K], UE8M0
    power-of-two scales fp32 [Mp, K/128], M-major storage); Mp = M rounded up to a multiple of pad_to, padding
    rows quantize zeros."""
    return _impl("act_quant", x).act_quant(x, pad_to)


def linear(x, weight, fp32: bool = False) -> torch.Tensor:
    """Linear layer entry: QuantWeight (fp8) -> FP8 block linear; plain tensor -> F.linear (fp32 if asked:
    on CUDA one kernel with bf16 operands and fp32 accumulation/output, no casts)."""
    impl = _impl("linear", x)
    return impl.linear(x, weight, fp32)


def logits_linear(x, weight) -> torch.Tensor:
    """The LM head: x [S, d] W^T -> [S, vocab] fp32 logits (on CUDA, from the measured rows, one GEMM with
    fp32 output instead of x's dtype plus a cast)."""
    impl = _impl("logits_linear", x)
    return impl.logits_linear(x, weight)


def grouped_linear(x, weight, groups: int) -> torch.Tensor:
    """x [N, g, K] x weight [g*r, K] (plain or QuantWeight fp8) -> [N, g, r]: group j uses rows
    [j*r, (j+1)*r) (the grouped wo_a). One launch on CUDA."""
    impl = _impl("grouped_linear", x)
    return impl.grouped_linear(x, weight, groups)


def swiglu_linear(x, w1, w3, limit: float) -> torch.Tensor:
    """silu(min(x W1^T, L)) * clamp(x W3^T, -L, L) in x's dtype (the shared expert's hidden)."""
    impl = _impl("swiglu_linear", x)
    return impl.swiglu_linear(x, w1, w3, limit)


def compressor_project(x, wkv, wgate, ape, positions, ratio: int):
    """Compressor projections -> (kv fp32, score fp32 incl. ape[positions % ratio])."""
    impl = _impl("compressor_project", x)
    return impl.compressor_project(x, wkv, wgate, ape, positions, ratio)


def norm_linear(x, norm_weight, eps: float, weight) -> torch.Tensor:
    """linear(RMSNorm(x), W): the norm as the GEMM's prologue on CUDA with FP8 weights (q_norm -> wq_b)."""
    impl = _impl("norm_linear", x)
    return impl.norm_linear(x, norm_weight, eps, weight)


def linear_scaled(x, weight, alpha: float) -> torch.Tensor:
    """linear(x, W) in x's dtype, then fp32 * alpha (indexer head weights)."""
    impl = _impl("linear_scaled", x)
    return impl.linear_scaled(x, weight, alpha)


# ---- glue: mHC, norms, RoPE (issue 17) -----------------------------------------------------------
def hc_pre(x, fn, base, scale, hc: int, iters: int, hc_eps: float, norm_eps: float, norm_weight=None):
    """mHC pre-mix of streams x [N, hc, d] -> (u [N, d] (RMSNorm'ed with norm_weight if given),
    post [N, hc] fp32, comb [N, hc, hc] fp32 after `iters` Sinkhorn steps). See kernels.ref.mhc."""
    impl = _impl("hc_pre", x)
    return impl.hc_pre(x, fn, base, scale, hc, iters, hc_eps, norm_eps, norm_weight)


def hc_post(o, x, post, comb) -> torch.Tensor:
    """mHC post-mix: X'[j] = post[j] * o + sum_i comb[i, j] * X[i]."""
    impl = _impl("hc_post", x)
    return impl.hc_post(o, x, post, comb)


def hc_post_pre(o, x, post, comb, fn, base, scale, hc: int, iters: int, hc_eps: float, norm_eps: float,
                norm_weight=None):
    """hc_post then the next site's hc_pre -> (x', u, post', comb'); one pass over the streams on CUDA."""
    impl = _impl("hc_post_pre", x)
    return impl.hc_post_pre(o, x, post, comb, fn, base, scale, hc, iters, hc_eps, norm_eps, norm_weight)


def hc_head(x, fn, base, scale, hc_eps: float, norm_eps: float, norm_weight=None) -> torch.Tensor:
    """Final stream collapse [N, hc, d] -> [N, d] (then RMSNorm with norm_weight if given)."""
    impl = _impl("hc_head", x)
    return impl.hc_head(x, fn, base, scale, hc_eps, norm_eps, norm_weight)


def rms_norm(x, weight, eps: float) -> torch.Tensor:
    """RMSNorm over the last dim (weight None: weightless), fp32 math, x's dtype."""
    impl = _impl("rms_norm", x)
    return impl.rms_norm(x, weight, eps)


def rope(x, cos, sin, inverse: bool = False) -> torch.Tensor:
    """Interleaved partial RoPE of the trailing 2*cos.shape[-1] channels (inverse: conjugate)."""
    impl = _impl("rope", x)
    return impl.rope(x, cos, sin, inverse)


def norm_rope(x, weight, eps, cos, sin, inverse: bool = False, out_dtype=None, rotate: bool = False) -> torch.Tensor:
    """rms_norm (eps None: none) then rope (cos None: none) then (rotate) times the Hadamard matrix (queries
    for MXFP4 index keys) then a cast, per row of x [N, (H,) D]."""
    impl = _impl("norm_rope", x)
    return impl.norm_rope(x, weight, eps, cos, sin, inverse, out_dtype, rotate)


def add_cast(a, b, out_dtype) -> torch.Tensor:
    """(a + b.float()).to(out_dtype)."""
    impl = _impl("add_cast", a)
    return impl.add_cast(a, b, out_dtype)


def swiglu(g, v, limit: float, out_dtype) -> torch.Tensor:
    """silu(min(g, limit)) * clamp(v, -limit, limit) in fp32 -> out_dtype (g, v the same shape)."""
    return _impl("swiglu", g).swiglu(g, v, limit, out_dtype)


# ---- state rows (speculative rollback, issue 13) ------------------------------------------------
def row_copy(tensors, sets, i0, i1, buf, to_buf: bool, keep=None) -> None:
    """Rows of many tensors <-> one byte buffer in one launch (contract: kernels/ref/row_copy.py):
    tensor t's rows (i0[sets[t], r], i1[sets[t], r]), r < R; to_buf saves, else restores where `keep`."""
    impl = _impl("row_copy", buf)
    impl.row_copy(tensors, sets, i0, i1, buf, to_buf, keep)


def spec_row_copy(tensors, kinds, slots, first_pos, tables, n: int, block_size: int, buf, to_buf: bool,
                  bound=None) -> None:
    """The rows positions first_pos[b] + j (j < n) write (kinds[t]: (0, ring length) or (1, compress ratio))
    <-> buf, indices computed in the kernel: one launch (contract: kernels/ref/row_copy.spec_row_copy)."""
    impl = _impl("spec_row_copy", buf)
    impl.spec_row_copy(tensors, kinds, slots, first_pos, tables, n, block_size, buf, to_buf, bound)


# ---- attention / indexer / compressor (issue 5) ----------------------------------------------
# Every op takes the batch's AttnMeta (kernels/attn_meta.py). Storage tensors are dense (the model's
# KV dtype, the "bf16" format and parity reference) or packed FP8 (uint8 rows).


def kv_pack(kv, ring, rope_dim: int):
    """Chunk K=V [N, c] -> rows in the ring's storage format (dense cast or 584-byte FP8 pack)."""
    return _impl("kv_pack", kv).kv_pack(kv, ring, rope_dim)


def kv_entries(x, weight, eps, cos, sin, ring, rope_dim: int):
    """The chunk's K=V rows [N, c]: kv_norm + RoPE, then the ring's storage format (= kv_pack(norm_rope(...));
    one kernel on CUDA, the FP8 pack included)."""
    return _impl("kv_entries", x).kv_entries(x, weight, eps, cos, sin, ring, rope_dim)


def window_store(kv_cur, ring, meta) -> None:
    """Store each sequence's last min(n, W) chunk rows into its window ring (after attention)."""
    return _impl("window_store", kv_cur).window_store(kv_cur, ring, meta)


def sparse_attention(q, kv_cur, ring, pool, topk_idx, meta, sink, *, ratio: int, scale: float, rope_dim: int,
                     out_rope=None):
    """Window + compressed-entry attention with per-head sink, decode and (chunked) prefill; out_rope (cos, sin):
    the output inverse-roped. See kernels.ref.attention.sparse_attention for the semantics."""
    return _impl("sparse_attention", q).sparse_attention(q, kv_cur, ring, pool, topk_idx, meta, sink, ratio=ratio,
                                                         scale=scale, rope_dim=rope_dim, out_rope=out_rope)


def indexer_topk(q, w, keys, meta, topk: int, *, ratio: int = 4, key_format: str, score_fp8: bool | None = None,
                 reduce_scores=None):
    """Lightning-indexer scores + top-k -> [N, topk] int32 entry indices, -1 = none. `key_format`:
    "dense" | "fp8" | "fp4", the format of `keys` (the state's KVFormat.index_keys); for "fp4" (keys stored
    rotated by the Hadamard matrix) q comes rotated too (norm_rope(rotate=True), kv_fp8.rotate_for_keys).
    `score_fp8`: q and k as FP8 with per-row scales (triton/indexer_fp8.py); None = the backend's choice
    (Triton: prefill-sized chunks on the measured GPU class, per sequence: indexer_fp8.fp8_sequences; the
    twin: never).
    `reduce_scores`: called in place on every block of scores before its top-k (tensor parallelism: q / w hold
    this rank's heads and the callback all-reduces the head-partial scores, so every rank selects the same
    entries from bounded score tiles)."""
    return _impl("indexer_topk", q).indexer_topk(q, w, keys, meta, topk, ratio=ratio, key_format=key_format,
                                                 score_fp8=score_fp8, reduce_scores=reduce_scores)


def compress_and_store(kv, score, kv_tail, score_tail, norm_weight, inv_freq, pool, meta, *, ratio: int,
                       overlap: bool, eps: float, index_keys: str | None = None) -> None:
    """Gated pooling + RMSNorm + RoPE of every entry closed by the chunk, paged write, tail update.
    `index_keys`: None = main entries, else the indexer keys' format ("dense" | "fp8" | "fp4")."""
    return _impl("compress_and_store", kv).compress_and_store(kv, score, kv_tail, score_tail, norm_weight, inv_freq,
                                                              pool, meta, ratio=ratio, overlap=overlap, eps=eps,
                                                              index_keys=index_keys)
