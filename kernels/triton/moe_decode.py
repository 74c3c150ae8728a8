"""MXFP4 MoE decode kernel with swapped operands: weights are the MMA's left operand.

Decode puts few tokens on each expert, so the token tile is tiny while the weight tile is the whole
stream. Here one program computes out^T[BN features, BT tokens] = W[BN, K] @ x^T[K, BT]: the weight
tile [BN, BK/2 bytes] is converted in registers (packed PTX, `common._fp4x4_to_bf16x2_asm`: low
nibbles = even k, high nibbles = odd k, block scale folded into one mul.bf16x2 per two weights) and
is the MMA's A operand straight from registers (Hopper wgmma); the small token tile, split into even
and odd k, is the B operand. No nibble interleave, no transpose of the weights.

Kernel 1 (gate/up): h[pair] = silu(min(x W1^T, L)) * clamp(x W3^T, -L, L) * route_w[pair]   (bf16)
Kernel 2 (down + combine): out[token] += h[pair] W2^T   (fp32 atomics over the k slots of a token)

Token tiles: ALIGNED=True reads the block-aligned pair layout of `moe_align` (BT pairs of one expert
per tile); ALIGNED=False gives every (token, slot) pair its own tile (no align launch; an expert hit
by two pairs of the batch is streamed twice, so only for a handful of tokens).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from .common import _fp4x4_to_bf16x2_asm, e8m0_to_f32, e2m1_f32
from .device_info import num_sms


@triton.jit
def _fp4_tile(w_base, s_base, offs_n, nmask, k0, stride_wn, stride_sn, BN: tl.constexpr, BK: tl.constexpr,
              USE_ASM: tl.constexpr):
    """W[offs_n, k0:k0+BK] -> (even-k values, odd-k values), each [BN, BK/2] bf16, block scale applied."""
    G: tl.constexpr = BK // 32
    kp = k0 // 2 + tl.arange(0, BK // 2)
    p = tl.load(w_base + offs_n[:, None] * stride_wn + kp[None, :], mask=nmask[:, None], other=0)
    ks = k0 // 32 + tl.arange(0, G)
    s = tl.load(s_base + offs_n[:, None] * stride_sn + ks[None, :], mask=nmask[:, None], other=0)
    if USE_ASM:
        sb = e8m0_to_f32(s, 126).to(tl.bfloat16)  # 2^(S-127) * 2^126 (S <= 128: checked by the caller)
        sfull = tl.reshape(tl.broadcast_to(sb[:, :, None], (BN, G, 16)), (BN, BK // 2))
        lo, hi = _fp4x4_to_bf16x2_asm(p, sfull)
    else:  # interpreter / scale bytes > 128: fp16 bit trick in fp32
        pi = p.to(tl.int32) & 0xFF
        sf = tl.reshape(tl.broadcast_to(e8m0_to_f32(s, 14)[:, :, None], (BN, G, 16)), (BN, BK // 2))
        lo = (e2m1_f32(pi & 0xF) * sf).to(tl.bfloat16)
        hi = (e2m1_f32(pi >> 4) * sf).to(tl.bfloat16)
    return lo, hi


@triton.jit
def _fp4_words_asm(wd, sc):
    """MXFP4 words (8 E2M1 codes each, code j = bits 4j..4j+3) -> 8 bf16 tensors, output j = code j * sc.

    pack=2: an instance gets two words (w0, w1) and their scale pair (bf16x2, one register), and writes
    output j as one bf16x2 register (code j of w0, code j of w1) -- the MMA operand's register pairs.
    Byte b of both words goes to the low byte of the two 16-bit lanes (one prmt), then per nibble:
    (lanes & nibble mask) * (2^a + 2^b) puts two copies of the code so that one mask keeps the magnitude
    at bf16 bits 6..8 and the sign at bit 15 (= e2m1(c) * 2^-126, code 1 a bf16 subnormal), and
    mul.bf16x2 applies 2^126 * block scale: 9 instructions per 4 weights."""
    return tl.inline_asm_elementwise(
        asm="""
        {
        .reg .b32 y, t;
        prmt.b32 y, $8, $9, 0x0400;
        and.b32 t, y, 0x000F000F;
        mul.lo.u32 t, t, 0x1040;
        and.b32 t, t, 0x81C081C0;
        mul.rn.bf16x2 $0, t, $10;
        and.b32 t, y, 0x00F000F0;
        mul.lo.u32 t, t, 0x104;
        and.b32 t, t, 0x81C081C0;
        mul.rn.bf16x2 $1, t, $10;
        prmt.b32 y, $8, $9, 0x0501;
        and.b32 t, y, 0x000F000F;
        mul.lo.u32 t, t, 0x1040;
        and.b32 t, t, 0x81C081C0;
        mul.rn.bf16x2 $2, t, $10;
        and.b32 t, y, 0x00F000F0;
        mul.lo.u32 t, t, 0x104;
        and.b32 t, t, 0x81C081C0;
        mul.rn.bf16x2 $3, t, $10;
        prmt.b32 y, $8, $9, 0x0602;
        and.b32 t, y, 0x000F000F;
        mul.lo.u32 t, t, 0x1040;
        and.b32 t, t, 0x81C081C0;
        mul.rn.bf16x2 $4, t, $10;
        and.b32 t, y, 0x00F000F0;
        mul.lo.u32 t, t, 0x104;
        and.b32 t, t, 0x81C081C0;
        mul.rn.bf16x2 $5, t, $10;
        prmt.b32 y, $8, $9, 0x0703;
        and.b32 t, y, 0x000F000F;
        mul.lo.u32 t, t, 0x1040;
        and.b32 t, t, 0x81C081C0;
        mul.rn.bf16x2 $6, t, $10;
        and.b32 t, y, 0x00F000F0;
        mul.lo.u32 t, t, 0x104;
        and.b32 t, t, 0x81C081C0;
        mul.rn.bf16x2 $7, t, $10;
        }
        """,
        constraints="=r,=r,=r,=r,=r,=r,=r,=r,r,r,r",
        args=[wd, sc], dtype=(tl.bfloat16,) * 8, is_pure=True, pack=2)


@triton.jit
def _fp4_words_tile(w_base, s_base, offs_n, nmask, k0, stride_wn, stride_sn, BN: tl.constexpr, BK: tl.constexpr,
                    USE_ASM: tl.constexpr):
    """W[offs_n, k0:k0+BK] as 8 tensors [BN, BK/8] bf16: tensor j column w = W[:, k0 + 8w + j], scaled."""
    W: tl.constexpr = BK // 8
    G: tl.constexpr = BK // 32
    kw = k0 // 8 + tl.arange(0, W)
    wd = tl.load(w_base.to(tl.pointer_type(tl.int32)) + offs_n[:, None] * (stride_wn // 4) + kw[None, :],
                 mask=nmask[:, None], other=0)
    ks = k0 // 32 + tl.arange(0, G)
    s = tl.load(s_base + offs_n[:, None] * stride_sn + ks[None, :], mask=nmask[:, None], other=0)
    if USE_ASM:
        sb = e8m0_to_f32(s, 126).to(tl.bfloat16)
        sfull = tl.reshape(tl.broadcast_to(sb[:, :, None], (BN, G, 4)), (BN, W))
        return _fp4_words_asm(wd, sfull)
    sf = tl.reshape(tl.broadcast_to(e8m0_to_f32(s, 14)[:, :, None], (BN, G, 4)), (BN, W))
    return ((e2m1_f32(wd & 0xF) * sf).to(tl.bfloat16), (e2m1_f32((wd >> 4) & 0xF) * sf).to(tl.bfloat16),
            (e2m1_f32((wd >> 8) & 0xF) * sf).to(tl.bfloat16), (e2m1_f32((wd >> 12) & 0xF) * sf).to(tl.bfloat16),
            (e2m1_f32((wd >> 16) & 0xF) * sf).to(tl.bfloat16), (e2m1_f32((wd >> 20) & 0xF) * sf).to(tl.bfloat16),
            (e2m1_f32((wd >> 24) & 0xF) * sf).to(tl.bfloat16), (e2m1_f32((wd >> 28) & 0xF) * sf).to(tl.bfloat16))


@triton.jit
def _mma(a, b, acc, DOT_F32: tl.constexpr):
    if DOT_F32:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    return tl.dot(a, b, acc)


@triton.jit
def _words_step(wt, xs, acc, DOT_F32: tl.constexpr):
    """acc += sum_j wt[j] @ xs[j] (the 8 code positions of a word)."""
    acc = _mma(wt[0], xs[0], acc, DOT_F32)
    acc = _mma(wt[1], xs[1], acc, DOT_F32)
    acc = _mma(wt[2], xs[2], acc, DOT_F32)
    acc = _mma(wt[3], xs[3], acc, DOT_F32)
    acc = _mma(wt[4], xs[4], acc, DOT_F32)
    acc = _mma(wt[5], xs[5], acc, DOT_F32)
    acc = _mma(wt[6], xs[6], acc, DOT_F32)
    acc = _mma(wt[7], xs[7], acc, DOT_F32)
    return acc


@triton.jit
def _x_words(a, BT: tl.constexpr, BK: tl.constexpr):
    """Token tile [BT, BK] -> 8 tiles [BK/8, BT], tile j row w = column 8w + j."""
    W: tl.constexpr = BK // 8
    a8 = tl.reshape(a, (BT, W, 2, 2, 2))
    e0, e1 = tl.split(a8)  # bit 0 of j
    e00, e10 = tl.split(e0)  # bit 1
    e01, e11 = tl.split(e1)
    x0, x4 = tl.split(e00)  # bit 2
    x2, x6 = tl.split(e10)
    x1, x5 = tl.split(e01)
    x3, x7 = tl.split(e11)
    return (tl.trans(x0), tl.trans(x1), tl.trans(x2), tl.trans(x3), tl.trans(x4), tl.trans(x5), tl.trans(x6),
            tl.trans(x7))


@triton.jit
def offs_n_of(pid_n, BN: tl.constexpr, row):
    return pid_n * BN + row


@triton.jit
def _prefetch_l2(ptrs, mask):
    """prefetch.global.L2 of each (masked-in) address; no result."""
    tl.inline_asm_elementwise(
        asm="""
        {
        .reg .pred p;
        setp.ne.b32 p, $2, 0;
        @p prefetch.global.L2 [$1];
        mov.b32 $0, 0;
        }
        """,
        constraints="=r,l,r", args=[ptrs, mask.to(tl.int32)], dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def _moe_swap_kernel(
    a_ptr, b_ptr, b2_ptr, bs_ptr, b2s_ptr, out_ptr, rw_ptr, sorted_ptr, eids_ptr, npad_ptr, ids_ptr, ws_ptr, cnt_ptr,
    N, K, P, limit,
    stride_am, stride_be, stride_bn, stride_se, stride_sn, stride_om,
    A_DIV: tl.constexpr, OUT_DIV: tl.constexpr, GATE_UP: tl.constexpr, ALIGNED: tl.constexpr,
    BT: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, USE_ASM: tl.constexpr, DOT_F32: tl.constexpr,
    WORDS: tl.constexpr, SPLIT_K: tl.constexpr, PDL: tl.constexpr, zero_ptr, ZERO_PER, ZERO_N, ZERO: tl.constexpr,
):
    pid = tl.program_id(0)
    if PDL == 1:  # gate/up launch, small grid: the down launch (PDL) may start its prologue now
        gdc_launch_dependents()
    if ZERO:  # gate/up launch: clear the down kernel's fp32 output (no separate memset launch)
        zoffs = tl.arange(0, 1024)
        zend = tl.minimum(pid * ZERO_PER + ZERO_PER, ZERO_N)
        for z0 in range(pid * ZERO_PER, zend, 1024):
            zo = z0 + zoffs
            tl.store(zero_ptr + zo, tl.zeros([1024], dtype=tl.float32), mask=zo < zend)
    num_pid_n = tl.cdiv(N, BN)
    pid_k = pid % SPLIT_K  # K split over programs (down: atomic combine; gate/up: self-reducing)
    pid_m = pid // SPLIT_K // num_pid_n
    pid_n = pid // SPLIT_K % num_pid_n
    offs_t = tl.arange(0, BT)
    if ALIGNED:
        npad = tl.load(npad_ptr)
        if pid_m * BT >= npad:
            return
        e = tl.load(eids_ptr + pid_m).to(tl.int64)
        pair = tl.load(sorted_ptr + pid_m * BT + offs_t)
    else:  # one pair per tile: column 0 valid
        if pid_m >= P:
            return
        e = tl.load(ids_ptr + pid_m).to(tl.int64)
        pair = tl.where(offs_t == 0, pid_m, P)
    tvalid = pair < P
    arow = (pair // A_DIV).to(tl.int64)
    offs_n = pid_n * BN + tl.arange(0, BN)
    nmask = offs_n < N
    b_base = b_ptr + e * stride_be
    bs_base = bs_ptr + e * stride_se
    b2_base = b2_ptr + e * stride_be
    b2s_base = b2s_ptr + e * stride_se
    if PDL == 2:  # down launch: pull this program's weight rows into L2 while gate/up finishes, then wait
        k_lo = pid_k * (K // SPLIT_K)
        PL: tl.constexpr = 128  # bytes per prefetch (one L2 line)
        lines = tl.arange(0, BN * 8)
        for l0 in range(0, K // SPLIT_K // 2, PL * 8):
            row = lines // 8
            col = k_lo // 2 + l0 + (lines % 8) * PL
            _prefetch_l2(b_base + offs_n_of(pid_n, BN, row) * stride_bn + col,
                         (pid_n * BN + row < N) & (col < k_lo // 2 + K // SPLIT_K // 2))
        gdc_wait()
    acc = tl.zeros([BN, BT], dtype=tl.float32)
    acc2 = tl.zeros([BN, BT], dtype=tl.float32)
    a_rows = a_ptr + arow[:, None] * stride_am
    offs_k = tl.arange(0, BK)
    k_per = K // SPLIT_K
    for k0 in range(pid_k * k_per, pid_k * k_per + k_per, BK):
        a = tl.load(a_rows + (k0 + offs_k)[None, :], mask=tvalid[:, None], other=0.0)  # [BT, BK]
        if WORDS:
            xs = _x_words(a, BT, BK)
            acc = _words_step(_fp4_words_tile(b_base, bs_base, offs_n, nmask, k0, stride_bn, stride_sn, BN, BK,
                                              USE_ASM), xs, acc, DOT_F32)
            if GATE_UP:
                acc2 = _words_step(_fp4_words_tile(b2_base, b2s_base, offs_n, nmask, k0, stride_bn, stride_sn, BN,
                                                   BK, USE_ASM), xs, acc2, DOT_F32)
        else:
            a_e, a_o = tl.split(tl.reshape(a, (BT, BK // 2, 2)))
            if DOT_F32:
                a_e = a_e.to(tl.float32)
                a_o = a_o.to(tl.float32)
            a_e = tl.trans(a_e)
            a_o = tl.trans(a_o)
            lo, hi = _fp4_tile(b_base, bs_base, offs_n, nmask, k0, stride_bn, stride_sn, BN, BK, USE_ASM)
            if DOT_F32:
                acc = tl.dot(hi.to(tl.float32), a_o, tl.dot(lo.to(tl.float32), a_e, acc, input_precision="ieee"),
                             input_precision="ieee")
            else:
                acc = tl.dot(hi, a_o, tl.dot(lo, a_e, acc))
            if GATE_UP:
                lo2, hi2 = _fp4_tile(b2_base, b2s_base, offs_n, nmask, k0, stride_bn, stride_sn, BN, BK, USE_ASM)
                if DOT_F32:
                    acc2 = tl.dot(hi2.to(tl.float32), a_o,
                                  tl.dot(lo2.to(tl.float32), a_e, acc2, input_precision="ieee"), input_precision="ieee")
                else:
                    acc2 = tl.dot(hi2, a_o, tl.dot(lo2, a_e, acc2))
    if PDL == 3:  # gate/up launch, grid larger than the GPU: down programs once this wave is done
        gdc_launch_dependents()
    if GATE_UP and SPLIT_K > 1:
        # self-reducing split-K: partial tiles to the workspace; the last split of a tile (per-tile
        # arrival counter, reset by it) sums them and runs the SwiGLU epilogue. No memset, no extra launch.
        tile = pid // SPLIT_K
        tw = tl.arange(0, BN)[:, None] * BT + tl.arange(0, BT)[None, :]
        wmask = tvalid[None, :] & (tw >= 0)
        wbase = ws_ptr + tile.to(tl.int64) * (SPLIT_K * 2 * BN * BT)
        tl.store(wbase + (pid_k * 2) * (BN * BT) + tw, acc, mask=wmask)
        tl.store(wbase + (pid_k * 2 + 1) * (BN * BT) + tw, acc2, mask=wmask)
        tl.debug_barrier()
        old = tl.atomic_add(cnt_ptr + tile, 1, sem="acq_rel")
        if old == SPLIT_K - 1:
            acc = tl.zeros([BN, BT], dtype=tl.float32)
            acc2 = tl.zeros([BN, BT], dtype=tl.float32)
            for sk in range(SPLIT_K):
                acc += tl.load(wbase + (sk * 2) * (BN * BT) + tw, mask=wmask, other=0.0, cache_modifier=".cg")
                acc2 += tl.load(wbase + (sk * 2 + 1) * (BN * BT) + tw, mask=wmask, other=0.0, cache_modifier=".cg")
            tl.atomic_xchg(cnt_ptr + tile, 0)
            _store_h(acc, acc2, pair, tvalid, nmask, offs_n, out_ptr, rw_ptr, stride_om, OUT_DIV, limit)
    elif GATE_UP:
        _store_h(acc, acc2, pair, tvalid, nmask, offs_n, out_ptr, rw_ptr, stride_om, OUT_DIV, limit)
    else:
        omask = nmask[:, None] & tvalid[None, :]
        orow = (pair // OUT_DIV).to(tl.int64)
        tl.atomic_add(out_ptr + orow[None, :] * stride_om + offs_n[:, None], acc, mask=omask, sem="relaxed")


@triton.jit
def _store_h(acc, acc2, pair, tvalid, nmask, offs_n, out_ptr, rw_ptr, stride_om, OUT_DIV: tl.constexpr, limit):
    """h[pair, n] = silu(min(g, L)) * clamp(v, -L, L) * route_w[pair] (tile [BN, BT] of n x pairs)."""
    omask = nmask[:, None] & tvalid[None, :]
    orow = (pair // OUT_DIV).to(tl.int64)
    optrs = out_ptr + orow[None, :] * stride_om + offs_n[:, None]
    g = tl.minimum(acc, limit)
    v = tl.minimum(tl.maximum(acc2, -limit), limit)
    rw = tl.load(rw_ptr + pair, mask=tvalid, other=0.0)
    h = g / (1.0 + tl.exp(-g)) * v * rw[None, :]
    tl.store(optrs, h.to(out_ptr.dtype.element_ty), mask=omask)


def decode_config(num_pairs: int, n_out: int, gate_up: bool, interp: bool) -> dict:
    """Tile config of the swapped decode kernel (measured on the H200, docs/benchmarks.md issue 11)."""
    if interp:
        return dict(BT=16, BN=32, BK=64, num_warps=4, num_stages=1, ALIGNED=num_pairs > 4)
    return dict(BT=16, BN=64, BK=128, num_warps=4, num_stages=4, ALIGNED=num_pairs > 48)


_COUNTERS: dict = {}  # device -> int32 arrival counters of the gate/up split-K (always back at 0)


def _counters(device, n: int) -> torch.Tensor:
    """Zeroed per-tile counters, allocated once per device (a larger buffer if a launch needs more tiles;
    replaced buffers stay alive: a captured CUDA graph may still use them); every launch leaves them at 0."""
    bufs = _COUNTERS.setdefault(device, [])
    if not bufs or bufs[-1].numel() < n:
        bufs.append(torch.zeros(max(n, 16384), dtype=torch.int32, device=device))
    return bufs[-1]


def _launch(a, w, w2, out, rw, ids_flat, align, n_out, k_in, p, limit, a_div, out_div, gate_up, cfg, zero=None):
    from .common import fp4_use_asm, interpreting
    s_u8 = w.scale_u8()
    s2_u8 = w2.scale_u8() if w2 is not None else s_u8
    d2 = w2.data if w2 is not None else w.data
    use_asm = fp4_use_asm(w) and (w2 is None or fp4_use_asm(w2))
    if cfg["ALIGNED"]:
        sorted_ids, eids, npad = align
        n_m = eids.numel()
    else:
        sorted_ids = eids = npad = ids_flat
        n_m = p
    split = cfg.get("SPLIT_K", 1)
    if k_in % (split * cfg["BK"]):
        raise ValueError(f"K={k_in} is not a multiple of SPLIT_K*BK={split}*{cfg['BK']}")
    grid = (n_m * triton.cdiv(n_out, cfg["BN"]) * split,)
    zero_n = zero.numel() if zero is not None else 0
    zero_per = triton.cdiv(triton.cdiv(zero_n, grid[0]), 1024) * 1024
    pdl = cfg.get("PDL", 0) and not interpreting()
    if pdl:  # gate/up: early trigger only when all its programs fit on the GPU at once
        pdl = (1 if grid[0] <= 4 * num_sms(a.device) else 3) if gate_up else 2
    if gate_up and split > 1:  # self-reducing split-K workspace + arrival counters
        tiles = grid[0] // split
        ws = torch.empty(tiles * split * 2 * cfg["BN"] * cfg["BT"], dtype=torch.float32, device=a.device)
        cnt = _counters(a.device, tiles)
    else:
        ws = cnt = rw
    _moe_swap_kernel[grid](
        a, w.data, d2, s_u8, s2_u8, out, rw, sorted_ids, eids, npad, ids_flat, ws, cnt,
        n_out, k_in, p, float(limit),
        a.stride(0), w.data.stride(0), w.data.stride(1), s_u8.stride(0), s_u8.stride(1), out.stride(0),
        A_DIV=a_div, OUT_DIV=out_div, GATE_UP=gate_up, ALIGNED=cfg["ALIGNED"], BT=cfg["BT"], BN=cfg["BN"],
        BK=cfg["BK"], USE_ASM=use_asm, DOT_F32=interpreting(), WORDS=cfg.get("WORDS", False), SPLIT_K=split, PDL=pdl,
        zero_ptr=zero if zero is not None else rw, ZERO_PER=zero_per, ZERO_N=zero_n, ZERO=zero is not None,
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"], launch_pdl=pdl == 2)


def supports(x, w1, w3, w2, act_quant: bool) -> bool:
    """The swapped kernel covers MXFP4 experts with bf16 activations (fp32 under the interpreter),
    no FP8 activations, K a multiple of 128."""
    from ..quant_weight import QuantWeight
    from .common import interpreting
    ok_dtype = x.dtype == torch.bfloat16 or (interpreting() and x.dtype == torch.float32)
    return (not act_quant and ok_dtype and all(isinstance(w, QuantWeight) and w.fmt == "fp4" for w in (w1, w3, w2))
            and x.shape[1] % 128 == 0 and w1.shape[1] % 128 == 0)


def moe_experts_decode(x, w1, w3, w2, weights, ids, limit, config1=None, config2=None):
    """Same contract as kernels.ref.moe.moe_experts (MXFP4 experts, `supports`) -> [N, d] fp32."""
    from .common import interpreting
    from .routing import moe_align
    x = x.contiguous()
    n, d = x.shape
    k = ids.shape[1]
    num_e, inter = w1.shape[0], w1.shape[1]
    p = n * k
    if p == 0:
        return torch.zeros(n, d, dtype=torch.float32, device=x.device)
    interp = interpreting()
    c1 = dict(config1 or decode_config(p, inter, True, interp))
    c2 = dict(config2 or decode_config(p, d, False, interp))
    out = torch.empty(n, d, dtype=torch.float32, device=x.device)  # zeroed by the gate/up launch
    rw = weights.reshape(-1).float().contiguous()
    ids_flat = ids.reshape(-1).to(torch.int32).contiguous()
    al1 = moe_align(ids, num_e, c1["BT"]) if c1["ALIGNED"] else None
    al2 = al1 if (c2["ALIGNED"] and c1["ALIGNED"] and c2["BT"] == c1["BT"]) else (
        moe_align(ids, num_e, c2["BT"]) if c2["ALIGNED"] else None)
    h = torch.empty(p, inter, dtype=x.dtype, device=x.device)
    _launch(x, w1, w3, h, rw, ids_flat, al1, inter, d, p, limit, k, 1, True, c1, zero=out)
    _launch(h, w2, None, out, rw, ids_flat, al2, d, inter, p, limit, 1, k, False, c2)
    return out
