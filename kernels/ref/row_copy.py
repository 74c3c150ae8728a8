"""Many-tensor row copy (speculative rollback, kvcache/spec_rollback.py): pure-torch twin.

    row_copy(tensors, sets, i0, i1, buf, to_buf, keep=None)

Tensor t ([N0, N1, ...], trailing dims contiguous) has one row per (a, b) = (i0[s, r], i1[s, r]) with
s = sets[t], r < R (i0, i1: [S, R] long; a row with i0 < 0 is skipped). `buf` (uint8, at least
`row_copy_bytes(tensors, R)` bytes) holds tensor t's R rows back to back, the tensors in order:
bytes [off_t + r*nb_t, off_t + (r+1)*nb_t), nb_t = the row's byte size, off_t = sum of R*nb over the
tensors before t. to_buf: buf <- the rows (save). Else the rows <- buf where keep[s, r] (restore; keep
[S, R] bool, None = every valid row). No host synchronization (CUDA-graph capturable)."""

from __future__ import annotations

import torch


def row_bytes(t: torch.Tensor) -> int:
    return t[0, 0].numel() * t.element_size()


def row_copy_bytes(tensors: list[torch.Tensor], R: int) -> int:
    return sum(R * row_bytes(t) for t in tensors)


def check(tensors, sets, i0, i1, buf, keep) -> None:
    if len(sets) != len(tensors):
        raise ValueError("row_copy: one set index per tensor")
    if i0.shape != i1.shape or i0.dim() != 2 or (keep is not None and keep.shape != i0.shape):
        raise ValueError("row_copy: i0, i1 (and keep) must be [S, R]")
    if buf.dtype != torch.uint8 or buf.dim() != 1 or buf.numel() < row_copy_bytes(tensors, i0.shape[1]):
        raise ValueError("row_copy: buf must be a 1-D uint8 tensor of row_copy_bytes(tensors, R) bytes")
    for t in tensors:
        if t.dim() < 2 or not t[0, 0].is_contiguous():
            raise ValueError("row_copy: tensors need >= 2 dims and contiguous rows")
        if max(sets) >= i0.shape[0]:
            raise ValueError("row_copy: set index out of range")


def _bytes(t: torch.Tensor) -> torch.Tensor:
    """[N0, N1, nb] uint8 view of t's rows."""
    nb = row_bytes(t)
    return t.view(torch.uint8).view(t.shape[0], t.shape[1], nb) if t.is_contiguous() else \
        t.flatten(2).view(torch.uint8).view(t.shape[0], t.shape[1], nb)


def row_copy(tensors: list[torch.Tensor], sets: list[int], i0: torch.Tensor, i1: torch.Tensor, buf: torch.Tensor,
             to_buf: bool, keep: torch.Tensor | None = None) -> None:
    check(tensors, sets, i0, i1, buf, keep)
    R = i0.shape[1]
    valid = i0 >= 0
    a_all, b_all = i0.clamp(min=0), i1.clamp(min=0)
    ok = valid if keep is None else valid & keep
    off = 0
    for t, s in zip(tensors, sets):
        nb = row_bytes(t)
        tb = _bytes(t)
        region = buf[off:off + R * nb].view(R, nb)
        a, b = a_all[s], b_all[s]
        if to_buf:
            region.copy_(tb[a, b])
        else:  # read-modify-write: rows not kept (or invalid) get their current bytes back
            m = ok[s].view(R, 1)
            tb[a, b] = torch.where(m, region, tb[a, b])
        off += R * nb
