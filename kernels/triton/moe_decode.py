"""MXFP4 MoE decode kernel with swapped operands: the weights are the MMA's left operand.

Decode puts few tokens on each expert, so the token tile is tiny while the weight tile is the whole
stream. One program computes out^T[BN features, BT tokens] = W[BN, K] @ x^T[K, BT]: the weight tile is
loaded as int32 words (8 E2M1 codes each), converted in registers by packed PTX (`_fp4_words_asm`: 9
instructions per 4 weights, block scale folded into one mul.bf16x2 per 2 weights) straight into the
MMA's A-operand registers, no nibble interleave and no transpose; code position j of every word is
one dot, against the token tile's columns 8w + j (the small B operand). One tile per pair: 2-warp programs
(mma.sync); aligned tiles: 128 rows, 4 warps (wgmma), the up matrix in its own K loop (SEQ) -- the measured
picks of docs/benchmarks.md "Kernels at the roofline (issue 11)" (`decode_config`).

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

from .common import e2m1_f32, e8m0_to_f32, zero_share


def _fp4_words_ptx() -> str:
    """The conversion's PTX (see _fp4_words_asm): per byte b of the two words one prmt, then for its low and
    high nibble lanes mask, spread (x 0x1040 / 0x104), keep magnitude + sign bits, scale -> output 2b / 2b+1."""
    lines = ["", "        {", "        .reg .b32 y, t;"]
    for byte in range(4):
        lines.append(f"        prmt.b32 y, $8, $9, 0x0{byte + 4}0{byte};")
        for half, (mask, spread) in enumerate((("0x000F000F", "0x1040"), ("0x00F000F0", "0x104"))):
            lines += [f"        and.b32 t, y, {mask};", f"        mul.lo.u32 t, t, {spread};",
                      "        and.b32 t, t, 0x81C081C0;", f"        mul.rn.bf16x2 ${2 * byte + half}, t, $10;"]
    return "\n".join(lines + ["        }", ""])


_FP4_WORDS_PTX = tl.constexpr(_fp4_words_ptx())


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
        asm=_FP4_WORDS_PTX,
        constraints="=r,=r,=r,=r,=r,=r,=r,=r,r,r,r",
        args=[wd, sc], dtype=(tl.bfloat16,) * 8, is_pure=True, pack=2)


@triton.jit
def _tile_words(w_base, s_base, offs_n, nmask, k0, stride_wn, stride_sn, BN: tl.constexpr, BK: tl.constexpr,
                USE_ASM: tl.constexpr):
    """W[offs_n, k0:k0+BK] as int32 words [BN, BK/8] and the per-word scale [BN, BK/8]: bf16 2^126 * block
    scale for the packed PTX (USE_ASM), else fp32 2^14 * block scale for e2m1_f32."""
    W: tl.constexpr = BK // 8
    G: tl.constexpr = BK // 32
    kw = k0 // 8 + tl.arange(0, W)
    wd = tl.load(w_base.to(tl.pointer_type(tl.int32)) + offs_n[:, None] * (stride_wn // 4) + kw[None, :],
                 mask=nmask[:, None], other=0)
    ks = k0 // 32 + tl.arange(0, G)
    s = tl.load(s_base + offs_n[:, None] * stride_sn + ks[None, :], mask=nmask[:, None], other=0)
    if USE_ASM:
        sf = e8m0_to_f32(s, 126).to(tl.bfloat16)  # 2^(S-127) * 2^126 (S <= 128: checked by the caller)
    else:  # interpreter / scale bytes > 128: fp16 bit trick in fp32 (e2m1_f32 is the value * 2^-14)
        sf = e8m0_to_f32(s, 14)
    return wd, tl.reshape(tl.broadcast_to(sf[:, :, None], (BN, G, 4)), (BN, W))


@triton.jit
def _code(wd, sf, j: tl.constexpr):
    """Fallback conversion of code position j of every word (fp32 scale from _tile_words) -> bf16."""
    return (e2m1_f32((wd >> (4 * j)) & 0xF) * sf).to(tl.bfloat16)


@triton.jit
def _convert8(wd, sc, USE_ASM: tl.constexpr):
    """All 8 code positions of the words -> 8 tensors [BN, BK/8] bf16: tensor j column w = W[:, k0 + 8w + j]."""
    if USE_ASM:
        return _fp4_words_asm(wd, sc)
    return (_code(wd, sc, 0), _code(wd, sc, 1), _code(wd, sc, 2), _code(wd, sc, 3), _code(wd, sc, 4),
            _code(wd, sc, 5), _code(wd, sc, 6), _code(wd, sc, 7))


@triton.jit
def _mma(a, b, acc, DOT_F32: tl.constexpr):
    if DOT_F32:  # interpreter: its bf16 dot is wrong
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    return tl.dot(a, b, acc)


@triton.jit
def _expert_step(w_base, s_base, offs_n, nmask, k0, stride_wn, stride_sn, xs, acc,
                 BN: tl.constexpr, BK: tl.constexpr, USE_ASM: tl.constexpr, DOT_F32: tl.constexpr):
    """acc += W[offs_n, k0:k0+BK] @ x^T (xs: the 8 code-position tiles of _x_words): one dot per code position."""
    wd, sc = _tile_words(w_base, s_base, offs_n, nmask, k0, stride_wn, stride_sn, BN, BK, USE_ASM)
    wt = _convert8(wd, sc, USE_ASM)
    acc = _mma(wt[0], xs[0], acc, DOT_F32)
    acc = _mma(wt[1], xs[1], acc, DOT_F32)
    acc = _mma(wt[2], xs[2], acc, DOT_F32)
    acc = _mma(wt[3], xs[3], acc, DOT_F32)
    acc = _mma(wt[4], xs[4], acc, DOT_F32)
    acc = _mma(wt[5], xs[5], acc, DOT_F32)
    acc = _mma(wt[6], xs[6], acc, DOT_F32)
    return _mma(wt[7], xs[7], acc, DOT_F32)


@triton.jit
def _x_words(a, BT: tl.constexpr, BK: tl.constexpr):
    """Token tile [BT, BK] -> 8 tiles [BK/8, BT], tile j row w = column 8w + j."""
    W: tl.constexpr = BK // 8
    a8 = tl.reshape(a, (BT, W, 2, 2, 2))  # last dims: bits 2, 1, 0 of j
    e0, e1 = tl.split(a8)  # bit 0 of j
    e00, e10 = tl.split(e0)  # bit 1
    e01, e11 = tl.split(e1)
    x0, x4 = tl.split(e00)  # bit 2
    x2, x6 = tl.split(e10)
    x1, x5 = tl.split(e01)
    x3, x7 = tl.split(e11)
    return (tl.trans(x0), tl.trans(x1), tl.trans(x2), tl.trans(x3), tl.trans(x4), tl.trans(x5), tl.trans(x6),
            tl.trans(x7))


@triton.jit(do_not_specialize=["P"], do_not_specialize_on_alignment=["sorted_ptr", "eids_ptr", "npad_ptr", "ids_ptr"])
def _moe_swap_kernel(
    a_ptr, b_ptr, b2_ptr, bs_ptr, b2s_ptr, out_ptr, rw_ptr, sorted_ptr, eids_ptr, npad_ptr, ids_ptr,
    N, K, P, limit,
    stride_am, stride_be, stride_bn, stride_se, stride_sn, stride_om,
    A_DIV: tl.constexpr, OUT_DIV: tl.constexpr, GATE_UP: tl.constexpr, ALIGNED: tl.constexpr,
    BT: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, USE_ASM: tl.constexpr, DOT_F32: tl.constexpr,
    SEQ: tl.constexpr,
    zero_ptr, ZERO_PER, ZERO_N, ZERO: tl.constexpr,
):
    pid = tl.program_id(0)
    if ZERO:  # gate/up launch: clear the down kernel's fp32 output (no separate memset launch)
        zero_share(zero_ptr, pid, ZERO_PER, ZERO_N)
    num_pid_n = tl.cdiv(N, BN)
    pid_m = pid // num_pid_n
    pid_n = pid % num_pid_n
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
    acc = tl.zeros([BN, BT], dtype=tl.float32)
    acc2 = tl.zeros([BN, BT], dtype=tl.float32)
    a_rows = a_ptr + arow[:, None] * stride_am
    offs_k = tl.arange(0, BK)
    for k0 in range(0, K, BK):
        a = tl.load(a_rows + (k0 + offs_k)[None, :], mask=tvalid[:, None], other=0.0)  # [BT, BK]
        xs = _x_words(a, BT, BK)
        acc = _expert_step(b_base, bs_base, offs_n, nmask, k0, stride_bn, stride_sn, xs, acc, BN, BK, USE_ASM,
                           DOT_F32)
        if GATE_UP and not SEQ:
            acc2 = _expert_step(b2_base, b2s_base, offs_n, nmask, k0, stride_bn, stride_sn, xs, acc2, BN, BK, USE_ASM,
                                DOT_F32)
    if GATE_UP and SEQ:  # the up matrix in its own K loop: one matrix's operands live at a time (fewer registers)
        for k0 in range(0, K, BK):
            a = tl.load(a_rows + (k0 + offs_k)[None, :], mask=tvalid[:, None], other=0.0)
            xs = _x_words(a, BT, BK)
            acc2 = _expert_step(b2_base, b2s_base, offs_n, nmask, k0, stride_bn, stride_sn, xs, acc2, BN, BK, USE_ASM,
                                DOT_F32)
    omask = nmask[:, None] & tvalid[None, :]
    orow = (pair // OUT_DIV).to(tl.int64)
    optrs = out_ptr + orow[None, :] * stride_om + offs_n[:, None]
    if GATE_UP:
        g = tl.minimum(acc, limit)
        v = tl.minimum(tl.maximum(acc2, -limit), limit)
        rw = tl.load(rw_ptr + pair, mask=tvalid, other=0.0)
        h = g / (1.0 + tl.exp(-g)) * v * rw[None, :]
        tl.store(optrs, h.to(out_ptr.dtype.element_ty), mask=omask)
    else:
        tl.atomic_add(optrs, acc, mask=omask, sem="relaxed")


# Tiles by shape, from the issue-11 sweep (one H200, uniform routing, bench entry moe_decode_fp4, W1 run):
# % of HBM over touched expert bytes at batch 1 / 8 / 64 / 256 (pairs 6 / 48 / 384 / 1536):
#   BN64 2 warps 4 stages, one tile per pair:  33.0 / 47.5 / -    / -
#   BN128 4 warps (wgmma) 3 stages, per pair:  26.3 / 49.8 / -    / -
#   BN64 2 warps 4 stages, aligned:            29.6 / 48.8 / 55.7 / 54.8
#   BN128 4 warps (wgmma) 3 stages, aligned:   24.4 / 48.6 / 56.1 / 53.3
# (BN32 2 warps, BN64 / BN128 with 4-8 warps, 6 stages, a K split of the down launch, PDL of the down
# launch with an L2 prefetch, and byte tiles with even/odd dots all measured slower.)
# Session 3 (bench moe_decode_fp4 quick set, same GPU): the aligned BN128 4-warp tile with the up matrix in
# its own K loop (SEQ), 3 stages: 49.7 / 56.1 / 54.1 % at batch 8 / 64 / 256 against 48.6 / 54.5 / 53.2 for
# BN64 2 warps 4 stages in the same run (285 / 1124 / 1477 us vs 291 / 1158 / 1502): shipped. Register caps
# (168, 128), two MMA chains, SEQ on the BN64 tile and 6 stages all measured slower (41-53 %).
# One tile per pair reads an expert once per pair that picked it: free at batch 1 (a token's top-k are
# distinct), 1.6x the touched bytes at batch 8 under skewed routing (48 pairs on 30 experts, issue-6
# run 3); so the aligned layout from 3 tokens on (at batch 8 uniform it is within 2 % of the best).
def decode_config(num_pairs: int, interp: bool = False) -> dict:
    """Tile config of the swapped decode kernel for `num_pairs` (token, slot) pairs."""
    if interp:
        return dict(BT=16, BN=32, BK=128, num_warps=4, num_stages=1, ALIGNED=num_pairs > 4)
    if num_pairs <= 12:
        return dict(BT=16, BN=64, BK=128, num_warps=2, num_stages=4, ALIGNED=False)
    return dict(BT=16, BN=128, BK=128, num_warps=4, num_stages=3, ALIGNED=True, SEQ=True)


def _launch(a, w, w2, out, rw, ids_flat, align, n_out, k_in, p, limit, a_div, out_div, gate_up, cfg, zero=None):
    from .common import fp4_use_asm, interpreting
    s_u8 = w.scale_u8()
    s2_u8 = w2.scale_u8() if w2 is not None else s_u8
    d2 = w2.data if w2 is not None else w.data
    use_asm = fp4_use_asm(w) and (w2 is None or fp4_use_asm(w2))
    if k_in % cfg["BK"]:
        raise ValueError(f"K={k_in} is not a multiple of BK={cfg['BK']}")
    if cfg["ALIGNED"]:
        sorted_ids, eids, npad = align
        n_m = eids.numel()
    else:
        sorted_ids = eids = npad = ids_flat
        n_m = p
    grid = (n_m * triton.cdiv(n_out, cfg["BN"]),)
    zero_n = zero.numel() if zero is not None else 0
    zero_per = triton.cdiv(triton.cdiv(zero_n, grid[0]), 1024) * 1024
    _moe_swap_kernel[grid](
        a, w.data, d2, s_u8, s2_u8, out, rw, sorted_ids, eids, npad, ids_flat,
        n_out, k_in, p, float(limit),
        a.stride(0), w.data.stride(0), w.data.stride(1), s_u8.stride(0), s_u8.stride(1), out.stride(0),
        A_DIV=a_div, OUT_DIV=out_div, GATE_UP=gate_up, ALIGNED=cfg["ALIGNED"], BT=cfg["BT"], BN=cfg["BN"],
        BK=cfg["BK"], USE_ASM=use_asm, DOT_F32=interpreting(), SEQ=cfg.get("SEQ", False),
        zero_ptr=zero if zero is not None else rw, ZERO_PER=zero_per, ZERO_N=zero_n, ZERO=zero is not None,
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
        **({"maxnreg": cfg["maxnreg"]} if cfg.get("maxnreg") else {}))  # register cap: more programs per SM


def supports(x, w1, w3, w2, act_quant: bool) -> bool:
    """The swapped kernel covers MXFP4 experts with bf16 activations (fp32 under the interpreter),
    no FP8 activations, hidden and intermediate sizes multiples of 128."""
    from ..quant_weight import QuantWeight
    from .common import interpreting
    ok_dtype = x.dtype == torch.bfloat16 or (interpreting() and x.dtype == torch.float32)
    return (not act_quant and ok_dtype and all(isinstance(w, QuantWeight) and w.fmt == "fp4" for w in (w1, w3, w2))
            and x.shape[1] % 128 == 0 and w1.shape[1] % 128 == 0)


def moe_experts_decode(x, w1, w3, w2, weights, ids, limit, config1=None, config2=None):
    """Same contract as kernels.ref.moe.moe_experts (MXFP4 experts, `supports`) -> [N, d] fp32.
    config1 / config2: tiles of the gate/up and down launches (default `decode_config`)."""
    from .common import interpreting
    from .routing import moe_align
    x = x.contiguous()
    n, d = x.shape
    k = ids.shape[1]
    num_e, inter = w1.shape[0], w1.shape[1]
    p = n * k
    if p == 0:
        return torch.zeros(n, d, dtype=torch.float32, device=x.device)
    c1 = dict(config1 or decode_config(p, interpreting()))
    c2 = dict(config2 or decode_config(p, interpreting()))
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
