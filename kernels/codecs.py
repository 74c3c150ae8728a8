"""Reference (pure torch, CPU-capable) codecs for the checkpoint weight formats (architecture.md §3.3).

* UE8M0 scales (`torch.float8_e8m0fnu`): one byte S meaning 2^(S-127); S=255 is NaN.
* FP8 block weights: `W[n,k] = fp8(Wq[n,k]) * 2^(S[n//128, k//128] - 127)`.
* MXFP4 expert weights: int8 `[N, K/2]`, two E2M1 codes per byte (low nibble = even k, high nibble
  = odd k), scale `[N, K/32]`: `W[n,k] = e2m1(code) * 2^(S[n, k//32] - 127)`.

All scale arithmetic goes through the raw bytes (`.view(torch.uint8)`): exact, and independent of
how torch rounds float -> float8_e8m0fnu casts (it rounds up, e.g. 3.0 -> 4.0).
Readers: the checkpoint loaders and the synthetic writer (models/), the FP4 indexer-key pack/unpack
(kernels/ref/kv_fp8.py) and the kernel twins' dequantization (kernels/ref/quant.py, ref/fp8_linear.py;
the dequantizers take stacked experts [E, N, K] too); they live at the bottom layer so both may use them. They favour clarity over speed and run on the device of their inputs (the
synthetic writer quantizes on the GPU with `--device cuda`).
"""

from __future__ import annotations

import torch

FP8_MAX = 448.0  # largest finite float8_e4m3fn
FP4_MAX = 6.0  # largest E2M1 magnitude
E8M0_BIAS = 127
AMAX_FLOOR = 1e-4  # amax floor of the reference act_quant; also keeps all-zero tiles finite

# E2M1 magnitude of codes 0..7; codes 8..15 are the negatives (sign bit 3).
E2M1_VALUES = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])
E2M1_TABLE = torch.cat([E2M1_VALUES, -E2M1_VALUES])  # [16], indexed by the 4-bit code


# ---- UE8M0 ----------------------------------------------------------------------------------------
def e8m0_from_exponent(exp: torch.Tensor) -> torch.Tensor:
    """Integer exponents e (in [-127, 127]) -> float8_e8m0fnu scales holding 2^e."""
    e = exp.to(torch.int32)
    if e.numel() and (int(e.min()) < -E8M0_BIAS or int(e.max()) > E8M0_BIAS):
        raise ValueError(f"exponent out of UE8M0 range [-127, 127]: [{int(e.min())}, {int(e.max())}]")
    return (e + E8M0_BIAS).to(torch.uint8).view(torch.float8_e8m0fnu)


def e8m0_to_exponent(scale: torch.Tensor) -> torch.Tensor:
    """float8_e8m0fnu scales -> int32 exponents S - 127 (S=255, NaN, maps to 128)."""
    if scale.dtype != torch.float8_e8m0fnu:
        raise TypeError(f"expected a float8_e8m0fnu scale tensor, got {scale.dtype}")
    return scale.view(torch.uint8).to(torch.int32) - E8M0_BIAS


def e8m0_to_float(scale: torch.Tensor) -> torch.Tensor:
    """UE8M0 scales (float8_e8m0fnu, or their raw uint8 bytes) -> float32 2^(S-127) (exact; 2^-127 is an
    FP32 subnormal; S=255 -> NaN)."""
    raw = _scale_bytes(scale)
    out = pow2(raw.to(torch.int32) - E8M0_BIAS)
    return out.masked_fill(raw == 255, float("nan"))


def _scale_bytes(scale: torch.Tensor) -> torch.Tensor:
    if scale.dtype == torch.float8_e8m0fnu:
        return scale.view(torch.uint8)
    if scale.dtype != torch.uint8:
        raise TypeError(f"expected a float8_e8m0fnu (or raw uint8) scale tensor, got {scale.dtype}")
    return scale


def pow2(exp: torch.Tensor) -> torch.Tensor:
    """Exact float32 2^exp for an integer tensor."""
    return torch.ldexp(torch.ones(exp.shape, device=exp.device), exp.to(torch.int32))


def ceil_log2(x: torch.Tensor) -> torch.Tensor:
    """Exact ceil(log2(x)) for positive finite x (via frexp: x = m * 2^p, m in [0.5, 1))."""
    m, p = torch.frexp(x.to(torch.float32))
    return torch.where(m == 0.5, p - 1, p).to(torch.int32)


# ---- FP8 128x128 block weights --------------------------------------------------------------------
def _tile_expand(scale: torch.Tensor, rows: int, cols: int, block_r: int, block_c: int) -> torch.Tensor:
    """Per-tile values [..., ceil(R/br), ceil(C/bc)] -> per-element [..., rows, cols] (ragged edges cropped)."""
    return scale.repeat_interleave(block_r, -2).repeat_interleave(block_c, -1)[..., :rows, :cols]


def _check_scale(kind: str, w: torch.Tensor, scale: torch.Tensor, want_last2: tuple[int, int], n: int, k: int) -> None:
    want = (*w.shape[:-2], *want_last2)
    if tuple(scale.shape) != want:
        raise ValueError(f"{kind} scale shape {tuple(scale.shape)} != {want} for weight [{n}, {k}]")


def dequant_fp8_block(
    w_fp8: torch.Tensor, scale_e8m0: torch.Tensor, block: int = 128, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """float8_e4m3fn [..., N, K] with UE8M0 [..., ceil(N/block), ceil(K/block)] -> `dtype` [..., N, K]
    (leading dims: stacked experts)."""
    if w_fp8.dtype != torch.float8_e4m3fn or w_fp8.dim() < 2:
        raise TypeError(f"expected a float8_e4m3fn weight [..., N, K], got {w_fp8.dtype} {tuple(w_fp8.shape)}")
    n, k = w_fp8.shape[-2:]
    _check_scale("FP8", w_fp8, scale_e8m0, (-(-n // block), -(-k // block)), n, k)
    s = _tile_expand(e8m0_to_float(scale_e8m0), n, k, block, block)
    return (w_fp8.to(torch.float32) * s).to(dtype)


def quant_fp8_block(w: torch.Tensor, block: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """float [N, K] -> (float8_e4m3fn [N, K], float8_e8m0fnu [ceil(N/block), ceil(K/block)]).

    Per tile scale 2^ceil(log2(amax/448)) (amax floored at 1e-4), so |w / scale| <= 448 never saturates.
    """
    if w.dim() != 2:
        raise ValueError(f"expected a 2-D weight, got shape {tuple(w.shape)}")
    w = w.to(torch.float32)
    n, k = w.shape
    nb, kb = -(-n // block), -(-k // block)
    padded = torch.zeros(nb * block, kb * block, device=w.device)
    padded[:n, :k] = w.abs()
    amax = padded.view(nb, block, kb, block).amax(dim=(1, 3)).clamp(min=AMAX_FLOOR)  # [nb, kb]
    exp = ceil_log2(amax / FP8_MAX).clamp(-E8M0_BIAS, E8M0_BIAS)
    inv = _tile_expand(pow2(-exp), n, k, block, block)
    return (w * inv).to(torch.float8_e4m3fn), e8m0_from_exponent(exp)


# ---- MXFP4 (E2M1 x2 per byte, 1x32 UE8M0 blocks) ---------------------------------------------------
def _e2m1_quarter_tables() -> tuple[torch.Tensor, torch.Tensor]:
    """Code lookup by q = 4|x| in [0, 24]: every decision midpoint is a multiple of 0.25, so a value
    strictly inside (q/4, (q+1)/4) has one nearest code (`open_t[q]`); exact q/4 uses `exact_t[q]`
    (ties to the even code)."""
    grid = torch.arange(25, dtype=torch.float32) / 4
    dist = lambda v: (v[:, None] - E2M1_VALUES[None, :]).abs()  # noqa: E731
    open_t = dist(grid + 0.125).argmin(dim=1)  # interior point of each open interval
    d = dist(grid)
    best = d.min(dim=1, keepdim=True).values
    cand = torch.where(d == best, torch.arange(8), torch.full_like(d, 99, dtype=torch.long))
    even = torch.where(cand % 2 == 0, cand, torch.full_like(cand, 99)).min(dim=1).values
    exact_t = torch.where(even < 99, even, cand.min(dim=1).values)
    return open_t.to(torch.uint8), exact_t.to(torch.uint8)


_E2M1_OPEN, _E2M1_EXACT = _e2m1_quarter_tables()
# Indexed by floor(q) + ceil(q): even 2q -> exact q/4, odd 2q+1 -> inside (q/4, (q+1)/4).
_E2M1_BY_FLOOR_CEIL = torch.stack([_E2M1_EXACT[:24], _E2M1_OPEN[:24]], dim=1).flatten()
_E2M1_BY_FLOOR_CEIL = torch.cat([_E2M1_BY_FLOOR_CEIL, _E2M1_EXACT[24:]])  # [49]


def e2m1_encode(x: torch.Tensor) -> torch.Tensor:
    """Float values (|x| <= 6 after scaling) -> uint8 E2M1 codes, round to nearest, ties to even code."""
    q4 = x.abs().to(torch.float32).clamp(max=FP4_MAX) * 4
    code = _E2M1_BY_FLOOR_CEIL.to(x.device)[(q4.floor() + q4.ceil()).to(torch.int64)]
    return code + 8 * ((x < 0) & (code > 0)).to(torch.uint8)  # sign bit; canonical +0


def pack_mxfp4(w: torch.Tensor, block: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """float [N, K] -> (int8 [N, K/2] packed codes, float8_e8m0fnu [N, K/32]).

    Per 1x32 block scale 2^ceil(log2(amax/6)); values rounded to the nearest E2M1 point.
    """
    if w.dim() != 2 or w.shape[1] % block:
        raise ValueError(f"expected [N, K] with K a multiple of {block}, got {tuple(w.shape)}")
    w = w.to(torch.float32)
    n, k = w.shape
    blocks = w.view(n, k // block, block)
    amax = blocks.abs().amax(dim=2).clamp(min=2.0**-120)  # all-zero blocks get a tiny finite scale
    exp = ceil_log2(amax / FP4_MAX).clamp(-E8M0_BIAS, E8M0_BIAS)  # [N, K/32]
    scaled = blocks * pow2(-exp).unsqueeze(-1)
    codes = e2m1_encode(scaled).view(n, k)
    packed = codes[:, 0::2] | (codes[:, 1::2] << 4)  # low nibble = even k, high nibble = odd k
    return packed.view(torch.int8), e8m0_from_exponent(exp)


def unpack_e2m1_codes(packed: torch.Tensor) -> torch.Tensor:
    """int8/uint8 [..., K/2] -> uint8 codes [..., K] in k order."""
    u = packed.view(torch.uint8)
    return torch.stack([u & 0xF, u >> 4], dim=-1).reshape(*u.shape[:-1], u.shape[-1] * 2)


def dequant_mxfp4(
    packed: torch.Tensor, scale_e8m0: torch.Tensor, block: int = 32, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """int8 [..., N, K/2] with UE8M0 [..., N, K/32] -> `dtype` [..., N, K] (leading dims: stacked experts)."""
    if packed.dtype not in (torch.int8, torch.uint8) or packed.dim() < 2:
        raise TypeError(f"expected an int8 packed FP4 weight [..., N, K/2], got {packed.dtype} {tuple(packed.shape)}")
    n, k = packed.shape[-2], packed.shape[-1] * 2
    _check_scale("FP4", packed, scale_e8m0, (n, k // block), n, k)
    vals = E2M1_TABLE.to(packed.device)[unpack_e2m1_codes(packed).long()]  # [..., N, K]
    s = e8m0_to_float(scale_e8m0).repeat_interleave(block, dim=-1)
    return (vals * s).to(dtype)
