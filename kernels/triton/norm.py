"""Triton normalisation / RoPE glue: one program per row (token, or token x head).

`norm_rope`: optional RMSNorm (weighted or weightless) over the row, then interleaved partial RoPE
of the trailing r = 2 * cos.shape[-1] channels (pairs 2i, 2i+1; inverse = conjugate), then a cast, or
(`norm_rope_pack`, the attention's kv_entries on an FP8 ring) one packed FP8 KV entry per row. `rotate`: the
row times the Hadamard matrix before the cast (indexer queries for MXFP4 keys; two Kronecker factors, no GEMM).
Each step rounds to x's dtype as the separate torch ops do. `add_cast`: (a + b) -> dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import rope_pair
from .kv_entry import store_entry_fp8_row


@triton.jit
def _signs(n: tl.constexpr):
    """[n, n] Sylvester Hadamard signs (-1)^popcount(i & k), n a power of two <= 2^15."""
    i = tl.arange(0, n)
    par = i[:, None] & i[None, :]
    par = par ^ (par >> 8)
    par = par ^ (par >> 4)
    par = par ^ (par >> 2)
    par = par ^ (par >> 1)
    return tl.where((par & 1) == 1, -1.0, 1.0)


@triton.jit
def _hadamard(v, RA: tl.constexpr, RB: tl.constexpr):
    """H_(RA*RB) v (unnormalized) for v [RA * RB] fp32: the Kronecker split, RA * RB * (RA + RB) products."""
    x = tl.reshape(v, [RA, RB])
    t = tl.sum(_signs(RA)[:, :, None] * x[None, :, :], axis=1)  # [a, b'] = sum_a' H[a, a'] x[a', b']
    y = tl.sum(t[:, None, :] * _signs(RB)[None, :, :], axis=2)  # [a, b] = sum_b' t[a, b'] H[b, b']
    return tl.reshape(y, [RA * RB])


@triton.jit
def _norm_rope_kernel(x_ptr, w_ptr, cos_ptr, sin_ptr, y_ptr, H, D, R2, eps, stride_xr, stride_cs,
                      BH: tl.constexpr, NORM: tl.constexpr, HAS_W: tl.constexpr, ROPE: tl.constexpr,
                      INVERSE: tl.constexpr, PACK: tl.constexpr = False, ROW: tl.constexpr = 0,
                      NOPE: tl.constexpr = 0, R: tl.constexpr = 0, ROTATE: tl.constexpr = False,
                      RA: tl.constexpr = 1, RB: tl.constexpr = 1):
    row = tl.program_id(0).to(tl.int64)
    tok = row // H
    p = tl.arange(0, BH)  # pair index: channels 2p, 2p+1
    pmask = p < D // 2
    x_dt = x_ptr.dtype.element_ty
    xb = x_ptr + row * stride_xr
    x0 = tl.load(xb + 2 * p, mask=pmask, other=0.0).to(tl.float32)
    x1 = tl.load(xb + 2 * p + 1, mask=pmask, other=0.0).to(tl.float32)
    if NORM:
        r = 1.0 / tl.sqrt((tl.sum(x0 * x0, axis=0) + tl.sum(x1 * x1, axis=0)) / D + eps)
        x0 = x0 * r
        x1 = x1 * r
        if HAS_W:
            x0 = tl.load(w_ptr + 2 * p, mask=pmask, other=0.0).to(tl.float32) * x0
            x1 = tl.load(w_ptr + 2 * p + 1, mask=pmask, other=0.0).to(tl.float32) * x1
        x0 = x0.to(x_dt).to(tl.float32)
        x1 = x1.to(x_dt).to(tl.float32)
    if ROPE:
        j = p - (D // 2 - R2)
        rmask = pmask & (j >= 0)
        c = tl.load(cos_ptr + tok * stride_cs + j, mask=rmask, other=1.0)
        s = tl.load(sin_ptr + tok * stride_cs + j, mask=rmask, other=0.0)
        if INVERSE:
            s = -s
        y0, y1 = rope_pair(x0, x1, c, s)
        x0 = tl.where(rmask, y0, x0).to(x_dt).to(tl.float32)
        x1 = tl.where(rmask, y1, x1).to(x_dt).to(tl.float32)
    if ROTATE:  # y = x @ H (Sylvester order, D = 2 * BH): y[2i + j] = (H_BH (x0 + (-1)^j x1))[i] / sqrt(D), and
        # H_BH = H_RA (x) H_RB (BH = RA * RB, i = RB * a + b): Y = H_RA X H_RB on X = the vector as [RA, RB]
        scale = 1.0 / tl.sqrt(D.to(tl.float32))  # D == 2 * BH (norm_rope checks the power of two)
        x0, x1 = (_hadamard(x0 + x1, RA, RB) * scale, _hadamard(x0 - x1, RA, RB) * scale)
    if PACK:  # the row (D = 2 * BH channels, pairs interleaved back) -> one packed FP8 KV entry of ROW bytes
        store_entry_fp8_row(tl.reshape(tl.join(x0, x1), [2 * BH]), y_ptr + row * ROW, 2 * BH, NOPE, R, ROW)
    else:
        yb = y_ptr + row * D
        tl.store(yb + 2 * p, x0.to(y_ptr.dtype.element_ty), mask=pmask)
        tl.store(yb + 2 * p + 1, x1.to(y_ptr.dtype.element_ty), mask=pmask)


def norm_rope(x, weight, eps, cos, sin, inverse=False, out_dtype=None, rotate=False):
    """Same contract as kernels.ref.norm.norm_rope (rotate: the row width a power of two)."""
    d = x.shape[-1]
    if rotate and d & (d - 1):
        raise ValueError(f"norm_rope(rotate=True): the Hadamard rotation needs a power-of-two row width, got {d}")
    y = torch.empty(x.shape, dtype=out_dtype or x.dtype, device=x.device)
    return _launch(x, weight, eps, cos, sin, inverse, y, rotate=rotate)


def norm_rope_pack(x, weight, eps, cos, sin, row_bytes: int, rope_dim: int):
    """norm_rope of the rows x [N, D] (D a power of two, its nope part D - rope_dim whole 64-dim blocks), each
    row then packed as one FP8 KV entry (kernels/ref/kv_fp8.pack_entry, rope = the last rope_dim dims) ->
    uint8 [N, row_bytes]. Equal to kv_pack(norm_rope(x, ...)) byte for byte: the values are rounded to x's
    dtype before packing, as the two-kernel path stores and reloads them."""
    n, d = x.shape
    if d & (d - 1) or (d - rope_dim) % 64 or not 0 <= rope_dim < d:
        raise ValueError(f"norm_rope_pack: row width {d} must be a power of two with whole 64-dim nope blocks "
                         f"(rope_dim {rope_dim})")
    y = torch.empty((n, row_bytes), dtype=torch.uint8, device=x.device)
    return _launch(x, weight, eps, cos, sin, False, y, pack=(row_bytes, d - rope_dim, rope_dim))


def _launch(x, weight, eps, cos, sin, inverse, y, pack=None, rotate=False):
    d = x.shape[-1]
    if d % 2:
        raise ValueError("norm_rope needs an even row width")
    rows = x.reshape(-1, d)
    if rows.stride(-1) != 1:
        rows = rows.contiguous()
    n_tok = x.shape[0]
    h = rows.shape[0] // max(n_tok, 1)
    if rows.shape[0] == 0:
        return y
    rope = cos is not None
    r2 = cos.shape[-1] if rope else 0
    if rope:
        cos, sin = cos.float().contiguous(), sin.float().contiguous()
    bh = triton.next_power_of_2(d // 2)
    ra = 1 << (bh.bit_length() - 1) // 2  # the rotation's Kronecker split bh = ra * (bh // ra)
    row_bytes, nope, r = pack or (0, 0, 0)
    _norm_rope_kernel[(rows.shape[0],)](
        rows, weight if weight is not None else rows, cos if rope else rows, sin if rope else rows, y,
        h, d, r2, float(eps or 0.0), rows.stride(0), cos.stride(0) if rope else 0,
        BH=bh, NORM=eps is not None, HAS_W=weight is not None, ROPE=rope, INVERSE=inverse,
        PACK=pack is not None, ROW=row_bytes, NOPE=nope, R=r, ROTATE=rotate, RA=ra, RB=bh // ra,
        num_warps=max(1, min(8, bh // 128)))
    return y


def rms_norm(x, weight, eps):
    """Same contract as kernels.ref.norm.rms_norm."""
    return norm_rope(x, weight, eps, None, None)


def rope(x, cos, sin, inverse=False):
    """Same contract as kernels.ref.norm.rope."""
    return norm_rope(x, None, None, cos, sin, inverse)


@triton.jit(do_not_specialize=["numel"])
def _add_cast_kernel(a_ptr, b_ptr, y_ptr, numel, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = offs < numel
    a = tl.load(a_ptr + offs, mask=m, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + offs, mask=m, other=0.0).to(tl.float32)
    tl.store(y_ptr + offs, (a + b).to(y_ptr.dtype.element_ty), mask=m)


def add_cast(a, b, out_dtype):
    """Same contract as kernels.ref.norm.add_cast."""
    a, b = a.contiguous(), b.contiguous()
    y = torch.empty(a.shape, dtype=out_dtype, device=a.device)
    if a.numel():
        _add_cast_kernel[(triton.cdiv(a.numel(), 1024),)](a, b, y, a.numel(), BLOCK=1024, num_warps=4)
    return y


@triton.jit(do_not_specialize=["numel"])
def _swiglu_kernel(g_ptr, v_ptr, y_ptr, numel, limit, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = offs < numel
    g = tl.minimum(tl.load(g_ptr + offs, mask=m, other=0.0).to(tl.float32), limit)
    v = tl.load(v_ptr + offs, mask=m, other=0.0).to(tl.float32)
    v = tl.minimum(tl.maximum(v, -limit), limit)
    tl.store(y_ptr + offs, (g / (1.0 + tl.exp(-g)) * v).to(y_ptr.dtype.element_ty), mask=m)


def swiglu(g, v, limit, out_dtype):
    """Same contract as kernels.ref.norm.swiglu: one pass instead of the twin's seven elementwise kernels
    (the epilogue of the scaled FP8 SwiGLU linear, fp8_scaled_mm.scaled_swiglu_linear)."""
    if g.shape != v.shape:
        raise ValueError(f"swiglu gate {tuple(g.shape)} and value {tuple(v.shape)} differ")
    g, v = g.contiguous(), v.contiguous()
    y = torch.empty(g.shape, dtype=out_dtype, device=g.device)
    if g.numel():
        _swiglu_kernel[(triton.cdiv(g.numel(), 1024),)](g, v, y, g.numel(), float(limit), BLOCK=1024, num_warps=4)
    return y
