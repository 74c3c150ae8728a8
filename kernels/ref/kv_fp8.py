"""FP8 KV entry formats (pure torch): pack / unpack, the reference for the Triton kernels.

Main entry (window ring rows and compressed entries), FlashMLA "MODEL1" layout, uint8 row of
`entry_bytes(c, r)` bytes (584 for V4: c=512, r=64):

    [0, nope)                     FP8 E4M3 of dims [0, nope), nope = c - r, value = fp8 * 2^(s_j - 127)
    [nope, nope + 2r)             BF16 of the rope dims [nope, c) (never quantized)
    [nope + 2r, + ceil(nope/64))  UE8M0 scale byte s_j of nope dims [64 j, 64 j + 64)
    pad to a multiple of 8 bytes

Indexer key (CSA), two packed formats; the caller names the format of a key store (the state's
`KVFormat.index_keys`, kernels/kv_format.py: "dense" | "fp8" | "fp4"), it is never guessed from a width:
  FP8   uint8 row of ci + 4 bytes (132 for ci=128): FP8 E4M3 of the ci dims, then one FP32 scale
        (value = fp8 * scale), scale = amax / 448.
  MXFP4 uint8 row of ci/2 + ci/32 bytes (68 for ci=128): the key rotated by the normalized Hadamard
        matrix H (ci x ci, orthogonal), as E2M1 codes two per byte (low nibble = even dim), then one
        UE8M0 scale byte per 32 dims (scale 2^ceil(log2(amax/6)), round to nearest, ties to even
        code) -- the indexer's FP4 QAT format of the official model (architecture.md 4.7). Readers get
        the *rotated* key back; the indexer rotates q by the same H (q.k is unchanged by H).

A storage tensor is in a packed format iff its dtype is uint8; otherwise it is a dense entry in its dtype.
"""

from __future__ import annotations

import functools
import math

import torch

from kernels.codecs import E2M1_TABLE, pack_mxfp4
from kernels.kv_format import FP8_QBLOCK as QBLOCK, entry_bytes, index_key_bytes  # the widths' one definition

FP8_MAX = 448.0


KEY_FORMATS = ("dense", "fp8", "fp4")


def check_key_store(store: torch.Tensor, ci: int, fmt: str) -> str:
    """`fmt` if `store` can hold indexer keys of index_head_dim `ci` in that format (dtype and row
    width), else ValueError: a store and a format that disagree are a caller's bug."""
    if fmt not in KEY_FORMATS:
        raise ValueError(f"unknown indexer key format {fmt!r} (choose from {', '.join(KEY_FORMATS)})")
    want = ci if fmt == "dense" else index_key_bytes(ci, fmt)
    if is_packed(store) != (fmt != "dense") or store.shape[-1] != want:
        raise ValueError(f"indexer key store {tuple(store.shape)} {store.dtype} does not hold {fmt!r} keys "
                         f"of index_head_dim {ci} (rows of {want})")
    return fmt


def hadamard(n: int, device) -> torch.Tensor:
    """Normalized Sylvester Hadamard matrix [n, n] fp32 (n a power of two): H[i, j] =
    (-1)^popcount(i & j) / sqrt(n); symmetric and orthogonal. Built once per (n, device)."""
    return _hadamard(n, str(device))


@functools.lru_cache(maxsize=None)
def _hadamard(n: int, device: str) -> torch.Tensor:
    if n & (n - 1):
        raise ValueError(f"Hadamard size must be a power of two, got {n}")
    i = torch.arange(n)
    bits = torch.bitwise_and(i[:, None], i[None, :])
    parity = torch.zeros_like(bits)
    while bool(bits.any()):
        parity ^= bits & 1
        bits = bits >> 1
    return ((1 - 2 * parity).float() / math.sqrt(n)).to(device)


def rotate_for_keys(q: torch.Tensor, key_format: str) -> torch.Tensor:
    """q [..., ci] rotated by H for MXFP4 (rotated) keys, else q unchanged."""
    ci = q.shape[-1]
    if key_format != "fp4":
        return q
    return (q.float() @ hadamard(ci, q.device)).to(q.dtype)


def is_packed(t: torch.Tensor) -> bool:
    return t.dtype == torch.uint8


def pack_entry(x: torch.Tensor, r: int) -> torch.Tensor:
    """x [..., c] float -> uint8 [..., entry_bytes(c, r)]."""
    c = x.shape[-1]
    nope = c - r
    nb = math.ceil(nope / QBLOCK)
    xf = x.float()
    lead = xf.shape[:-1]
    xn = xf[..., :nope]
    pad = nb * QBLOCK - nope
    if pad:
        xn = torch.cat((xn, xn.new_zeros(*lead, pad)), -1)
    blocks = xn.reshape(*lead, nb, QBLOCK)
    amax = blocks.abs().amax(-1).clamp_min(1e-30)
    e = torch.ceil(torch.log2(amax / FP8_MAX)).clamp(-127, 127)
    q = (blocks * torch.exp2(-e)[..., None]).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    out = torch.zeros(*lead, entry_bytes(c, r), dtype=torch.uint8, device=x.device)
    out[..., :nope] = q.reshape(*lead, nb * QBLOCK)[..., :nope].view(torch.uint8)
    out[..., nope:nope + 2 * r] = xf[..., nope:].to(torch.bfloat16).contiguous().view(torch.uint8)
    out[..., nope + 2 * r:nope + 2 * r + nb] = (e + 127).to(torch.uint8)
    return out


def unpack_entry(b: torch.Tensor, c: int, r: int) -> torch.Tensor:
    """uint8 [..., entry_bytes] -> fp32 [..., c]."""
    nope = c - r
    nb = math.ceil(nope / QBLOCK)
    lead = b.shape[:-1]
    q = b[..., :nope].contiguous().view(torch.float8_e4m3fn).float()
    s = torch.exp2(b[..., nope + 2 * r:nope + 2 * r + nb].float() - 127.0)
    s = s.repeat_interleave(QBLOCK, -1)[..., :nope]
    rope = b[..., nope:nope + 2 * r].contiguous().view(torch.bfloat16).float()
    return torch.cat((q * s, rope), -1).reshape(*lead, c)


def pack_index_key(x: torch.Tensor) -> torch.Tensor:
    """x [..., ci] float -> uint8 [..., ci + 4] (FP8 E4M3 + one fp32 scale)."""
    ci = x.shape[-1]
    xf = x.float()
    scale = (xf.abs().amax(-1) / FP8_MAX).clamp_min(1e-30)
    q = (xf / scale[..., None]).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    out = torch.empty(*xf.shape[:-1], ci + 4, dtype=torch.uint8, device=x.device)
    out[..., :ci] = q.view(torch.uint8)
    out[..., ci:] = scale.float().unsqueeze(-1).contiguous().view(torch.uint8)
    return out


def unpack_index_key(b: torch.Tensor, ci: int) -> torch.Tensor:
    q = b[..., :ci].contiguous().view(torch.float8_e4m3fn).float()
    scale = b[..., ci:ci + 4].contiguous().view(torch.float32)
    return q * scale


def pack_index_key_fp4(x: torch.Tensor) -> torch.Tensor:
    """x [..., ci] float -> uint8 [..., ci/2 + ci/32]: x @ H as MXFP4 (see the module docstring)."""
    ci = x.shape[-1]
    lead = x.shape[:-1]
    y = x.float().reshape(-1, ci) @ hadamard(ci, x.device)
    codes, scale = pack_mxfp4(y)
    out = torch.cat((codes.view(torch.uint8), scale.view(torch.uint8)), -1)
    return out.reshape(*lead, index_key_bytes(ci, "fp4"))


def unpack_index_key_fp4(b: torch.Tensor, ci: int) -> torch.Tensor:
    """uint8 [..., ci/2 + ci/32] -> fp32 [..., ci] rotated key values (x @ H, quantized)."""
    lead = b.shape[:-1]
    flat = b.reshape(-1, b.shape[-1])
    codes = flat[:, :ci // 2]
    codes = torch.stack((codes & 0xF, codes >> 4), -1).reshape(-1, ci).long()
    vals = E2M1_TABLE.to(b.device)[codes]
    scale = torch.exp2(flat[:, ci // 2:].float() - 127.0).repeat_interleave(32, -1)
    return (vals * scale).reshape(*lead, ci)


def read_entries(store: torch.Tensor, c: int, r: int) -> torch.Tensor:
    """Rows of a main-entry store (any leading shape) -> fp32 values."""
    return unpack_entry(store, c, r) if is_packed(store) else store.float()


def write_entries(x: torch.Tensor, like: torch.Tensor, r: int) -> torch.Tensor:
    """Values -> rows in `like`'s storage format."""
    return pack_entry(x, r) if is_packed(like) else x.to(like.dtype)


def read_keys(store: torch.Tensor, ci: int, fmt: str) -> torch.Tensor:
    """Indexer-key rows in format `fmt` -> fp32 values (MXFP4 rows give the rotated key: pair with
    rotate_for_keys)."""
    check_key_store(store, ci, fmt)
    if fmt == "fp8":
        return unpack_index_key(store, ci)
    if fmt == "fp4":
        return unpack_index_key_fp4(store, ci)
    return store.float()


def key_codes(store: torch.Tensor, ci: int, fmt: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Indexer-key rows in format `fmt` -> (FP8 E4M3 codes [..., ci], fp32 scales [...]) as the FP8 index
    scores read them: FP8 rows as stored; dense and MXFP4 rows (their values) quantized per key like the
    reference act_quant (one 1 x ci block, scale 2^ceil(log2(amax/448)), amax >= 1e-4)."""
    check_key_store(store, ci, fmt)
    if fmt == "fp8":
        return store[..., :ci].contiguous().view(torch.float8_e4m3fn), \
            store[..., ci:ci + 4].contiguous().view(torch.float32).squeeze(-1)
    from .quant import act_quant_codes
    codes, scales = act_quant_codes(read_keys(store, ci, fmt), block=ci)
    return codes, scales.squeeze(-1)


def write_keys(x: torch.Tensor, like: torch.Tensor, fmt: str) -> torch.Tensor:
    """Key values [..., ci] -> rows of format `fmt` (the store `like`'s)."""
    check_key_store(like, x.shape[-1], fmt)
    if fmt == "fp8":
        return pack_index_key(x)
    if fmt == "fp4":
        return pack_index_key_fp4(x)
    return x.to(like.dtype)
