"""Triton mHC mix for many rows (prefill): the pre-mix projection bandwidth-bound on tensor cores.

`_mix_prefill_kernel` (grid: row tiles x splits of d) has the contract of mhc._mix_kernel: optionally the
post-mix of the previous site, X'[j] = post[j] * o + sum_i comb[i, j] * X[i] (written out in X's dtype), then
partial sums of the `fn` projection of the flattened streams and of their squares -> part [S, N, MP], sq [S, N].
Tiles are [rows, hc, columns], contiguous along the columns, so every X element is read once (the decode
kernel re-reads each source stream once per destination). The projection is fp32-accurate on tensor cores:
bf16 streams are exact bf16 MMA operands and fn is split into three exact bf16 parts, hi + mid + lo (bf16
products are exact in the fp32 accumulator); with `presplit` `_split_fn_kernel` does that once per fn weight
(`_split_fn` keeps the parts on the tensor) and the kernel streams them straight into the MMA. Other dtypes
use 3xTF32 dots. `mhc._mix` calls it for bf16 streams on the GPU and from mhc.PREFILL_ROWS rows on.
`_finish_rows_kernel`: mhc._finish_kernel for BR rows per program (a variant timed by
bench/prefill_entries.py; `mhc._finish(..., br=)`).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .common import derived, interpreting
from .device_info import num_sms


@triton.jit(do_not_specialize=["N", "C_PER"])
def _mix_prefill_kernel(x_ptr, o_ptr, post_ptr, comb_ptr, xo_ptr, fn_ptr, part_ptr, sq_ptr, N, D, MIX, C_PER,
                HC: tl.constexpr, MP: tl.constexpr, BM: tl.constexpr, BC: tl.constexpr, POST: tl.constexpr,
                BF16: tl.constexpr, INTERP: tl.constexpr, PRESPLIT: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_s = tl.program_id(1)
    rows = pid_m * BM + tl.arange(0, BM)
    rmask = rows < N
    r64 = rows.to(tl.int64)
    mm = tl.arange(0, MP)
    hh = tl.arange(0, HC)
    K = HC * D
    acc = tl.zeros([BM, MP], dtype=tl.float32)
    sq = tl.zeros([BM], dtype=tl.float32)
    c_lo = pid_s * C_PER
    r3 = r64[:, None, None]
    h3 = hh[None, :, None]
    rm3 = rmask[:, None, None]
    m3 = mm[:, None, None]
    for c0 in range(c_lo, c_lo + C_PER, BC):
        cc = c0 + tl.arange(0, BC)
        c3 = cc[None, None, :]
        cm3 = c3 < D
        # 3-D tiles [BM, HC, BC] (column c0 + c of stream j), contiguous along BC; reshaped to [BM, HC*BC] for the dot
        if POST:  # X'[j] = post[j] * o + sum_i comb[i, j] * X[i], each X[i] read once
            xf = tl.load(post_ptr + r3 * HC + h3, mask=rm3, other=0.0) * \
                tl.load(o_ptr + r3 * D + c3, mask=rm3 & cm3, other=0.0).to(tl.float32)
            for i in tl.static_range(HC):
                ci = tl.load(comb_ptr + r3 * (HC * HC) + i * HC + h3, mask=rm3, other=0.0)
                xi = tl.load(x_ptr + r3 * K + i * D + c3, mask=rm3 & cm3, other=0.0)
                xf += ci * xi.to(tl.float32)
            xl = xf.to(xo_ptr.dtype.element_ty)
            tl.store(xo_ptr + r3 * K + h3 * D + c3, xl, mask=rm3 & cm3)
        else:
            xl = tl.load(x_ptr + r3 * K + h3 * D + c3, mask=rm3 & cm3, other=0.0)
        xv = xl.to(tl.float32)
        sq += tl.sum(tl.sum(xv * xv, axis=2), axis=1)
        xl = tl.reshape(xl, (BM, HC * BC))
        xv = tl.reshape(xv, (BM, HC * BC))
        fp = fn_ptr + m3 * K + h3 * D + c3  # fn tile [MP, HC, BC] -> fn^T [HC*BC, MP]
        fmask = (m3 < MIX) & cm3
        if PRESPLIT:  # fn as three bf16 parts [3, MP, K] (hi, mid, lo), split once per weight by _split_fn
            lo = tl.trans(tl.reshape(tl.load(fp + 2 * MP * K, mask=fmask, other=0.0), (MP, HC * BC)))
            mid = tl.trans(tl.reshape(tl.load(fp + MP * K, mask=fmask, other=0.0), (MP, HC * BC)))
            hi = tl.trans(tl.reshape(tl.load(fp, mask=fmask, other=0.0), (MP, HC * BC)))
        else:
            f = tl.trans(tl.reshape(tl.load(fp, mask=fmask, other=0.0), (MP, HC * BC)))
            if BF16:  # X is exact in bf16: fn = hi + mid + lo (three exact bf16 parts), bf16 products are exact
                hi = f.to(tl.bfloat16)
                r1 = f - hi.to(tl.float32)
                mid = r1.to(tl.bfloat16)
                lo = (r1 - mid.to(tl.float32)).to(tl.bfloat16)
        if BF16:
            if INTERP:  # (the interpreter's bf16 dot is wrong: the same exact products in fp32)
                acc = tl.dot(xv, lo.to(tl.float32), acc, input_precision="ieee")
                acc = tl.dot(xv, mid.to(tl.float32), acc, input_precision="ieee")
                acc = tl.dot(xv, hi.to(tl.float32), acc, input_precision="ieee")
            else:
                acc = tl.dot(xl, lo, acc)
                acc = tl.dot(xl, mid, acc)
                acc = tl.dot(xl, hi, acc)
        else:
            acc = tl.dot(xv, f, acc, input_precision="tf32x3")  # ~fp32 accuracy on tensor cores
    pbase = (pid_s * N + r64) * MP
    tl.store(part_ptr + pbase[:, None] + mm[None, :], acc, mask=rmask[:, None])
    tl.store(sq_ptr + pid_s * N + rows, sq, mask=rmask)


@triton.jit
def _split_fn_kernel(fn_ptr, out_ptr, MIX, K, MP: tl.constexpr, BK: tl.constexpr):
    """fn [MIX, K] fp32 -> [3, MP, K] bf16: hi + mid + lo == fn exactly (rows >= MIX zero)."""
    r = tl.program_id(0)
    kk = tl.program_id(1) * BK + tl.arange(0, BK)
    km = kk < K
    f = tl.load(fn_ptr + r * K + kk, mask=km & (r < MIX), other=0.0)
    hi = f.to(tl.bfloat16)
    r1 = f - hi.to(tl.float32)
    mid = r1.to(tl.bfloat16)
    lo = (r1 - mid.to(tl.float32)).to(tl.bfloat16)
    tl.store(out_ptr + r * K + kk, hi, mask=km)
    tl.store(out_ptr + (MP + r) * K + kk, mid, mask=km)
    tl.store(out_ptr + (2 * MP + r) * K + kk, lo, mask=km)


@triton.jit(do_not_specialize=["N", "S"])
def _finish_rows_kernel(x_ptr, part_ptr, sq_ptr, base_ptr, scale_ptr, nw_ptr, u_ptr, post_ptr, comb_ptr, N, D, S,
                        iters, hc_eps, norm_eps, HC: tl.constexpr, MP: tl.constexpr, SP: tl.constexpr,
                        BD: tl.constexpr, HEAD: tl.constexpr, NORM: tl.constexpr, BR: tl.constexpr):
    """`_finish_kernel` for BR rows per program (prefill): the mixer math on [BR, hc, hc] tiles, so its
    reductions and barriers are shared by BR rows."""
    rows = tl.program_id(0) * BR + tl.arange(0, BR)
    rm = rows < N
    r64 = rows.to(tl.int64)
    ss = tl.arange(0, SP)
    hh = tl.arange(0, HC)
    m2 = rm[:, None] & (ss < S)[None, :]
    m3 = m2[:, :, None]
    sq = tl.sum(tl.load(sq_ptr + ss[None, :] * N + r64[:, None], mask=m2, other=0.0), axis=1)
    r = (1.0 / tl.sqrt(sq / (HC * D) + norm_eps))[:, None]
    prow = ((ss.to(tl.int64)[None, :] * N + r64[:, None]) * MP)[:, :, None]  # [BR, SP, 1]
    pre_w = tl.sum(tl.load(part_ptr + prow + hh[None, None, :], mask=m3, other=0.0), axis=1) * r
    s0 = tl.load(scale_ptr)
    pre = 1.0 / (1.0 + tl.exp(-(pre_w * s0 + tl.load(base_ptr + hh)[None, :]))) + hc_eps
    if not HEAD:
        s1 = tl.load(scale_ptr + 1)
        s2 = tl.load(scale_ptr + 2)
        post_w = tl.sum(tl.load(part_ptr + prow + HC + hh[None, None, :], mask=m3, other=0.0), axis=1) * r
        post = 2.0 / (1.0 + tl.exp(-(post_w * s1 + tl.load(base_ptr + HC + hh)[None, :])))
        tl.store(post_ptr + r64[:, None] * HC + hh[None, :], post, mask=rm[:, None])
        ij = tl.arange(0, HC * HC)
        cw = tl.sum(tl.load(part_ptr + prow + 2 * HC + ij[None, None, :], mask=m3, other=0.0), axis=1) * r
        logit = tl.reshape(cw * s2 + tl.load(base_ptr + 2 * HC + ij)[None, :], (BR, HC, HC))
        e = tl.exp(logit - tl.max(logit, axis=2)[:, :, None])
        comb = e / tl.sum(e, axis=2)[:, :, None] + hc_eps
        comb = comb / (tl.sum(comb, axis=1)[:, None, :] + hc_eps)
        for _ in range(iters - 1):
            comb = comb / (tl.sum(comb, axis=2)[:, :, None] + hc_eps)
            comb = comb / (tl.sum(comb, axis=1)[:, None, :] + hc_eps)
        tl.store(comb_ptr + r64[:, None] * (HC * HC) + ij[None, :], tl.reshape(comb, (BR, HC * HC)),
                 mask=rm[:, None])
    dd = tl.arange(0, BD)
    dmask = dd < D
    xv = tl.load(x_ptr + r64[:, None, None] * (HC * D) + hh[None, :, None] * D + dd[None, None, :],
                 mask=rm[:, None, None] & dmask[None, None, :], other=0.0)
    u = tl.sum(pre[:, :, None] * xv.to(tl.float32), axis=1).to(u_ptr.dtype.element_ty)
    if NORM:
        uf = u.to(tl.float32)
        ur = 1.0 / tl.sqrt(tl.sum(uf * uf, axis=1) / D + norm_eps)
        w = tl.load(nw_ptr + dd, mask=dmask, other=0.0).to(tl.float32)
        u = (w[None, :] * (uf * ur[:, None])).to(u_ptr.dtype.element_ty)
    tl.store(u_ptr + r64[:, None] * D + dd[None, :], u, mask=rm[:, None] & dmask[None, :])


def _tile(text: str) -> tuple[int, int, int]:
    """'ROWSxCOLSxWARPS' -> (row tile, column tile, warps)."""
    parts = tuple(int(v) for v in text.lower().split("x"))
    if len(parts) != 3 or min(parts) < 1:
        raise ValueError(f"V4_MHC_MIX_TILE={text!r} is not ROWSxCOLSxWARPS, e.g. 128x32x8")
    return parts


# bf16 tiles from 512 rows on: bench mhc_sweep (one H200, session 10, 8,192 rows with the post-mix folded in)
# 128 x 32 x 8 warps 375 us, 64 x 32 x 4 424 us, 64 x 64 x 8 (the earlier default) 590 us; V4_MHC_MIX_TILE (read
# at import, ROWSxCOLSxWARPS) for an A/B
MIX_TILE = _tile(os.environ.get("V4_MHC_MIX_TILE", "128x32x8"))


def mix_config(n: int, dtype=torch.bfloat16) -> tuple[int, int, int, int, bool]:
    """(row tile, column tile, warps, stages, presplit fn) of `_mix_prefill_kernel` for n rows: bf16 streams take
    MIX_TILE from 512 rows on and 64 x 32 tiles / 4 warps below (each X element read once, fn once per row tile) and
    bf16 fn parts split once per weight (`_split_fn`), streamed straight into the MMA; fp32 streams 16-row
    tiles with 3xTF32 dots."""
    if interpreting():
        return 16, 16, 4, 1, False
    if dtype == torch.bfloat16:  # bench mhc_mix_decode / mhc_sweep (one H200): 64 x 32 tiles, 4 warps below 512 rows
        return (*MIX_TILE, 2, True) if n >= 512 else (64, 32, 4, 2, True)
    return 16, 32, 4, 1, False


def _split_fn(fn, mp):
    """fn [MIX, K] fp32 -> its three exact bf16 parts [3, mp, K], once per weight (`common.derived`: the split
    was 17 launches per decode step)."""
    return derived(fn, f"_v4serve_split_fn_{mp}", lambda: _split_fn_now(fn, mp))


def _split_fn_now(fn, mp):
    mix, k = fn.shape
    out = torch.empty(3, mp, k, dtype=torch.bfloat16, device=fn.device)
    bk = 1024
    _split_fn_kernel[(mp, triton.cdiv(k, bk))](fn, out, mix, k, MP=mp, BK=bk, num_warps=4)
    return out


def mix_partials(x, o, n: int, d: int, mp: int, bc: int, split: int):
    """The mix kernels' split of the d = hc*D stream columns into `split` column ranges of whole `bc`-column
    chunks, and their outputs: -> (columns per split, splits actually needed, partial projections
    [split, n, mp] fp32, partial sums of squares [split, n] fp32, the mixed stream (a new tensor when a
    post-mix `o` is folded in, else x itself))."""
    c_per = triton.cdiv(triton.cdiv(d, bc), split) * bc
    split = triton.cdiv(d, c_per)
    part = torch.empty(split, n, mp, dtype=torch.float32, device=x.device)
    sq = torch.empty(split, n, dtype=torch.float32, device=x.device)
    return c_per, split, part, sq, (torch.empty_like(x) if o is not None else x)


# programs per SM the column splits aim for (tiles x splits ~ this x SMs): 2 as measured in session 3.
# V4_MHC_PROGRAMS_PER_SM (A/B switch, read at import): bench `mhc_sweep` at 8,192 rows with MIX_TILE (session
# 10) 2 / 4 / 8 / 16 -> 376 / 366 / 334 / 347 us; not changed until an end-to-end A/B (16,384-row chunks untimed)
PROGRAMS_PER_SM = int(os.environ.get("V4_MHC_PROGRAMS_PER_SM", 2))


def mix_prefill(x, fn, o=None, post=None, comb=None, cfg=None, programs_per_sm: int | None = None):
    """Launch the mix kernel -> (x' (x itself without post), part [S, N, MP], sq [S, N], S)."""
    n, hc, d = x.shape
    mix = fn.shape[0]
    mp = max(16, triton.next_power_of_2(mix))
    bm, bc, warps, stages, presplit = cfg or mix_config(n, x.dtype)
    bf16 = x.dtype == torch.bfloat16
    presplit = presplit and bf16
    tiles = triton.cdiv(n, bm)
    chunks = triton.cdiv(d, bc)
    per_sm = programs_per_sm or PROGRAMS_PER_SM
    split = max(1, min(chunks, triton.cdiv(per_sm * num_sms(), tiles))) if not interpreting() else min(chunks, 2)
    c_per, split, part, sq, xo = mix_partials(x, o, n, d, mp, bc, split)
    has_post = o is not None
    _mix_prefill_kernel[(tiles, split)](
        x, o if has_post else x, post if has_post else part, comb if has_post else part, xo,
        _split_fn(fn, mp) if presplit else fn, part, sq, n, d, mix, c_per, HC=hc, MP=mp, BM=bm, BC=bc,
        POST=has_post, BF16=bf16, INTERP=interpreting(), PRESPLIT=presplit, num_warps=warps, num_stages=stages)
    return xo, part, sq, split
