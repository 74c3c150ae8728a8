"""MoE prefill through torch's bf16 grouped GEMM (`torch._grouped_mm`): the lossless large-M path.

Many tokens per expert make the routed experts a GEMM problem: the fused Triton kernel (moe.py) converts
MXFP4 in its inner loop; here every expert is dequantized once per call to bf16 (`_dequant_mxfp4_kernel`,
bit-exact with kernels.codecs.dequant_mxfp4, the twin's weights), and the three GEMMs run as torch grouped
GEMMs over the expert-sorted pairs. The products are the twin's (bf16 x bf16, bf16 outputs like its
F.linear), so only the fp32 summation order differs. Steps, all on the device (no host sync):

  sort pairs by expert (stable) -> end offsets per expert -> gather x (FP8 fake-quant when act_quant)
  -> g = x W1^T, v = x W3^T (grouped) -> h = silu(min(g, L)) * clamp(v, -L, L) * w (bf16, FP8 fake-quant)
  -> y = h W2^T (grouped) -> out[t] = sum_j y[pos(t, j)] (fp32).

The dequantized stack is transient (one matrix at a time: E x N x K bf16). `moe.moe_experts` picks this
path per shape from a measured table (docs/benchmarks.md, "Prefill kernels").
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import moe_prefill_fp8 as fp8ops
from .common import act_quant_tile, interpreting
from .device_memory import allocatable_bytes


@triton.jit
def _dequant_mxfp4_kernel(p_ptr, s_ptr, out_ptr, R, KH, BR: tl.constexpr, BKH: tl.constexpr):
    """Packed int8 [R, KH] (low nibble = even k) + UE8M0 [R, 2*KH/32] -> bf16 [R, 2*KH]; fp32 value * scale
    rounded once, as the twin's codec does. Each scale byte is loaded and turned into its fp32 factor once per
    16 packed bytes (2^(s-127); byte 0 is the fp32 subnormal 2^-127), then broadcast over its group."""
    NG: tl.constexpr = BKH // 16
    rows = tl.program_id(0) * BR + tl.arange(0, BR)
    jj = tl.program_id(1) * BKH + tl.arange(0, BKH)
    gg = tl.program_id(1) * NG + tl.arange(0, NG)
    r64 = rows.to(tl.int64)
    rm = rows < R
    m = rm[:, None] & (jj < KH)[None, :]
    b = tl.load(p_ptr + r64[:, None] * KH + jj[None, :], mask=m, other=0).to(tl.int32) & 0xFF
    s = tl.load(s_ptr + r64[:, None] * (KH // 16) + gg[None, :], mask=rm[:, None] & (gg < KH // 16)[None, :],
                other=127).to(tl.int32) & 0xFF
    sc = tl.where(s == 0, 1 << 22, s << 23).to(tl.float32, bitcast=True)  # [BR, NG]
    sc = tl.reshape(tl.broadcast_to(sc[:, :, None], (BR, NG, 16)), (BR, BKH))
    lo = _e2m1(b & 0xF) * sc
    hi = _e2m1(b >> 4) * sc
    v = tl.reshape(tl.join(lo, hi), (BR, 2 * BKH)).to(tl.bfloat16)
    kk = 2 * (tl.program_id(1) * BKH) + tl.arange(0, 2 * BKH)
    tl.store(out_ptr + r64[:, None] * (2 * KH) + kk[None, :], v, mask=rm[:, None] & (kk < 2 * KH)[None, :])


@triton.jit
def _e2m1(c):
    """E2M1 code (int32 0..15) -> fp32 value, built from the bits: 0, 0.5, 1, 1.5, 2, 3, 4, 6 and negatives."""
    e = (c >> 1) & 3
    mt = c & 1
    bits = tl.where(e == 0, mt * (126 << 23), ((126 + e) << 23) | (mt << 22)) | ((c & 8) << 28)
    return bits.to(tl.float32, bitcast=True)


def dequant_mxfp4(w) -> torch.Tensor:
    """QuantWeight (fp4) [E, N, K/2] + scales [E, N, K/32] -> bf16 [E, N, K] (== codecs.dequant_mxfp4)."""
    data, scale = w.data, w.scale.view(torch.uint8)
    *lead, n, kh = data.shape
    rows = data.numel() // kh
    out = torch.empty(*lead, n, 2 * kh, dtype=torch.bfloat16, device=data.device)
    br, bkh = (16, 256)
    _dequant_mxfp4_kernel[(triton.cdiv(rows, br), triton.cdiv(kh, bkh))](
        data.contiguous(), scale.contiguous(), out, rows, kh, BR=br, BKH=bkh, num_warps=4)
    return out


@triton.jit(do_not_specialize=["P"], do_not_specialize_on_alignment=["tok_ptr"])
def _gather_kernel(x_ptr, tok_ptr, out_ptr, P, D, QUANT: tl.constexpr, INTERP: tl.constexpr, BR: tl.constexpr,
                   BD: tl.constexpr):
    """out[i] = x[tok[i]] (optionally FP8 fake-quantized per 1x128 block: exact in bf16)."""
    rows = tl.program_id(0) * BR + tl.arange(0, BR)
    cc = tl.program_id(1) * BD + tl.arange(0, BD)
    rm = rows < P
    t = tl.load(tok_ptr + rows, mask=rm, other=0).to(tl.int64)
    m = rm[:, None] & (cc < D)[None, :]
    a = tl.load(x_ptr + t[:, None] * D + cc[None, :], mask=m, other=0.0)
    if QUANT:
        aq, s = act_quant_tile(a, INTERP)
        a = aq.to(tl.float32) * s[:, None]
    tl.store(out_ptr + rows.to(tl.int64)[:, None] * D + cc[None, :], a.to(out_ptr.dtype.element_ty), mask=m)


@triton.jit(do_not_specialize=["P"])
def _swiglu_kernel(g_ptr, v_ptr, w_ptr, h_ptr, P, I, limit, QUANT: tl.constexpr, INTERP: tl.constexpr,
                   BR: tl.constexpr, BI: tl.constexpr):
    """h = silu(min(g, L)) * clamp(v, -L, L) * w (rounded to h's dtype, then FP8 fake-quant per 1x128 block)."""
    rows = tl.program_id(0) * BR + tl.arange(0, BR)
    cc = tl.program_id(1) * BI + tl.arange(0, BI)
    rm = rows < P
    m = rm[:, None] & (cc < I)[None, :]
    off = rows.to(tl.int64)[:, None] * I + cc[None, :]
    g = tl.minimum(tl.load(g_ptr + off, mask=m, other=0.0).to(tl.float32), limit)
    v = tl.minimum(tl.maximum(tl.load(v_ptr + off, mask=m, other=0.0).to(tl.float32), -limit), limit)
    w = tl.load(w_ptr + rows, mask=rm, other=0.0)
    h = g / (1.0 + tl.exp(-g)) * v * w[:, None]
    if INTERP:  # the interpreter's fp32 -> bf16 cast truncates: round to nearest even by hand first
        b = h.to(tl.int32, bitcast=True)
        h = ((b + 0x7FFF + ((b >> 16) & 1)) & -65536).to(tl.float32, bitcast=True)
    h = h.to(h_ptr.dtype.element_ty)
    if QUANT:
        hq, s = act_quant_tile(h, INTERP)
        h = (hq.to(tl.float32) * s[:, None]).to(h_ptr.dtype.element_ty)
    tl.store(h_ptr + off, h, mask=m)


@triton.jit(do_not_specialize=["N"], do_not_specialize_on_alignment=["pos_ptr"])
def _combine_kernel(y_ptr, pos_ptr, out_ptr, N, D, TOPK: tl.constexpr, BD: tl.constexpr):
    """out[t] = sum_j y[pos[t*k + j]] in fp32 (every output row written: no zero fill)."""
    t = tl.program_id(0).to(tl.int64)
    cc = tl.program_id(1) * BD + tl.arange(0, BD)
    cm = cc < D
    acc = tl.zeros([BD], dtype=tl.float32)
    for j in tl.static_range(TOPK):
        p = tl.load(pos_ptr + t * TOPK + j).to(tl.int64)
        acc += tl.load(y_ptr + p * D + cc, mask=cm, other=0.0).to(tl.float32)
    tl.store(out_ptr + t * D + cc, acc, mask=cm)


def _dense(w, dtype):
    """Expert stack as dtype [E, N, K]: MXFP4 through the dequant kernel, plain tensors cast."""
    if isinstance(w, torch.Tensor):
        return w if w.dtype == dtype else w.to(dtype)
    if w.fmt == "fp4" and dtype == torch.bfloat16:
        return dequant_mxfp4(w)
    from ..ref.quant import dequant
    return dequant(w, dtype)


def _gmm(a, w, offs, dtype):
    wd = _dense(w, dtype)
    y = torch._grouped_mm(a, wd.transpose(-2, -1), offs=offs)
    del wd
    return y


def moe_experts_grouped(x, w1, w3, w2, weights, ids, limit, act_quant=False, fp8_operands=None):
    """Same contract as kernels.ref.moe.moe_experts -> [N, d] fp32 (bf16 activations). `fp8_operands`: the
    E4M3 path of moe_prefill_fp8.py (None: as `moe_prefill_fp8.available` decides: on the measured GPU class)."""
    if x.dtype != torch.bfloat16:
        raise ValueError(f"the grouped-GEMM MoE path takes bf16 activations, got {x.dtype}")
    x = x.contiguous()
    n, d = x.shape
    k = ids.shape[1]
    num_e, inter = w1.shape[0], w1.shape[1]
    p = n * k
    dev = x.device
    if p == 0:
        return torch.zeros(n, d, dtype=torch.float32, device=dev)
    flat = ids.reshape(-1).to(torch.int64)
    sorted_e, order = torch.sort(flat, stable=True)
    offs = torch.searchsorted(sorted_e, torch.arange(num_e, device=dev), right=True).to(torch.int32)
    pos = torch.empty_like(order)
    pos[order] = torch.arange(p, device=dev)
    tok = (order // k).to(torch.int32)
    wsel = weights.reshape(-1).float()[order].contiguous()
    interp = interpreting()
    br = 16
    if fp8_operands is None:
        fp8_operands = fp8ops.available(x, act_quant)
    if fp8_operands:  # E4M3 experts x row-scaled E4M3 activations (moe_prefill_fp8.py), the gather fused
        if act_quant or isinstance(w1, torch.Tensor) or w1.fmt != "fp4":
            raise ValueError("the FP8-operand MoE prefill takes MXFP4 experts and bf16 activations (no act_quant)")
        xq, xsc = fp8ops.row_quant(x, tok)
        g = fp8ops.scaled_gmm(xq, xsc, w1, offs)
        v = fp8ops.scaled_gmm(xq, xsc, w3, offs)
        del xq, xsc
    else:
        xs = torch.empty(p, d, dtype=x.dtype, device=dev)
        _gather_kernel[(triton.cdiv(p, br), triton.cdiv(d, 128))](x, tok, xs, p, d, QUANT=act_quant, INTERP=interp,
                                                                 BR=br, BD=128, num_warps=4)
        g = _gmm(xs, w1, offs, x.dtype)
        v = _gmm(xs, w3, offs, x.dtype)
        del xs
    h = torch.empty(p, inter, dtype=x.dtype, device=dev)
    _swiglu_kernel[(triton.cdiv(p, br), triton.cdiv(inter, 128))](g, v, wsel, h, p, inter, float(limit),
                                                                  QUANT=act_quant, INTERP=interp, BR=br, BI=128,
                                                                  num_warps=4)
    del g, v
    if fp8_operands:
        hq, hsc = fp8ops.row_quant(h)
        del h
        y = fp8ops.scaled_gmm(hq, hsc, w2, offs)
    else:
        y = _gmm(h, w2, offs, x.dtype)
    out = torch.empty(n, d, dtype=torch.float32, device=dev)
    bd = 128 if interp else 1024
    _combine_kernel[(n, triton.cdiv(d, bd))](y, pos, out, n, d, TOPK=k, BD=bd, num_warps=4)
    return out


# Measured per call on one H200 (bench/prefill_entries.py `moe_prefill`, V4-Flash experts: 256 x MXFP4
# [2048, 4096], top-6, uniform routing; docs/benchmarks.md "Prefill kernels"): fused Triton kernel vs this path
#   tokens  pairs/expert  fused (ms)  grouped (ms)
#   4,096        96          ~8.4*      11.39     -> fused      (* not captured; fused scales ~linearly)
#   8,192       192          13.16      12.25     -> grouped
#  16,384       384          22.59      16.91     -> grouped
# With FP8 operands (moe_prefill_fp8.py; session 9, same bench, the prmt copy): 4,096 tokens fused 6.78 vs grouped
# FP8 5.47 ms, 8,192: 13.05 vs 6.77, 16,384: 22.19 vs 10.34 -> grouped from 96 pairs per expert (fewer: unmeasured).
MIN_PAIRS_PER_EXPERT = 192  # MXFP4 experts, bf16 activations, bf16 operands
MIN_PAIRS_PER_EXPERT_FP8 = 96  # the same with E4M3 operands
MEM_MARGIN = 1 << 30  # bytes kept free beyond the transient buffers


def transient_bytes(n: int, k: int, d: int, inter: int, num_e: int, weight_bytes: int = 2) -> int:
    """Peak extra device bytes of moe_experts_grouped: one dequantized stack (`weight_bytes` an element: 2 bf16,
    1 E4M3) + the activations (counted at bf16 width for both paths)."""
    return num_e * inter * d * weight_bytes + n * k * (2 * d + 3 * inter) * 2 + n * d * 4


def use_grouped(x, w1, ids, act_quant=False, fp8: bool | None = None) -> bool:
    """The measured table above: MXFP4 experts, bf16 activations on CUDA, >= MIN_PAIRS_PER_EXPERT pairs per
    expert, and room for the transient dequantized stack (device_memory.allocatable_bytes: no device sync per
    call; asking the driver every call is the suspected cause of ~9 s of GPU idle in a 1M-token prompt). `fp8`:
    the caller's `moe_prefill_fp8.available(x, act_quant)` (None: asked here), passed on to moe_experts_grouped."""
    if interpreting() or not x.is_cuda or x.dtype != torch.bfloat16 or not hasattr(torch, "_grouped_mm"):
        return False
    if isinstance(w1, torch.Tensor) or w1.fmt != "fp4":
        return False
    n, k = ids.shape
    num_e, inter, d = w1.shape[0], w1.shape[1], x.shape[1]
    fp8 = fp8ops.available(x, act_quant) if fp8 is None else fp8
    if n * k < (MIN_PAIRS_PER_EXPERT_FP8 if fp8 else MIN_PAIRS_PER_EXPERT) * num_e:
        return False
    need = transient_bytes(n, k, d, inter, num_e, 1 if fp8 else 2)
    return allocatable_bytes(x.device) >= need + MEM_MARGIN
