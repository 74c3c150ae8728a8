"""FP8 operands for the grouped-GEMM MoE prefill (moe_prefill.py): E4M3 experts x E4M3 activations.

The bf16 path rebuilds a bf16 copy of every MXFP4 expert matrix per call (4.3 GB written per V4-Flash
matrix) and runs torch's bf16 grouped GEMM; in the 1M-token prompt that is 5.0 s of dequantization and 5.1 s
of GEMM (docs/benchmarks.md, session 8). Here the copy is E4M3 (half the bytes) and the GEMMs are
`torch._scaled_grouped_mm` with row-wise scales:

* weights: row n of an MXFP4 matrix is e2m1 x 2^(S[n, g] - 127) over its 1x32 groups g. With the row's
  largest scale byte M, the code e2m1 x 2^(S - M + 6) is exact in E4M3 (at most 6 x 64 = 384 <= 448; E2M1's
  one mantissa bit fits E4M3's three; every E2M1 magnitude is a multiple of 0.5 x 2^(S - M + 6)): normal for
  S - M >= -11 (the kernel's fast tiles), on E4M3's subnormal grid (2^-9) down to S - M = -14, rounded to
  nearest even below that (groups 2^15 smaller than the row's largest); the row scale is 2^(M - 133). The same
  conversion the reference's fp4_gemm makes in its kernel (architecture.md: FP4 -> FP8 is lossless).
* activations: one fp32 scale per row (amax / 448), the gather by expert fused into the quantization pass.
  This is the numerical change against the bf16 path: activations carry E4M3's 3 mantissa bits, as the
  reference GEMMs' 1x128-block FP8 activations do, with one scale per row instead of one per 128 columns.

Taken on the measured GPU class (fp8_table.MEASURED_CAPABILITY, H200): the 1M-token prompt 39.97 -> 37.38 s
and the MoE call at 8,192 tokens 10.0 -> 7.8 ms (docs/benchmarks.md, session 9). `V4_MOE_PREFILL_FP8`:
`auto` (default), `1` (any CUDA GPU with `torch._scaled_grouped_mm`), `0` (the bf16 path). Off CUDA (the
interpreter tests) the scaled grouped GEMM is emulated in torch with the same operands.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .common import derived, interpreting, round_e4m3
from .device_info import capability
from .fp8_table import MEASURED_CAPABILITY

SWITCH = os.environ.get("V4_MOE_PREFILL_FP8", "auto")  # "auto": the measured GPU class; "1": on; "0": off
if SWITCH not in ("auto", "0", "1"):
    raise ValueError(f"V4_MOE_PREFILL_FP8 must be auto, 0 or 1, got {SWITCH!r}")
ROW_SHIFT = 6  # binades the row's largest group is lifted by: 6 x 2^6 = 384 <= 448, E4M3's largest finite


@triton.jit
def _e4m3_bits(c, sh):
    """E2M1 code c (int32 0..15) x 2^sh (sh <= 6) -> its E4M3 byte (int32 0..255), rounded to nearest even on
    E4M3's subnormal grid below 2^-6; integer arithmetic only (the same bits in the interpreter and on the GPU)."""
    e = (c >> 1) & 3
    x = tl.where(e > 0, e - 1, -1) + sh  # the value's binary exponent (0.5 = 2^-1 for code 1)
    m3 = tl.where(e > 0, (c & 1) << 2, 0)  # E2M1's one mantissa bit as E4M3's top one
    normal = ((x + 7) << 3) | m3
    k = tl.minimum(tl.maximum(-(x + 6), 1), 30)  # subnormal: (8 + m3) x 2^(x - 3) in units of 2^-9, >> k
    v = 8 + m3
    q = v >> k
    rem = v - (q << k)
    half = 1 << (k - 1)
    sub = q + ((rem > half) | ((rem == half) & ((q & 1) == 1))).to(tl.int32)  # 8 = the smallest normal, exactly
    mag = tl.where(x >= -6, normal, sub)
    return tl.where((c & 7) != 0, mag, 0) | ((c & 8) << 4)


@triton.jit
def _bytes4(w, base, BIT0: tl.constexpr):
    """The E4M3 bytes of the four codes at nibbles BIT0/4 .. BIT0/4 + 3 of w, packed little-endian, for
    values known to be normal: code c with magnitude bits c & 7 = e m (e > 0) is 2^(e-1) (1 + m/2) x 2^sh, whose
    byte is base + (c & 7) << 2 (exponent e - 1 + sh + 7, mantissa m << 2); c & 7 == 1 is 2^(sh-1) (base);
    c & 7 == 0 is zero; bit 3 is the sign."""
    acc = tl.zeros_like(w)
    for j in tl.static_range(4):
        c = (w >> (BIT0 + 4 * j)) & 0xF
        m = c & 7
        mag = tl.where(m > 1, base + (m << 2), tl.where(m == 1, base, 0))
        acc |= (mag | ((c & 8) << 4)) << (8 * j)
    return acc


@triton.jit
def _word_e4m3_asm(w, base):
    """_bytes4 of a whole word in PTX: (bytes of codes 0-3, bytes of codes 4-7), values known to be normal.

    The eight magnitudes' bytes for this word's group form an 8-byte table (0, base, base + 8, ..., base + 28:
    two mad.lo), indexed by the codes' low three bits with one prmt per four codes (prmt reads its selector
    as four nibbles: the codes themselves, sign bits masked); the sign bits pick 0x00 / 0x80 from a second
    table the same way. 15 instructions per 8 codes (the integer form: ~7 per code, ALU-bound on the GPU)."""
    return tl.inline_asm_elementwise(
        asm="""
        {
        .reg .b32 tl, th, m, s, g, k, z;
        mad.lo.u32 tl, $3, 0x01010100, 0x0C080000;
        mad.lo.u32 th, $3, 0x01010101, 0x1C181410;
        mov.b32 k, 0x8000;
        mov.b32 z, 0;
        and.b32 m, $2, 0x7777;
        prmt.b32 $0, tl, th, m;
        shr.u32 s, $2, 3;
        and.b32 s, s, 0x1111;
        prmt.b32 g, k, z, s;
        or.b32 $0, $0, g;
        shr.u32 m, $2, 16;
        and.b32 m, m, 0x7777;
        prmt.b32 $1, tl, th, m;
        shr.u32 s, $2, 19;
        and.b32 s, s, 0x1111;
        prmt.b32 g, k, z, s;
        or.b32 $1, $1, g;
        }
        """,
        constraints="=r,=r,r,r", args=[w, base], dtype=(tl.int32, tl.int32), is_pure=True, pack=1)


@triton.jit
def _dequant_e4m3_kernel(p_ptr, s_ptr, m_ptr, out_ptr, R, KW, SHIFT: tl.constexpr, BR: tl.constexpr,
                         BW: tl.constexpr, USE_ASM: tl.constexpr):
    """Packed MXFP4 as int32 words [R, KW] (8 codes a word, nibble j = k 8w + j) + UE8M0 [R, KW/4] + row max
    byte M [R] -> E4M3 bytes as int32 words [R, 2 KW]: e2m1 x 2^(S - M + SHIFT), four bytes per stored word."""
    NG: tl.constexpr = BW // 4  # 1x32 scale groups: four input words each
    rows = tl.program_id(0) * BR + tl.arange(0, BR)
    ww = tl.program_id(1) * BW + tl.arange(0, BW)
    gg = tl.program_id(1) * NG + tl.arange(0, NG)
    r64 = rows.to(tl.int64)
    rm = rows < R
    w = tl.load(p_ptr + r64[:, None] * KW + ww[None, :], mask=rm[:, None] & (ww < KW)[None, :], other=0)
    s = tl.load(s_ptr + r64[:, None] * (KW // 4) + gg[None, :], mask=rm[:, None] & (gg < KW // 4)[None, :],
                other=0).to(tl.int32) & 0xFF
    mx = tl.load(m_ptr + rows, mask=rm, other=0).to(tl.int32) & 0xFF
    sh = s - mx[:, None] + SHIFT
    sh = tl.reshape(tl.broadcast_to(sh[:, :, None], (BR, NG, 4)), (BR, BW))
    if tl.min(sh) >= -5:  # every value of the tile is normal in E4M3: its groups within 2^11 of their rows'
        # largest (sh = S - M + 6)
        base = (sh + 6) << 3  # E4M3 exponent field of 2^(sh - 1), in place
        if USE_ASM:
            lo, hi = _word_e4m3_asm(w, base)
        else:  # the interpreter: the same bytes in Triton integer ops
            lo = _bytes4(w, base, 0)
            hi = _bytes4(w, base, 16)
    else:
        lo = _e4m3_bits(w & 0xF, sh)
        hi = _e4m3_bits((w >> 16) & 0xF, sh)
        for j in tl.static_range(1, 4):
            lo |= _e4m3_bits((w >> (4 * j)) & 0xF, sh) << (8 * j)
            hi |= _e4m3_bits((w >> (16 + 4 * j)) & 0xF, sh) << (8 * j)
    out = tl.reshape(tl.join(lo, hi), (BR, 2 * BW))
    oo = 2 * (tl.program_id(1) * BW) + tl.arange(0, 2 * BW)
    tl.store(out_ptr + r64[:, None] * (2 * KW) + oo[None, :], out, mask=rm[:, None] & (oo < 2 * KW)[None, :])


@triton.jit(do_not_specialize_on_alignment=["tok_ptr"])
def _row_quant_kernel(x_ptr, tok_ptr, out_ptr, s_ptr, D, GATHER: tl.constexpr, BD: tl.constexpr):
    """Row i (x[tok[i]] when GATHER): scale = max(amax, 1e-4) / 448 -> s[i]; codes x / scale -> out[i]
    (E4M3, or fp32 on the E4M3 grid under the interpreter)."""
    i = tl.program_id(0)
    if GATHER:
        src = tl.load(tok_ptr + i).to(tl.int64)
    else:
        src = i.to(tl.int64)
    cc = tl.arange(0, BD)
    amax = tl.zeros([BD], dtype=tl.float32)
    for c0 in range(0, D, BD):
        a = tl.load(x_ptr + src * D + c0 + cc, mask=c0 + cc < D, other=0.0).to(tl.float32)
        amax = tl.maximum(amax, tl.abs(a))
    scale = tl.maximum(tl.max(amax, 0), 1e-4) / 448.0
    for c0 in range(0, D, BD):
        a = tl.load(x_ptr + src * D + c0 + cc, mask=c0 + cc < D, other=0.0).to(tl.float32) / scale
        if out_ptr.dtype.element_ty == tl.float32:
            a = round_e4m3(a)
        tl.store(out_ptr + i.to(tl.int64) * D + c0 + cc, a.to(out_ptr.dtype.element_ty), mask=c0 + cc < D)
    tl.store(s_ptr + i, scale)


def _code_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if interpreting() or device.type != "cuda" else torch.float8_e4m3fn


def row_max_scale(w) -> torch.Tensor:
    """Largest UE8M0 byte per output row of an MXFP4 stack [E, N, K/32] -> uint8 [E, N], made once per weight."""
    su8 = w.scale_u8()
    return derived(su8, "_v4serve_row_max_scale", lambda: su8.amax(dim=-1))


# rows, int32 input words (8 codes each) a program, warps: the `moe_copy_sweep` bench's fastest (one V4-Flash
# matrix; session 9: 4x256x4 853 us, 16x128x4 889, 16x64x4 906 (session 9's e2e tile), 64x128x16 1,343;
# session 10: 854 us, the tile of its 1M-token runs)
COPY_TILE = (4, 256, 4)


def dequant_mxfp4_e4m3(w, tile: tuple[int, int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """QuantWeight (fp4) [E, N, K/2] -> (codes float8_e4m3fn [E, N, K], row scales fp32 [E, N]) with codes x row
    scale == codecs.dequant_mxfp4 wherever a group is within 2^14 of its row's largest (rounded below that).
    `tile` (rows, input words, warps; bench sweeps) overrides COPY_TILE; input words a multiple of 4."""
    data, scale = w.data, w.scale_u8()
    *lead, n, kh = data.shape
    if kh % 16:
        raise ValueError(f"the E4M3 expert copy needs K % 32 == 0, got K = {2 * kh}")
    rows = data.numel() // kh
    mx = row_max_scale(w)
    out = torch.empty(*lead, n, 2 * kh, dtype=torch.float8_e4m3fn, device=data.device)
    br, bw, warps = tile or (COPY_TILE if not interpreting() else (4, 8, 4))
    if bw % 4:
        raise ValueError(f"the E4M3 copy's tile needs whole 1x32 groups (input words % 4 == 0), got {bw}")
    kw = kh // 4
    _dequant_e4m3_kernel[(triton.cdiv(rows, br), triton.cdiv(kw, bw))](
        data.contiguous().view(torch.int32), scale.contiguous(), mx.contiguous(), out.view(torch.int32), rows, kw,
        SHIFT=ROW_SHIFT, BR=br, BW=bw, USE_ASM=not interpreting(), num_warps=warps)
    rs = torch.exp2(mx.to(torch.float32) - (127 + ROW_SHIFT))
    return out, rs


def row_quant(x: torch.Tensor, tok: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of x (x[tok] when tok is given) -> (E4M3 codes [P, D] (fp32 under the interpreter), scales fp32 [P])."""
    x = x.contiguous()
    d = x.shape[1]
    p = x.shape[0] if tok is None else tok.numel()
    out = torch.empty(p, d, dtype=_code_dtype(x.device), device=x.device)
    s = torch.empty(p, dtype=torch.float32, device=x.device)
    if p:
        bd = 64 if interpreting() else 1024
        _row_quant_kernel[(p,)](x, tok if tok is not None else s, out, s, d, GATHER=tok is not None, BD=bd,
                                num_warps=4)
    return out, s


def scaled_gmm(aq: torch.Tensor, sa: torch.Tensor, w, offs: torch.Tensor) -> torch.Tensor:
    """(aq x sa) [P, K] x expert stack w (MXFP4 [E, N, K/2]) per group of rows (offs: group ends) -> bf16 [P, N]:
    `torch._scaled_grouped_mm` on CUDA, the same products in fp32 torch elsewhere."""
    wq, rs = dequant_mxfp4_e4m3(w)
    if aq.is_cuda and aq.dtype == torch.float8_e4m3fn:
        return torch._scaled_grouped_mm(aq, wq.transpose(-2, -1), sa, rs, offs=offs, out_dtype=torch.bfloat16)
    out = torch.zeros(aq.shape[0], wq.shape[1], dtype=torch.bfloat16, device=aq.device)
    a = aq.float() * sa[:, None]
    start = 0
    for e, end in enumerate(offs.tolist()):
        if end > start:
            out[start:end] = (a[start:end] @ (wq[e].float() * rs[e][:, None]).t()).to(torch.bfloat16)
        start = end
    return out


def available(x: torch.Tensor, act_quant: bool) -> bool:
    """The FP8-operand path for this call: switched on (SWITCH "1", or "auto" on the measured GPU class), bf16
    activations without the reference's own 1x128 FP8 blocks (act_quant keeps the bf16 path: its products are
    the twin's exactly), and torch's scaled grouped GEMM on CUDA (off CUDA only on request: the interpreter
    tests pass fp8_operands=True)."""
    if SWITCH == "0" or act_quant or not x.is_cuda or not hasattr(torch, "_scaled_grouped_mm"):
        return False
    return SWITCH == "1" or capability(x.device) == MEASURED_CAPABILITY
