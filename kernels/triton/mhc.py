"""Triton mHC glue: two kernels per hyper-connection site.

`_mix_kernel` (split over d; fp32 streams below PREFILL_ROWS rows, and the interpreter): optionally first the
post-mix of the previous site, X'[j] = post[j] * o + sum_i comb[i, j] * X[i] (written out in X's dtype), then
partial sums of the `fn` projection of the flattened streams (3xTF32 tensor-core dots: fp32-level accuracy) and of their
squares -> part [S, N, MP], sq [S, N]. bf16 streams on the GPU (decode too: measured faster at every row
count) and from PREFILL_ROWS rows on, the same contract runs as mhc_prefill._mix_prefill_kernel (64-row tiles,
each X element read once, exact bf16 MMAs on fn split into three bf16 parts).
`_finish_kernel` (one program per token): the RMS factor, sigmoid/scale/base, softmax + Sinkhorn
on the hc x hc mixer (registers), the pre-weighted collapse u = sum_i pre[i] X[i] and optionally the
sub-layer's RMSNorm of u. Head mode (hc_head): hc pre weights only. No host sync; sizes from shapes.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import interpreting
from .device_info import num_sms


@triton.jit(do_not_specialize=["N", "C_PER"])
def _mix_kernel(x_ptr, o_ptr, post_ptr, comb_ptr, xo_ptr, fn_ptr, part_ptr, sq_ptr, N, D, MIX, C_PER,
                HC: tl.constexpr, MP: tl.constexpr, BM: tl.constexpr, BC: tl.constexpr, POST: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_s = tl.program_id(1)
    rows = pid_m * BM + tl.arange(0, BM)
    rmask = rows < N
    r64 = rows.to(tl.int64)
    mm = tl.arange(0, MP)
    K = HC * D
    acc = tl.zeros([BM, MP], dtype=tl.float32)
    sq = tl.zeros([BM], dtype=tl.float32)
    c_lo = pid_s * C_PER
    for c0 in range(c_lo, c_lo + C_PER, BC):
        cc = c0 + tl.arange(0, BC)
        cmask = cc < D
        m2 = rmask[:, None] & cmask[None, :]
        if POST:
            o = tl.load(o_ptr + r64[:, None] * D + cc[None, :], mask=m2, other=0.0).to(tl.float32)
        for j in tl.static_range(HC):  # destination stream j: 2-D tiles, one small dot per stream
            if POST:
                pj = tl.load(post_ptr + r64 * HC + j, mask=rmask, other=0.0)
                xj = pj[:, None] * o
                for i in tl.static_range(HC):
                    cij = tl.load(comb_ptr + r64 * (HC * HC) + i * HC + j, mask=rmask, other=0.0)
                    xi = tl.load(x_ptr + r64[:, None] * K + i * D + cc[None, :], mask=m2, other=0.0)
                    xj += cij[:, None] * xi.to(tl.float32)
                xj = xj.to(xo_ptr.dtype.element_ty)
                tl.store(xo_ptr + r64[:, None] * K + j * D + cc[None, :], xj, mask=m2)
                xv = xj.to(tl.float32)
            else:
                xv = tl.load(x_ptr + r64[:, None] * K + j * D + cc[None, :], mask=m2, other=0.0).to(tl.float32)
            sq += tl.sum(xv * xv, axis=1)
            f = tl.load(fn_ptr + mm[:, None] * K + j * D + cc[None, :], mask=(mm[:, None] < MIX) & cmask[None, :],
                        other=0.0)
            acc = tl.dot(xv, tl.trans(f), acc, input_precision="tf32x3")  # ~fp32 accuracy on tensor cores
    pbase = (pid_s * N + r64) * MP
    tl.store(part_ptr + pbase[:, None] + mm[None, :], acc, mask=rmask[:, None])
    tl.store(sq_ptr + pid_s * N + rows, sq, mask=rmask)


@triton.jit(do_not_specialize=["N", "S"])
def _finish_kernel(x_ptr, part_ptr, sq_ptr, base_ptr, scale_ptr, nw_ptr, u_ptr, post_ptr, comb_ptr, N, D, S,
                   iters, hc_eps, norm_eps, HC: tl.constexpr, MP: tl.constexpr, SP: tl.constexpr,
                   BD: tl.constexpr, HEAD: tl.constexpr, NORM: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    ss = tl.arange(0, SP)
    smask = ss < S
    hh = tl.arange(0, HC)
    sq = tl.sum(tl.load(sq_ptr + ss * N + row, mask=smask, other=0.0), axis=0)
    r = 1.0 / tl.sqrt(sq / (HC * D) + norm_eps)
    prow = (ss.to(tl.int64) * N + row) * MP
    pre_w = tl.sum(tl.load(part_ptr + prow[:, None] + hh[None, :], mask=smask[:, None], other=0.0), axis=0) * r
    s0 = tl.load(scale_ptr)
    pre = 1.0 / (1.0 + tl.exp(-(pre_w * s0 + tl.load(base_ptr + hh)))) + hc_eps
    if not HEAD:
        s1 = tl.load(scale_ptr + 1)
        s2 = tl.load(scale_ptr + 2)
        post_w = tl.sum(tl.load(part_ptr + prow[:, None] + HC + hh[None, :], mask=smask[:, None], other=0.0),
                        axis=0) * r
        post = 2.0 / (1.0 + tl.exp(-(post_w * s1 + tl.load(base_ptr + HC + hh))))
        tl.store(post_ptr + row * HC + hh, post)
        ij = hh[:, None] * HC + hh[None, :]
        cw = tl.sum(tl.load(part_ptr + prow[:, None, None] + 2 * HC + ij[None, :, :], mask=smask[:, None, None],
                            other=0.0), axis=0) * r
        logit = cw * s2 + tl.load(base_ptr + 2 * HC + ij)
        e = tl.exp(logit - tl.max(logit, axis=1)[:, None])
        comb = e / tl.sum(e, axis=1)[:, None] + hc_eps
        comb = comb / (tl.sum(comb, axis=0)[None, :] + hc_eps)
        for _ in range(iters - 1):
            comb = comb / (tl.sum(comb, axis=1)[:, None] + hc_eps)
            comb = comb / (tl.sum(comb, axis=0)[None, :] + hc_eps)
        tl.store(comb_ptr + row * (HC * HC) + ij, comb)
    dd = tl.arange(0, BD)
    dmask = dd < D
    xv = tl.load(x_ptr + row * (HC * D) + hh[:, None] * D + dd[None, :], mask=dmask[None, :], other=0.0)
    u = tl.sum(pre[:, None] * xv.to(tl.float32), axis=0).to(u_ptr.dtype.element_ty)
    if NORM:
        uf = u.to(tl.float32)
        ur = 1.0 / tl.sqrt(tl.sum(uf * uf, axis=0) / D + norm_eps)
        w = tl.load(nw_ptr + dd, mask=dmask, other=0.0).to(tl.float32)
        u = (w * (uf * ur)).to(u_ptr.dtype.element_ty)
    tl.store(u_ptr + row * D + dd, u, mask=dmask)


PREFILL_ROWS = 512  # from this many rows on, the prefill mix kernel (mhc_prefill.py) for any dtype


def _mix(x, fn, o=None, post=None, comb=None, cfg=None):
    """Launch the mix kernel -> (x' (x itself without post), part [S, N, MP], sq [S, N], S). `cfg`: tiles of the
    prefill kernel (mhc_prefill.mix_config), which runs from PREFILL_ROWS rows on or when cfg is given."""
    n, hc, d = x.shape
    # bf16 streams on the GPU take the row-tile kernel at every size: bench mhc_mix_decode (one H200, CUDA graph,
    # 2026-12-02 session 3) 11.5 / 13.2 / 22.7 us at 1 / 64 / 256 rows vs 13.7 / 40.7 / 139 for _mix_kernel
    if cfg is not None or n >= PREFILL_ROWS or (x.dtype == torch.bfloat16 and not interpreting()):
        from .mhc_prefill import mix_prefill
        return mix_prefill(x, fn, o, post, comb, cfg)
    mix = fn.shape[0]
    mp = max(16, triton.next_power_of_2(mix))
    interp = interpreting()
    bm = 16
    bc = 16 if interp else 32  # (sm_90 ptxas: 32 columns x 8 warps keeps the 4x4 stream unroll in registers)
    tiles = triton.cdiv(n, bm)
    chunks = triton.cdiv(d, bc)
    split = max(1, min(chunks, (2 * num_sms()) // tiles)) if not interp else min(chunks, 2)
    from .mhc_prefill import mix_partials
    c_per, split, part, sq, xo = mix_partials(x, o, n, d, mp, bc, split)
    has_post = o is not None
    _mix_kernel[(tiles, split)](
        x, o if has_post else x, post if has_post else part, comb if has_post else part, xo, fn, part, sq,
        n, d, mix, c_per, HC=hc, MP=mp, BM=bm, BC=bc, POST=has_post, num_warps=4 if interp else 8, num_stages=1)
    return xo, part, sq, split


def finish_warps(n: int, hc: int, bd: int) -> int:
    """Warps of `_finish_kernel` (one row per program)."""
    return 4 if interpreting() else max(4, min(16, hc * bd // 1024))


def _finish(x, part, sq, split, base, scale, norm_weight, iters, hc_eps, norm_eps, head, warps=None, br=1):
    n, hc, d = x.shape
    u = torch.empty(n, d, dtype=x.dtype, device=x.device)
    post = torch.empty(n, hc, dtype=torch.float32, device=x.device)
    comb = torch.empty(n, hc, hc, dtype=torch.float32, device=x.device)
    bd = triton.next_power_of_2(d)
    warps = warps or finish_warps(n, hc, bd)
    args = (x, part, sq, base, scale, norm_weight if norm_weight is not None else base, u, post, comb, n, d, split,
            iters, float(hc_eps), float(norm_eps))
    kw = dict(HC=hc, MP=part.shape[-1], SP=triton.next_power_of_2(split), BD=bd, HEAD=head,
              NORM=norm_weight is not None, num_warps=warps)
    if br > 1:
        from .mhc_prefill import _finish_rows_kernel
        _finish_rows_kernel[(triton.cdiv(n, br),)](*args, BR=br, **kw)
    else:
        _finish_kernel[(n,)](*args, **kw)
    return u, post, comb


def _f32(t):
    return t if t.dtype == torch.float32 and t.is_contiguous() else t.float().contiguous()


def _check(x, hc):
    if hc & (hc - 1):
        raise ValueError(f"the Triton mHC kernels need a power-of-two hc (got {hc})")
    if x.shape[1] != hc:
        raise ValueError(f"x has {x.shape[1]} streams, expected {hc}")


def _empty(x, hc):
    n, _, d = x.shape
    return (x.new_empty(n, d), x.new_empty(n, hc, dtype=torch.float32), x.new_empty(n, hc, hc, dtype=torch.float32))


def hc_pre(x, fn, base, scale, hc, iters, hc_eps, norm_eps, norm_weight=None):
    """Same contract as kernels.ref.mhc.hc_pre."""
    _check(x, hc)
    if x.shape[0] == 0:
        return _empty(x, hc)
    x = x.contiguous()
    xo, part, sq, split = _mix(x, _f32(fn))
    return _finish(xo, part, sq, split, _f32(base), _f32(scale), norm_weight, iters, hc_eps, norm_eps, False)


def hc_post_pre(o, x, post, comb, fn, base, scale, hc, iters, hc_eps, norm_eps, norm_weight=None):
    """Same contract as kernels.ref.mhc.hc_post_pre."""
    _check(x, hc)
    if x.shape[0] == 0:
        return (torch.empty_like(x),) + _empty(x, hc)
    x = x.contiguous()
    xo, part, sq, split = _mix(x, _f32(fn), o.contiguous(), _f32(post), _f32(comb))
    return (xo,) + _finish(xo, part, sq, split, _f32(base), _f32(scale), norm_weight, iters, hc_eps, norm_eps,
                           False)


def hc_post(o, x, post, comb):
    """Same contract as kernels.ref.mhc.hc_post (one pass of `_post_kernel`: grid rows x column tiles)."""
    n, hc, d = x.shape
    _check(x, hc)
    out = torch.empty_like(x)
    if n == 0:
        return out
    bd = 16 if interpreting() else 128
    _post_kernel[(n, triton.cdiv(d, bd))](o.contiguous(), x.contiguous(), _f32(post), _f32(comb), out, d,
                                          HC=hc, BD=bd, num_warps=4)
    return out


@triton.jit
def _post_kernel(o_ptr, x_ptr, post_ptr, comb_ptr, out_ptr, D, HC: tl.constexpr, BD: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cc = tl.program_id(1) * BD + tl.arange(0, BD)
    cmask = cc < D
    hh = tl.arange(0, HC)
    o = tl.load(o_ptr + row * D + cc, mask=cmask, other=0.0).to(tl.float32)
    post = tl.load(post_ptr + row * HC + hh)
    acc = post[:, None] * o[None, :]
    for i in tl.static_range(HC):
        xi = tl.load(x_ptr + row * HC * D + i * D + cc, mask=cmask, other=0.0).to(tl.float32)
        ci = tl.load(comb_ptr + row * HC * HC + i * HC + hh)
        acc += ci[:, None] * xi[None, :]
    tl.store(out_ptr + row * HC * D + hh[:, None] * D + cc[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=cmask[None, :])


def hc_head(x, fn, base, scale, hc_eps, norm_eps, norm_weight=None):
    """Same contract as kernels.ref.mhc.hc_head."""
    hc = x.shape[1]
    _check(x, hc)
    if x.shape[0] == 0:
        return _empty(x, hc)[0]
    x = x.contiguous()
    xo, part, sq, split = _mix(x, _f32(fn))
    return _finish(xo, part, sq, split, _f32(base), _f32(scale), norm_weight, 1, hc_eps, norm_eps, True)[0]
