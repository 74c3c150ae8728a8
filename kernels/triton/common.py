"""Shared Triton helpers: weight-tile dequantization (bf16 / FP8 128x128 blocks / MXFP4) and UE8M0."""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@triton.jit
def e8m0_to_f32(s, OFFSET: tl.constexpr):
    """UE8M0 byte tensor (any int type) -> fp32 2^(S - 127 + OFFSET), built from the exponent bits."""
    return (((s.to(tl.int32) & 0xFF) + OFFSET) << 23).to(tl.float32, bitcast=True)


@triton.jit
def act_quant_tile(a, DOT_F32: tl.constexpr):
    """Per-row FP8 E4M3 quantization of an activation tile [BM, 128] (one 1x128 block per row), the
    reference act_quant: scale 2^ceil(log2(amax/448)), amax >= 1e-4 -> (codes, scales [BM] fp32).
    Codes are float8e4nv on the GPU; under the interpreter (DOT_F32) fp32 values rounded by hand to
    the E4M3 grid (round to nearest even; its fp32->fp8 cast mis-rounds across binades)."""
    af = a.to(tl.float32)
    amax = tl.maximum(tl.max(tl.abs(af), axis=1), 1e-4)
    xs = tl.exp2(tl.ceil(tl.log2(amax / 448.0)))
    av = af / xs[:, None]
    if DOT_F32:
        aq = round_e4m3(av)
    else:
        aq = av.to(tl.float8e4nv)
    return aq, xs


@triton.jit
def round_e4m3(av):
    """fp32 values (|v| <= 448) rounded to the E4M3 grid, kept in fp32: the interpreter's stand-in for the
    fp32 -> float8e4nv cast (round to nearest even; its own cast mis-rounds across binades)."""
    ev = tl.maximum(tl.floor(tl.log2(tl.maximum(tl.abs(av), 1e-30))), -6.0)
    step = tl.exp2(ev - 3.0)
    t = av / step
    r = tl.floor(t + 0.5)
    r = tl.where((r - t == 0.5) & (r - 2.0 * tl.floor(r * 0.5) != 0.0), r - 1.0, r)  # ties to even
    return r * step


@triton.jit
def rope_pair(x0, x1, c, s):
    """RoPE of the channel pairs (x0, x1) by the angles of cosine c and sine s (the inverse rotation: -s); the
    one rotation the norm/RoPE kernel and the attention output's fused inverse RoPE share."""
    return x0 * c - x1 * s, x0 * s + x1 * c


@triton.jit
def zero_share(zero_ptr, pid, ZERO_PER, ZERO_N):
    """Program `pid` clears fp32 elements [pid*ZERO_PER, min((pid+1)*ZERO_PER, ZERO_N)) of zero_ptr (a GEMM
    launch zeroing the next launch's atomic-add output instead of a separate memset)."""
    zoffs = tl.arange(0, 1024)
    zend = tl.minimum(pid * ZERO_PER + ZERO_PER, ZERO_N)
    for z0 in range(pid * ZERO_PER, zend, 1024):
        zo = z0 + zoffs
        tl.store(zero_ptr + zo, tl.zeros([1024], dtype=tl.float32), mask=zo < zend)


@triton.jit
def mma(a, b, acc, DOT_F32: tl.constexpr):
    if DOT_F32:
        return tl.dot(a, b, acc, input_precision="ieee")
    return tl.dot(a, b, acc)


@triton.jit
def load_w_tile(w_ptr, s_ptr, offs_n, nmask, k0, K, stride_n, stride_k, stride_sn, stride_sk,
                WFMT: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, DOT_T: tl.constexpr):
    """Weight tile W[offs_n, k0:k0+BK] -> [BK, BN] in DOT_T, block scale already applied.

    WFMT 0: plain float weights. 1: float8_e4m3fn bytes + UE8M0 [N/128, K/128] (BK divides 128, so
    one scale per column; powers of two, so the scaled value is exact in bf16). 2: MXFP4 (BK % 32 == 0).
    (An even/odd-nibble variant without the join/reshape measured 3-4x slower on the H200.)"""
    if WFMT == 6:  # MXFP4 "interleave_asm": the packed PTX conversion (scale folded in) on the same 2-D
        # byte tiles as WFMT 2, nibble interleave afterwards (GPU only, max scale byte <= 128)
        kp = k0 // 2 + tl.arange(0, BK // 2)
        p = tl.load(w_ptr + offs_n[:, None] * stride_n + kp[None, :] * stride_k,
                    mask=nmask[:, None] & (kp[None, :] < K // 2), other=0)
        ks = k0 // 32 + tl.arange(0, BK // 32)
        s = tl.load(s_ptr + offs_n[:, None] * stride_sn + ks[None, :] * stride_sk,
                    mask=nmask[:, None] & (ks[None, :] < K // 32), other=0)
        sb = e8m0_to_f32(s, 126).to(tl.bfloat16)
        sfull = tl.reshape(tl.broadcast_to(sb[:, :, None], (BN, BK // 32, 16)), (BN, BK // 2))
        lo, hi = _fp4x4_to_bf16x2_asm(p, sfull)
        return tl.trans(tl.join(lo, hi).reshape(BN, BK))
    if WFMT == 2:
        # MXFP4: int8 [N, K/2] (low nibble = even k) + UE8M0 [N, K/32]. E2M1 -> fp16 bit trick:
        # (c&7)<<9 | sign<<15 is e2m1(c) * 2^-14; the 2^14 goes into the scale.
        kp = k0 // 2 + tl.arange(0, BK // 2)
        p = tl.load(w_ptr + offs_n[:, None] * stride_n + kp[None, :] * stride_k,
                    mask=nmask[:, None] & (kp[None, :] < K // 2), other=0)
        p = p.to(tl.int32) & 0xFF
        v = e2m1_f32(tl.join(p & 0xF, p >> 4).reshape(BN, BK))
        ks = k0 // 32 + tl.arange(0, BK // 32)
        s = tl.load(s_ptr + offs_n[:, None] * stride_sn + ks[None, :] * stride_sk,
                    mask=nmask[:, None] & (ks[None, :] < K // 32), other=0)
        sf = e8m0_to_f32(s, 14)
        return tl.trans((v.reshape(BN, BK // 32, 32) * sf[:, :, None]).reshape(BN, BK).to(DOT_T))
    kk = k0 + tl.arange(0, BK)
    w = tl.load(w_ptr + offs_n[:, None] * stride_n + kk[None, :] * stride_k,
                mask=nmask[:, None] & (kk[None, :] < K), other=0)
    if WFMT == 1:
        s = tl.load(s_ptr + (offs_n // 128) * stride_sn + (k0 // 128) * stride_sk, mask=nmask, other=0)
        w = w.to(tl.float8e4nv, bitcast=True).to(DOT_T) * e8m0_to_f32(s, 0).to(DOT_T)[:, None]
    else:
        w = w.to(DOT_T)
    return tl.trans(w)


@triton.jit
def _fp4x4_to_bf16x2_asm(p, sc):
    """Four MXFP4 bytes per asm instance -> (low-nibble values, high-nibble values) as bf16, times sc.

    E2M1 code c = s|e1 e0 m goes to bf16 bits (c&7)<<6 | (c&8)<<12, i.e. e2m1(c) * 2^-126 (code 1 is a
    bf16 subnormal; bf16 multiply keeps subnormals), so one mul.bf16x2 by sc = 2^(S-127) * 2^126
    applies the 2^126 and the block scale to two values at once: ~2.5 integer ops + 0.5 mul per weight.
    Bytes are spread to 16-bit lanes first (prmt), so both halves of a register shift together."""
    return tl.inline_asm_elementwise(
        asm="""
        {
        .reg .b32 z, y0, y1, t0, t1, u0, u1;
        mov.b32 z, 0;
        prmt.b32 y0, $4, z, 0x4140;
        prmt.b32 y1, $4, z, 0x4342;
        shl.b32 t0, y0, 6;
        and.b32 t0, t0, 0x01C001C0;
        shl.b32 u0, y0, 12;
        and.b32 u0, u0, 0x80008000;
        or.b32 t0, t0, u0;
        mul.rn.bf16x2 $0, t0, $5;
        shl.b32 t1, y1, 6;
        and.b32 t1, t1, 0x01C001C0;
        shl.b32 u1, y1, 12;
        and.b32 u1, u1, 0x80008000;
        or.b32 t1, t1, u1;
        mul.rn.bf16x2 $1, t1, $6;
        shl.b32 t0, y0, 2;
        and.b32 t0, t0, 0x01C001C0;
        shl.b32 u0, y0, 8;
        and.b32 u0, u0, 0x80008000;
        or.b32 t0, t0, u0;
        mul.rn.bf16x2 $2, t0, $5;
        shl.b32 t1, y1, 2;
        and.b32 t1, t1, 0x01C001C0;
        shl.b32 u1, y1, 8;
        and.b32 u1, u1, 0x80008000;
        or.b32 t1, t1, u1;
        mul.rn.bf16x2 $3, t1, $6;
        }
        """,
        constraints="=r,=r,=r,=r,r,r,r",
        args=[p, sc], dtype=(tl.bfloat16, tl.bfloat16), is_pure=True, pack=4)


@triton.jit
def e2m1_f32(c):
    """E2M1 code (int32 0..15) -> fp32 value * 2^-14 (fp16 bit trick; the 2^14 goes into the scale)."""
    bits = ((c & 7) << 9) | ((c & 8) << 12)
    return bits.to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)


@triton.jit
def load_fp4_split(w_ptr, s_ptr, offs_n, nmask, k0, K, stride_n, stride_k, stride_sn, stride_sk,
                   BN: tl.constexpr, BK: tl.constexpr, DOT_T: tl.constexpr, USE_ASM: tl.constexpr):
    """MXFP4 tile W[offs_n, k0:k0+BK] -> (W[:, even k]^T, W[:, odd k]^T), each [BK/2, BN] in DOT_T, scaled.

    No nibble interleave: the caller splits its activation tile into even/odd k and runs two dots.
    Bytes are loaded as [BN, BK/32, 16] (one 16-byte run per 32-value scale group) so the scale
    broadcasts over the last dim. USE_ASM: packed bf16 conversion (GPU); else the fp16 bit trick."""
    G: tl.constexpr = BK // 32
    g = tl.arange(0, G)
    j = tl.arange(0, 16)
    kp = k0 // 2 + g[None, :, None] * 16 + j[None, None, :]
    p = tl.load(w_ptr + offs_n[:, None, None] * stride_n + kp * stride_k,
                mask=nmask[:, None, None] & (kp < K // 2), other=0)
    ks = k0 // 32 + g
    s = tl.load(s_ptr + offs_n[:, None] * stride_sn + ks[None, :] * stride_sk,
                mask=nmask[:, None] & (ks[None, :] < K // 32), other=0)
    if USE_ASM:
        sc = e8m0_to_f32(s, 126).to(tl.bfloat16)  # 2^(S-127) * 2^126 (S <= 128: checked by the caller)
        lo, hi = _fp4x4_to_bf16x2_asm(p, tl.broadcast_to(sc[:, :, None], (BN, G, 16)))
    else:
        pi = p.to(tl.int32) & 0xFF
        sf = e8m0_to_f32(s, 14)[:, :, None]
        lo = e2m1_f32(pi & 0xF) * sf
        hi = e2m1_f32(pi >> 4) * sf
    lo = tl.reshape(lo.to(DOT_T), (BN, BK // 2))
    hi = tl.reshape(hi.to(DOT_T), (BN, BK // 2))
    return tl.trans(lo), tl.trans(hi)


def dot_dtype(x: torch.Tensor):
    """(Triton dtype of the MMA operands, fp32-dot flag). The interpreter needs fp32 (bf16 dot bug)."""
    if interpreting() or x.dtype == torch.float32:
        return tl.float32, True
    return (tl.float16 if x.dtype == torch.float16 else tl.bfloat16), False


FP4_MODES = ("interleave", "interleave_asm", "split")


def weight_args(w, fp4_mode: str = "interleave"):
    """(data tensor, scale u8 tensor or dummy, WFMT) for a plain tensor or a QuantWeight.

    WFMT 0 plain, 1 FP8 blocks; MXFP4: 2 "interleave" (nibble join + fp16 bit trick; the default: the
    fastest measured on the H200, docs/benchmarks.md), 6 "interleave_asm" (same tiles, packed PTX
    conversion: 440 vs 717 SASS instructions per K step, not yet timed), 3 "split" (even/odd dots,
    packed PTX conversion). (A tl.dot_scaled variant measured slower everywhere and was removed.)"""
    from ..quant_weight import QuantWeight
    if isinstance(w, QuantWeight):
        if w.fmt == "fp8":
            return w.data.view(torch.uint8), w.scale_u8(), 1
        if fp4_mode not in FP4_MODES:
            raise ValueError(f"unknown MXFP4 kernel mode {fp4_mode!r}")
        return w.data, w.scale_u8(), {"split": 3, "interleave": 2, "interleave_asm": 6}[fp4_mode]
    return w, w, 0


def derived(src: torch.Tensor, name: str, make):
    """make() -> a tensor derived from the weight `src` (split parts, converted scales), computed once per `src`
    and its version counter and kept on `src` itself under `name` (it lives and dies with the weight; an
    in-place update of `src` derives again). Inference-mode tensors have no version counter: derived per call.
    Decode graphs and prefill steps then launch nothing for it. It must first be made outside CUDA-graph capture
    (the graph warm-ups run every bucket eagerly first): made during capture, its kernels would only be recorded
    and the cached tensor would hold garbage for every eager call until the graph's first replay."""
    try:
        version = src._version
    except RuntimeError:
        return make()
    cached = getattr(src, name, None)
    if cached is None or cached[0] != version:
        if src.is_cuda and torch.cuda.is_current_stream_capturing():
            raise RuntimeError(f"{name} of a weight is first needed inside CUDA-graph capture: run the captured "
                               "forward eagerly once before capturing it")
        cached = (version, make())
        setattr(src, name, cached)
    return cached[1]


def fp4_use_asm(w) -> bool:
    """The packed bf16 conversion folds 2^126 into the scale: valid while every UE8M0 byte is <= 128
    (|w| <= 12); larger scales (never seen in checkpoints) take the fp16-trick conversion instead."""
    return not interpreting() and w.max_scale_byte() <= 128


# ---- radix top-k helpers (triton/indexer.py, triton/topk_long.py) ----------------------------------
@triton.jit
def ordered_key(x):
    """fp32 -> uint32 key with the same order (radix top-k of the indexer, indexer.py / topk_long.py)."""
    bits = x.to(tl.uint32, bitcast=True)
    neg = (bits >> 31) == 1
    return tl.where(neg, ~bits, bits | 0x80000000)


@triton.jit
def select_digit(hist, need, prefix, pmask, shift, bins):
    """One radix level: the digit d* holding the k-th largest key (count of keys with digit >= d*
    reaches `need`), how many are still needed below it, and the prefix/mask extended by d*."""
    cum_desc = tl.sum(hist, 0) - tl.cumsum(hist, 0) + hist  # count with digit >= d
    dstar = tl.max(tl.where(cum_desc >= need, bins, 0), 0)
    need = need - tl.sum(tl.where(bins == dstar, cum_desc - hist, 0), 0)
    prefix = prefix | (dstar.to(tl.uint32) << shift)
    pmask = pmask | (tl.full([], 255, tl.uint32) << shift)
    return need, prefix, pmask


@triton.jit
def radix_kth(key, ok, need):
    """The need-th largest ordered key among `ok` (registers; four 8-bit histogram levels) -> (T, how many of
    the ties == T still to take)."""
    prefix = tl.zeros([], tl.uint32)
    pmask = tl.zeros([], tl.uint32)
    bins = tl.arange(0, 256)
    for level in tl.static_range(4):
        shift = 24 - 8 * level
        hist = tl.histogram(((key >> shift) & 255).to(tl.int32), 256, mask=ok & ((key & pmask) == prefix))
        need, prefix, pmask = select_digit(hist, need, prefix, pmask, shift, bins)
    return prefix, need


@triton.jit
def emit_topk(ids, key, ok, thr, need, orow, K: tl.constexpr):
    """Write the ids with key > thr in index order (slots 0..), then the first `need` ties == thr after them:
    the top-K of a row held in registers, given radix_kth's (thr, need)."""
    gt = ok & (key > thr)
    eq = ok & (key == thr)
    rank_eq = tl.cumsum(eq.to(tl.int32), 0) - 1
    tl.store(orow + tl.cumsum(gt.to(tl.int32), 0) - 1, ids, mask=gt)
    tl.store(orow + (K - need) + rank_eq, ids, mask=eq & (rank_eq < need))


@triton.jit
def stream_topk(srow, orow, limit, K: tl.constexpr, BLOCK: tl.constexpr):
    """Top-K of the ordered keys of scores srow[:limit] (limit > K) -> orow[:K]: four 8-bit radix histogram
    passes streaming the row in BLOCK-entry chunks, then one compaction pass writing every entry with key > T in
    index order and the lowest-index ties == T after them (the indexer's streaming top-k; topk_prefill's
    fallback)."""
    offs = tl.arange(0, BLOCK)
    prefix = tl.zeros([], tl.uint32)
    pmask = tl.zeros([], tl.uint32)
    need = tl.full([], K, tl.int32)  # how many still to take at/below the current prefix
    bins = tl.arange(0, 256)
    for level in tl.static_range(4):
        shift = 24 - 8 * level
        hist = tl.zeros([256], tl.int32)
        for e0 in range(0, limit, BLOCK):
            e = e0 + offs
            ok_c = e < limit
            key_c = ordered_key(tl.load(srow + e, mask=ok_c, other=0.0))
            sel = ok_c & ((key_c & pmask) == prefix)
            hist += tl.histogram(((key_c >> shift) & 255).to(tl.int32), 256, mask=sel)
        need, prefix, pmask = select_digit(hist, need, prefix, pmask, shift, bins)
    n_gt = K - need
    cnt_gt = tl.zeros([], tl.int32)
    cnt_eq = tl.zeros([], tl.int32)
    for e0 in range(0, limit, BLOCK):
        e = e0 + offs
        ok_c = e < limit
        key_c = ordered_key(tl.load(srow + e, mask=ok_c, other=0.0))
        gt = ok_c & (key_c > prefix)
        eq = ok_c & (key_c == prefix)
        gi = gt.to(tl.int32)
        ei = eq.to(tl.int32)
        slot_gt = cnt_gt + tl.cumsum(gi, 0) - 1
        rank_eq = cnt_eq + tl.cumsum(ei, 0) - 1
        tl.store(orow + slot_gt, e, mask=gt)
        tl.store(orow + n_gt + rank_eq, e, mask=eq & (rank_eq < need))
        cnt_gt += tl.sum(gi, 0)
        cnt_eq += tl.sum(ei, 0)
