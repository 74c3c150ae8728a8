"""FP8 KV entry formats (pure torch): pack / unpack, the reference for the Triton kernels.

Main entry (window ring rows and compressed entries), FlashMLA "MODEL1" layout, uint8 row of
`entry_bytes(c, r)` bytes (584 for V4: c=512, r=64):

    [0, nope)                     FP8 E4M3 of dims [0, nope), nope = c - r, value = fp8 * 2^(s_j - 127)
    [nope, nope + 2r)             BF16 of the rope dims [nope, c) (never quantized)
    [nope + 2r, + ceil(nope/64))  UE8M0 scale byte s_j of nope dims [64 j, 64 j + 64)
    pad to a multiple of 8 bytes

Indexer key (CSA), uint8 row of ci + 4 bytes (132 for ci=128): FP8 E4M3 of the ci dims, then one
FP32 scale (value = fp8 * scale), scale = amax / 448.

A storage tensor is in FP8 format iff its dtype is uint8; otherwise it is a dense entry in its dtype.
"""

from __future__ import annotations

import math

import torch

FP8_MAX = 448.0
QBLOCK = 64


def entry_bytes(c: int, r: int) -> int:
    nope = c - r
    raw = nope + 2 * r + math.ceil(nope / QBLOCK)
    return -(-raw // 8) * 8


def index_key_bytes(ci: int) -> int:
    return ci + 4


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


def read_entries(store: torch.Tensor, c: int, r: int) -> torch.Tensor:
    """Rows of a main-entry store (any leading shape) -> fp32 values."""
    return unpack_entry(store, c, r) if is_packed(store) else store.float()


def write_entries(x: torch.Tensor, like: torch.Tensor, r: int) -> torch.Tensor:
    """Values -> rows in `like`'s storage format."""
    return pack_entry(x, r) if is_packed(like) else x.to(like.dtype)


def read_keys(store: torch.Tensor, ci: int) -> torch.Tensor:
    return unpack_index_key(store, ci) if is_packed(store) else store.float()


def write_keys(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return pack_index_key(x) if is_packed(like) else x.to(like.dtype)
