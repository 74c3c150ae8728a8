"""Triton block linear: y = x @ (W_fp8 * 2^(S-127))^T, scales per 128x128 weight tile (WFMT 1), or
plain float weights (WFMT 0).

Activations bf16 (dequantized weight tiles feed a bf16 MMA), or quantized in the kernel per token in
1x128 blocks with UE8M0 scales (ACT_FP8: FP8 x FP8 MMA, the reference act_quant numerics).
Decode (small M) uses narrow N tiles plus split-K so every SM streams weights; the split-K reduces
itself (partials to a workspace, the last split of a tile sums them: no memset, no extra launch).
A group grid axis runs several row blocks of one weight on column blocks of x in one launch (the
grouped wo_a); DUAL streams a second weight with the same tiles for fused epilogues (clamped SwiGLU,
compressor score + positional bias). Host wrappers: `fp8_linear` here, the glue ops in linear_glue.py.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from .common import act_quant_tile, dot_dtype, e8m0_to_f32, interpreting, load_w_tile, mma
from .device_info import num_sms


# M stays specialized (M == 1 is the batch-1 GEMV's constant; an eager step's token count adds at most one
# variant per tile config, which is itself chosen by M); R (the compressor's ratio) and the metadata pointers do not
@triton.jit(do_not_specialize=["R"], do_not_specialize_on_alignment=["cnt_ptr", "tab_ptr", "idx_ptr"])
def _fp8_linear_kernel(x_ptr, w_ptr, s_ptr, w2_ptr, s2_ptr, y_ptr, y2_ptr, ws_ptr, cnt_ptr, tab_ptr, idx_ptr,
                       M, N, K, stride_xm, stride_wn, stride_sn, stride_ym, x_gs, w_gs, y_gs, R, alpha, limit,
                       K_PER_SPLIT, nw_ptr, norm_eps, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                       GROUP_M: tl.constexpr, SPLIT_K: tl.constexpr, ACT_FP8: tl.constexpr,
                       DOT_T: tl.constexpr, DOT_F32: tl.constexpr, WFMT: tl.constexpr, DUAL: tl.constexpr,
                       EPI: tl.constexpr, ROUND: tl.constexpr, NORM_IN: tl.constexpr, VAR: tl.constexpr = 0,
                       GEMV_STAGES: tl.constexpr = 1, PREFETCH: tl.constexpr = 0, PDL: tl.constexpr = False):
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    grp = tl.program_id(2)
    num_pid_m = tl.cdiv(M, BM)
    num_pid_n = tl.cdiv(N, BN)
    in_group = GROUP_M * num_pid_n
    first_m = (pid // in_group) * GROUP_M
    gsize = tl.minimum(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % in_group) % gsize
    pid_n = (pid % in_group) // gsize
    # group axis (grouped projections): x columns, weight rows and y columns shift per group
    x_ptr += grp.to(tl.int64) * x_gs
    y_ptr += grp.to(tl.int64) * y_gs
    w_off = grp.to(tl.int64) * w_gs * stride_wn
    s_off = (grp.to(tl.int64) * w_gs // 128) * stride_sn
    w_ptr += w_off
    s_ptr += s_off
    if DUAL:
        w2_ptr += w_off
        s2_ptr += s_off
    offs_m = pid_m * BM + tl.arange(0, BM)
    mmask = offs_m < M
    offs_n = pid_n * BN + tl.arange(0, BN)
    nmask = offs_n < N
    xrow = offs_m.to(tl.int64) * stride_xm
    acc = tl.zeros([BM, BN], dtype=tl.float32)
    acc2 = tl.zeros([BM, BN], dtype=tl.float32)
    k_lo = pid_k * K_PER_SPLIT
    k_hi = tl.minimum(k_lo + K_PER_SPLIT, K)
    if PREFETCH:  # the program's whole weight slab to L2 first (weights never depend on earlier kernels)
        _prefetch_slab(w_ptr, offs_n, nmask, k_lo, k_hi, stride_wn, PREFETCH)
        if DUAL:
            _prefetch_slab(w2_ptr, offs_n, nmask, k_lo, k_hi, stride_wn, PREFETCH)
    if PDL:  # programmatic dependent launch: x / outputs only after the previous kernel completed
        gdc_wait()
        gdc_launch_dependents()
    if NORM_IN:  # RMSNorm of the input rows (prologue): the full-row sum of squares first
        ssq = tl.zeros([BM], dtype=tl.float32)
        for k0 in range(0, K, BK):
            kk = k0 + tl.arange(0, BK)
            a = tl.load(x_ptr + xrow[:, None] + kk[None, :], mask=mmask[:, None] & (kk[None, :] < K),
                        other=0.0).to(tl.float32)
            ssq += tl.sum(a * a, axis=1)
        rr = 1.0 / tl.sqrt(ssq / K + norm_eps)
    # VAR 1 (swap): weights are the MMA's left operand ([BN, BK] converted in registers), tokens its N;
    # VAR 2 (gemv, BM == 1): CUDA-core products summed once at the end. Both take the block scales on the
    # activations (BN divides 128: one scale row per tile; exact, powers of two); a BK of 256..1024 makes
    # each row's run of a step contiguous (BK = K: the whole [BN, K] tile is one contiguous block).
    acc_t = tl.zeros([BN, BM] if VAR == 1 else [1, 1], dtype=tl.float32)
    acc2_t = tl.zeros([BN, BM] if VAR == 1 else [1, 1], dtype=tl.float32)
    acc_v = tl.zeros([BN, BK] if VAR == 2 else [1, 1], dtype=tl.float32)
    acc2_v = tl.zeros([BN, BK] if VAR == 2 and DUAL else [1, 1], dtype=tl.float32)
    s_row = (pid_n * BN // 128) * stride_sn
    for k0 in tl.range(k_lo, k_hi, BK, num_stages=GEMV_STAGES if VAR == 2 else None):
        kk = k0 + tl.arange(0, BK)
        a = tl.load(x_ptr + xrow[:, None] + kk[None, :], mask=mmask[:, None] & (kk[None, :] < K), other=0.0)
        if NORM_IN:  # weight * (x * rsqrt), rounded to x's dtype as the RMSNorm output is
            nw = tl.load(nw_ptr + kk, mask=kk < K, other=0.0).to(tl.float32)
            a = (nw[None, :] * (a.to(tl.float32) * rr[:, None])).to(x_ptr.dtype.element_ty)
        if VAR != 0:
            wt = tl.load(w_ptr + offs_n[:, None] * stride_wn + kk[None, :], mask=nmask[:, None] & (kk[None, :] < K),
                         other=0)
            af = a.to(tl.float32)
            if WFMT == 1:
                wt = wt.to(tl.float8e4nv, bitcast=True)
                sa = af * _k_scales(s_ptr + s_row, k0, kk, K, BK)
            else:
                sa = af
            if DUAL:
                wt2 = tl.load(w2_ptr + offs_n[:, None] * stride_wn + kk[None, :],
                              mask=nmask[:, None] & (kk[None, :] < K), other=0)
                if WFMT == 1:
                    wt2 = wt2.to(tl.float8e4nv, bitcast=True)
                    sa2 = af * _k_scales(s2_ptr + s_row, k0, kk, K, BK)
                else:
                    sa2 = af
            if VAR == 1:
                acc_t = mma(wt.to(DOT_T), tl.trans(sa.to(DOT_T)), acc_t, DOT_F32)
                if DUAL:
                    acc2_t = mma(wt2.to(DOT_T), tl.trans(sa2.to(DOT_T)), acc2_t, DOT_F32)
            else:  # sa is exact in x's dtype (x times a power of two): the MMA path's operand values
                acc_v += wt.to(tl.float32) * sa
                if DUAL:
                    acc2_v += wt2.to(tl.float32) * sa2
        elif ACT_FP8:
            aq, xs = act_quant_tile(a, DOT_F32)  # per-token 1x128 blocks (BK == 128)
            acc += _fp8_block_dot(aq, w_ptr, s_ptr, offs_n, nmask, k0, K, stride_wn, stride_sn, BK,
                                  DOT_F32) * xs[:, None]
            if DUAL:
                acc2 += _fp8_block_dot(aq, w2_ptr, s2_ptr, offs_n, nmask, k0, K, stride_wn, stride_sn, BK,
                                       DOT_F32) * xs[:, None]
        else:
            b = load_w_tile(w_ptr, s_ptr, offs_n, nmask, k0, K, stride_wn, 1, stride_sn, 1, WFMT, BN, BK, DOT_T)
            acc = mma(a.to(DOT_T), b, acc, DOT_F32)
            if DUAL:
                b2 = load_w_tile(w2_ptr, s2_ptr, offs_n, nmask, k0, K, stride_wn, 1, stride_sn, 1, WFMT, BN, BK,
                                 DOT_T)
                acc2 = mma(a.to(DOT_T), b2, acc2, DOT_F32)
    if VAR == 1:
        acc = tl.trans(acc_t)
        if DUAL:
            acc2 = tl.trans(acc2_t)
    elif VAR == 2:
        acc = tl.reshape(tl.sum(acc_v, axis=1), (BM, BN))
        if DUAL:
            acc2 = tl.reshape(tl.sum(acc2_v, axis=1), (BM, BN))
    if SPLIT_K > 1:
        # self-reducing split-K: partial tiles to the workspace; the last split of a tile (per-tile
        # arrival counter, reset by it) sums them and runs the epilogue. No memset, no extra launch.
        tile = grp * (num_pid_m * num_pid_n) + pid
        n_tiles = tl.num_programs(2) * num_pid_m * num_pid_n
        tw = tl.arange(0, BM)[:, None] * BN + tl.arange(0, BN)[None, :]
        wbase = ws_ptr + (tile.to(tl.int64) * SPLIT_K) * (BM * BN)
        tl.store(wbase + pid_k * (BM * BN) + tw, acc)
        if DUAL:
            tl.store(wbase + n_tiles * SPLIT_K * (BM * BN) + pid_k * (BM * BN) + tw, acc2)
        tl.debug_barrier()
        old = tl.atomic_add(cnt_ptr + tile, 1, sem="acq_rel")
        if old == SPLIT_K - 1:
            acc = tl.zeros([BM, BN], dtype=tl.float32)
            acc2 = tl.zeros([BM, BN], dtype=tl.float32)
            for s in range(SPLIT_K):
                acc += tl.load(wbase + s * (BM * BN) + tw, cache_modifier=".cg")
                if DUAL:
                    acc2 += tl.load(wbase + n_tiles * SPLIT_K * (BM * BN) + s * (BM * BN) + tw, cache_modifier=".cg")
            tl.atomic_xchg(cnt_ptr + tile, 0)
            if ROUND:  # the GEMM results rounded to the activation dtype, as a separate linear's output
                acc = acc.to(x_ptr.dtype.element_ty).to(tl.float32)
                acc2 = acc2.to(x_ptr.dtype.element_ty).to(tl.float32)
            _epilogue(acc, acc2, offs_m, offs_n, mmask, nmask, y_ptr, y2_ptr, stride_ym, tab_ptr, idx_ptr, N, R,
                      alpha, limit, EPI)
    else:
        if ROUND:
            acc = acc.to(x_ptr.dtype.element_ty).to(tl.float32)
            acc2 = acc2.to(x_ptr.dtype.element_ty).to(tl.float32)
        _epilogue(acc, acc2, offs_m, offs_n, mmask, nmask, y_ptr, y2_ptr, stride_ym, tab_ptr, idx_ptr, N, R, alpha,
                  limit, EPI)


@triton.jit
def _prefetch_slab(w_ptr, offs_n, nmask, k_lo, k_hi, stride_wn, PF: tl.constexpr):
    """prefetch.global.L2 of rows offs_n, columns [k_lo, k_hi), one per 128-byte line (PF lines per row
    and iteration)."""
    for k0 in range(k_lo, k_hi, 128 * PF):
        kk = k0 + tl.arange(0, PF) * 128
        ok = nmask[:, None] & (kk[None, :] < k_hi)
        p = w_ptr + tl.where(ok, offs_n[:, None].to(tl.int64) * stride_wn + kk[None, :], 0)
        tl.inline_asm_elementwise("prefetch.global.L2 [$1];\n mov.u32 $0, 0;", "=r,l", [p], dtype=tl.int32,
                                  is_pure=False, pack=1)


@triton.jit
def _k_scales(s_ptr, k0, kk, K, BK: tl.constexpr):
    """Block scales of one 128-row block along a K step as [1, BK]: one value broadcast when BK <= 128 (BK
    divides 128), else one per column (the step spans BK / 128 scale blocks)."""
    if BK <= 128:
        s = e8m0_to_f32(tl.load(s_ptr + k0 // 128), 0) + tl.zeros([1, BK], dtype=tl.float32)
    else:
        s = e8m0_to_f32(tl.load(s_ptr + kk // 128, mask=kk < K, other=0), 0)[None, :]
    return s


@triton.jit
def _fp8_block_dot(aq, w_ptr, s_ptr, offs_n, nmask, k0, K, stride_wn, stride_sn, BK: tl.constexpr,
                   DOT_F32: tl.constexpr):
    """FP8 activation codes [BM, BK] x FP8 weight tile -> fp32 [BM, BN], the weight block scale applied."""
    kw = k0 + tl.arange(0, BK)
    wq = tl.load(w_ptr + offs_n[:, None] * stride_wn + kw[None, :],
                 mask=nmask[:, None] & (kw[None, :] < K), other=0).to(tl.float8e4nv, bitcast=True)
    ws = e8m0_to_f32(tl.load(s_ptr + (offs_n // 128) * stride_sn + k0 // 128, mask=nmask, other=0), 0)
    if DOT_F32:
        d = tl.dot(aq, tl.trans(wq.to(tl.float32)), input_precision="ieee")
    else:
        d = tl.dot(aq, tl.trans(wq))
    return d * ws[None, :]


@triton.jit
def _epilogue(acc, acc2, offs_m, offs_n, mmask, nmask, y_ptr, y2_ptr, stride_ym, tab_ptr, idx_ptr, N, R, alpha,
              limit, EPI: tl.constexpr):
    """EPI 0: y = acc * alpha. 1: y = silu(min(acc, L)) * clamp(acc2, -L, L) (clamped SwiGLU).
    2: y = acc, y2 = acc2 + tab[idx[m] % R] (compressor score + positional bias)."""
    yoff = offs_m.to(tl.int64)[:, None] * stride_ym + offs_n[None, :]
    ymask = mmask[:, None] & nmask[None, :]
    if EPI == 1:
        g = tl.minimum(acc, limit)
        v = tl.minimum(tl.maximum(acc2, -limit), limit)
        acc = g / (1.0 + tl.exp(-g)) * v
    elif EPI == 2:
        pos = tl.load(idx_ptr + offs_m, mask=mmask, other=0)
        tab = tl.load(tab_ptr + (pos % R).to(tl.int64)[:, None] * N + offs_n[None, :], mask=ymask, other=0.0)
        tl.store(y2_ptr + yoff, (acc2 + tab).to(y2_ptr.dtype.element_ty), mask=ymask)
    else:
        acc = acc * alpha
    tl.store(y_ptr + yoff, acc.to(y_ptr.dtype.element_ty), mask=ymask)


# Dual launches of 65-256 rows split K to fill the SMs: measured on the SwiGLU pair (bench fp8_decode glue rows
# swiglu_w13 vs swiglu_w13_nosplit, 76 -> 31 / 40 us at M = 128 / 256); the compressor's fp32 pair takes the
# same rule, measured only inside the end-to-end batch-128/256 steps. The bench toggles this flag.
DUAL_FILL = True


def fill_split(m: int, n: int, k: int, bm: int, bn: int) -> int:
    """K splits (powers of 2, >= 512 columns each) until the m x n tiles x splits reach the SM count."""
    tiles = triton.cdiv(m, bm) * triton.cdiv(n, bn)
    split = 1
    while tiles * split < num_sms() and k // (split * 2) >= 512:
        split *= 2
    return split


def pick_config(m: int, n: int, k: int, act_fp8: bool, interp: bool, fp8w: bool = True) -> dict:
    """Tile config for m rows of an (n, k) linear: the measured decode table (fp8_table.py) for FP8
    weights with bf16 activations at m <= 256, else the rules below."""
    if interp:
        cfg = dict(BM=16, BN=32, BK=128 if act_fp8 else 64, GROUP_M=4, num_warps=4, num_stages=1, SPLIT_K=1)
        if k >= 256:
            cfg["SPLIT_K"] = 2
        return cfg
    if m <= 256 and fp8w and not act_fp8:
        from .fp8_table import lookup
        cfg = lookup(m, n, k)
        if cfg is not None:
            return cfg
    if m <= 64:  # decode: stream the weight once, fill the SMs with N tiles x K splits
        # (H200 sweep, docs/benchmarks.md: split-K only pays for K >= 4096 -- its memset + fp32
        # atomics + cast cost more than the extra parallelism at K <= 2048; wider N tiles for M > 16)
        bm = 16 if m <= 16 else (32 if m <= 32 else 64)
        wide = n >= 64 * 2 * num_sms()
        if k <= 2048:
            bn = 64 if wide else (16 if (m > 16 and n <= 4096) else 32)
            return dict(BM=bm, BN=bn, BK=128, GROUP_M=1, num_warps=4, num_stages=6 if (m <= 16 and not wide) else 4,
                        SPLIT_K=1)
        bn = 64 if (wide or (m > 16 and n >= 2048)) else 32
        tiles = triton.cdiv(m, bm) * triton.cdiv(n, bn)
        split = 1
        while tiles * split < 2 * num_sms() and k // (split * 2) >= 512 and (bn == 32 or split < 4):
            split *= 2
        return dict(BM=bm, BN=bn, BK=128, GROUP_M=1, num_warps=4, num_stages=4, SPLIT_K=split)
    if m <= 256:
        return dict(BM=64, BN=128, BK=128, GROUP_M=8, num_warps=4, num_stages=4, SPLIT_K=1)
    return dict(BM=128, BN=128, BK=128 if act_fp8 else 64, GROUP_M=8, num_warps=8, num_stages=3, SPLIT_K=1)


SMEM_BYTES = 220 * 1024  # model budget: the H200 gives a block 227 KB (232,448 B); the rest is margin
SMEM_LIMIT = 232448  # sm_90 opt-in shared memory per block (the compiled kernel is checked against the device's)


def smem_estimate(cfg: dict, x_bytes: int, w_bytes: int, dual: bool, norm_in: bool = False) -> int:
    """Shared memory the kernel needs (upper estimate, calibrated on sm_90 compiles,
    tests/kernels/test_fp8_linear_smem.py): `num_stages` stage buffers (an x tile and one or two weight
    tiles), one more weight tile (operand staging), the RMSNorm prologue's own pipelined x tile, 2 KB of
    reduction / epilogue scratch. (fp32 x, NORM_IN, BM64 BN128 BK128, 4 stages: 247,296 B compiled.)"""
    wt = (2 if dual else 1) * cfg["BN"] * cfg["BK"] * w_bytes
    per_stage = cfg["BM"] * cfg["BK"] * x_bytes + wt
    return per_stage * cfg["num_stages"] + wt + (cfg["BM"] * cfg["BK"] * x_bytes if norm_in else 0) + 2048


def fit_shared_memory(cfg: dict, x_bytes: int, w_bytes: int, dual: bool, norm_in: bool = False) -> None:
    """Drop pipeline stages until smem_estimate fits SMEM_BYTES (the dual-weight launch with 2-byte weights at
    BM64 BN128 BK128 would need 320 KB at 4; q_norm + wq_b on fp32 rows 247 KB at 4)."""
    while cfg["num_stages"] > 1 and smem_estimate(cfg, x_bytes, w_bytes, dual, norm_in) > SMEM_BYTES:
        cfg["num_stages"] -= 1


_FIT: dict = {}  # launch signature -> pipeline stages whose compiled kernel fits the device's shared memory


def _fitted_stages(grid, args, kw, device) -> int:
    """num_stages for this launch after checking the compiled kernel's shared memory against the device's
    per-block limit (once per signature; drops stages until it fits). The estimate above is the first
    guess; this is the exact check (Triton raises OutOfResources at launch otherwise)."""
    key = (tuple(kw.items()), tuple(getattr(a, "dtype", None) for a in args[:11]), device)
    st = _FIT.get(key)
    if st is None:
        dev = device.index if device.index is not None else torch.cuda.current_device()
        limit = triton.runtime.driver.active.utils.get_device_properties(dev)["max_shared_mem"]
        st = kw["num_stages"]
        while st > 1:
            trial = dict(kw, num_stages=st, GEMV_STAGES=st if kw["VAR"] == 2 else 1)
            if _fp8_linear_kernel.warmup(*args, grid=grid, **trial).metadata.shared <= limit:
                break
            st -= 1
        _FIT[key] = st
    return st


_COUNTERS: dict = {}  # device -> int32 arrival counters of the self-reducing split-K (always back at 0)


def _counters(device, n: int) -> torch.Tensor:
    """Zeroed per-tile counters, allocated once per device (a larger buffer if a launch needs more tiles;
    replaced buffers stay alive: a captured CUDA graph may still use them). Every launch leaves them
    at zero, so they are reused across launches and graph replays."""
    bufs = _COUNTERS.setdefault(device, [])
    if not bufs or bufs[-1].numel() < n:
        bufs.append(torch.zeros(max(n, 16384), dtype=torch.int32, device=device))
    return bufs[-1]


def launch(x, w, y, *, w2=None, y2=None, groups=1, x_gs=0, w_gs=0, y_gs=0, epi=0, round_out=False, alpha=1.0,
           limit=0.0, tab=None, idx=None, norm_weight=None, norm_eps=0.0, act_quant=False, config=None,
           dry_run=False):
    """One launch of the block linear on 2-D row views: y[:, g*y_gs + n] (+ y2) from x[:, g*x_gs + k] and
    weight rows g*w_gs + n. w / w2: QuantWeight (fp8) or plain [rows, K] tensors. x, y row-major
    with unit column stride; m, n, k = x.shape[0], y's columns per group, the K per group.
    `norm_weight`: the rows of x are first RMSNorm'ed with it (eps `norm_eps`; one group only).
    `dry_run`: return (grid, args, kwargs) of the launch instead of launching (meta tensors work: the
    CPU check compiles exactly these for sm_90, tests/kernels/test_fp8_linear_smem.py)."""
    from .common import weight_args
    m = x.shape[0]
    n = y.shape[1] // groups if y_gs else y.shape[1]
    k = w.shape[-1]
    if m == 0 or n == 0:
        return None
    data, scale, wfmt = weight_args(w)
    if wfmt not in (0, 1):
        raise NotImplementedError("dense linears take plain or FP8 weights")
    if wfmt == 1 and groups > 1 and w_gs % 128:
        raise ValueError("grouped FP8 linear: group rows must be whole 128-row scale blocks")
    data2, scale2 = (weight_args(w2)[:2]) if w2 is not None else (data, scale)
    if norm_weight is not None and (groups > 1 or x.shape[1] != k):
        raise ValueError("the RMSNorm prologue needs whole rows of x (one group)")
    interp = interpreting()
    cfg = dict(config or pick_config(m, n * groups, k, act_quant, interp, wfmt == 1))
    if w2 is not None and m > 64 and not interp and config is None:
        # two accumulators: narrower N tiles (sm_90 ptxas: 128x128 dual spills 750 B, 128x64 160 B)
        cfg.update(BM=128, BN=64, BK=128 if act_quant else 64, GROUP_M=8, num_warps=8, num_stages=3, SPLIT_K=1)
        if m <= 256 and DUAL_FILL:  # decode batches: K splits until the programs fill the SMs
            cfg["SPLIT_K"] = fill_split(m, n * groups, k, 128, 64)
    if act_quant:
        if wfmt != 1:
            raise NotImplementedError("act_quant needs FP8 weights")
        cfg.update(BK=128, VAR=0, BM=max(cfg["BM"], 16))
    var = cfg.get("VAR", 0)
    if var and (128 % cfg["BN"] or (128 % cfg["BK"] and cfg["BK"] % 128)):
        raise ValueError("swap / gemv tiles need BN dividing 128 and BK dividing or a multiple of 128")
    if var == 2 and cfg["BM"] != 1:
        raise ValueError("the gemv variant takes one row per program (BM 1)")
    fit_shared_memory(cfg, 1 if act_quant else x.element_size(), data.element_size(), w2 is not None,
                      norm_weight is not None)  # explicit configs too: no launch may exceed the budget
    split = cfg["SPLIT_K"]
    k_step = max(cfg["BK"], 128)
    k_per = triton.cdiv(triton.cdiv(k, split), k_step) * k_step
    split = triton.cdiv(k, k_per)
    tiles = triton.cdiv(m, cfg["BM"]) * triton.cdiv(n, cfg["BN"])
    if split > 1:
        ws = torch.empty((2 if w2 is not None else 1) * groups * tiles * split * cfg["BM"] * cfg["BN"],
                         dtype=torch.float32, device=x.device)
        cnt = _counters(x.device, groups * tiles)
    else:
        ws = cnt = y
    dot_t, dot_f32 = dot_dtype(data if (wfmt == 0 and data.dtype == torch.float32) else x)
    args = (x, data, scale, data2, scale2, y, y2 if y2 is not None else y, ws, cnt,
            tab if tab is not None else y, idx if idx is not None else y,
            m, n, k, x.stride(0), data.stride(0), scale.stride(0) if wfmt else 0, y.stride(0), x_gs, w_gs, y_gs,
            tab.shape[0] if tab is not None else 1, float(alpha), float(limit), k_per,
            norm_weight if norm_weight is not None else y, float(norm_eps))
    kw = dict(BM=cfg["BM"], BN=cfg["BN"], BK=cfg["BK"], GROUP_M=cfg["GROUP_M"], SPLIT_K=split, ACT_FP8=act_quant,
              DOT_T=dot_t, DOT_F32=dot_f32, WFMT=wfmt, DUAL=w2 is not None, EPI=epi, ROUND=round_out,
              NORM_IN=norm_weight is not None, VAR=var, GEMV_STAGES=cfg["num_stages"] if var == 2 else 1,
              PREFETCH=0 if interp else cfg.get("PREFETCH", 0), PDL=bool(cfg.get("PDL")) and not interp,
              num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    if kw["PDL"]:
        kw["launch_pdl"] = True
    grid = (tiles, split, groups)
    if dry_run:
        return grid, args, kw
    if not interp:
        st = _fitted_stages(grid, args, kw, x.device)
        if st != kw["num_stages"]:
            kw.update(num_stages=st, GEMV_STAGES=st if var == 2 else 1)
    _fp8_linear_kernel[grid](*args, **kw)
    return None


def _rows(x):
    x2 = x.reshape(-1, x.shape[-1])
    return x2 if x2.stride(-1) == 1 else x2.contiguous()


def fp8_linear(x, w, scale, act_quant=False, out_dtype=None, config=None):
    """Same contract as kernels.ref.fp8_linear.fp8_linear."""
    from ..quant_weight import QuantWeight
    out_dtype = out_dtype or x.dtype
    x2 = _rows(x)
    y = torch.empty(x2.shape[0], w.shape[0], dtype=out_dtype, device=x.device)
    launch(x2, QuantWeight(w, scale, "fp8"), y, act_quant=act_quant, config=config)
    return y.reshape(*x.shape[:-1], w.shape[0])
