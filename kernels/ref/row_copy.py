"""Many-tensor row copy (speculative rollback, kvcache/spec_rollback.py): pure-torch twin.

    row_copy(tensors, sets, i0, i1, buf, to_buf, keep=None)

Tensor t ([N0, N1, ...], trailing dims contiguous) has one row per (a, b) = (i0[s, r], i1[s, r]) with
s = sets[t], r < R (i0, i1: [S, R] long; a row with i0 < 0 is skipped). `buf` (uint8, at least
`row_copy_bytes(tensors, R)` bytes) holds tensor t's R rows back to back, the tensors in order:
bytes [off_t + r*nb_t, off_t + (r+1)*nb_t), nb_t = the row's byte size, off_t = sum of R*nb over the
tensors before t. to_buf: buf <- the rows (save). Else the rows <- buf where keep[s, r] (restore; keep
[S, R] bool, None = every valid row). The Triton kernel never synchronizes (CUDA-graph capturable); this
twin's restore selects the kept rows with a boolean mask (a host sync on CUDA: the twin runs on CPU)."""

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
        else:  # only the kept valid rows are written: an entry that is not kept (or i0 < 0, clamped to row 0)
            # may name the same row as a kept one, and index_put's order among duplicates is undefined
            sel = ok[s]
            tb[a[sel], b[sel]] = region[sel]
        off += R * nb


# ---- speculative positions (kvcache/spec_rollback.StaticRowLog) ------------------------------------
#   spec_row_copy(tensors, kinds, slots, first_pos, tables, n, block_size, buf, to_buf, bound=None)
# Sequence b logs the rows its positions p = first_pos[b] + j (j < n) write: row r = b*n + j of the
# buffer region of each tensor (R = B*n; kernels.row_copy layout). kinds[t] = (0, L): a slot ring of L rows,
# row (slots[b], p % L); (1, m): a block tensor of compress ratio m >= n: the one compressed entry the
# positions may close ((p+1) % m == 0), in the block tables[b, e*m // block_size], row (e*m % block_size)
# // m, logged in row j = 0 (the other j and a block < 0 log nothing). Restore (to_buf False) puts back
# the rows whose position >= bound[b]. Indices are computed in the kernel: one launch per save / restore.

def spec_rows(kinds, slots, first_pos, tables, n: int, block_size: int):
    """-> index sets i0, i1, pos [S, R] (one per distinct kind) and each tensor's set."""
    B, dev = slots.shape[0], slots.device
    j = torch.arange(n, device=dev)
    pos = (first_pos.view(-1, 1) + j).reshape(-1)
    keys = list(dict.fromkeys(kinds))
    i0, i1, ps = [], [], []
    for kind, v in keys:
        if kind == 0:
            i0.append(slots.repeat_interleave(n))
            i1.append(pos % v)
            ps.append(pos)
            continue
        p = first_pos + (v - 1 - first_pos % v)  # first p >= first_pos with (p+1) % v == 0
        e = (p + 1) // v - 1
        col = (e * v // block_size).clamp(0, tables.shape[1] - 1)
        blk = tables.long().gather(1, col.view(-1, 1)).view(-1)
        valid = (p <= first_pos + n - 1) & (blk >= 0)
        first = (j == 0).view(1, -1)
        i0.append(torch.where(valid.view(-1, 1) & first, blk.view(-1, 1), -1).reshape(-1))
        i1.append(((e * v % block_size) // v).view(-1, 1).expand(B, n).reshape(-1))
        ps.append(torch.where(valid.view(-1, 1) & first, p.view(-1, 1), -1).reshape(-1))
    return torch.stack(i0), torch.stack(i1), torch.stack(ps), [keys.index(k) for k in kinds]


def spec_row_copy(tensors, kinds, slots, first_pos, tables, n: int, block_size: int, buf, to_buf: bool,
                  bound=None) -> None:
    i0, i1, pos, sets = spec_rows(kinds, slots, first_pos, tables, n, block_size)
    keep = None
    if not to_buf:
        seq = torch.arange(slots.shape[0], device=slots.device).repeat_interleave(n)
        keep = (pos >= bound[seq].view(1, -1)) & (pos >= 0)
    row_copy(tensors, sets, i0, i1, buf, to_buf, keep)
