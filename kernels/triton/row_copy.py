"""Many-tensor row copy in ONE launch (kernels/ref/row_copy.py has the contract and the twin).

Each tensor is described once (cached per tensor list) by a device row of 6 int64: its base address,
the byte strides of its two index dims, its row size in copy units, the row sizes of the tensors before
it (its buffer region starts at R times that), its index set. Program (t, r) copies row r of tensor t:
the unit is 4 bytes when every address, stride and row size allows it, else 1 byte."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.ref.row_copy import check, row_bytes

_DESC: dict[tuple, tuple[torch.Tensor, int, int]] = {}  # key -> (descriptors [T, 6], unit, max row units)
# (one small entry per tensor list: a few per engine)


@triton.jit
def _copy_row(addr, buf_ptr, off, r, nu, ok, TO_BUF: tl.constexpr, WORD: tl.constexpr, BLOCK: tl.constexpr):
    """Row at byte address `addr` <-> buffer row r of the region at unit offset `off` (nu units of 4 bytes when
    WORD, else bytes), only where `ok`."""
    if WORD:
        row = addr.to(tl.pointer_type(tl.int32))
        dst = buf_ptr.to(tl.pointer_type(tl.int32)) + off + r.to(tl.int64) * nu
    else:
        row = addr.to(tl.pointer_type(tl.uint8))
        dst = buf_ptr + off + r.to(tl.int64) * nu
    for c in range(0, nu, BLOCK):
        o = c + tl.arange(0, BLOCK)
        m = (o < nu) & ok
        if TO_BUF:
            tl.store(dst + o, tl.load(row + o, mask=m), mask=m)
        else:
            tl.store(row + o, tl.load(dst + o, mask=m), mask=m)


@triton.jit(do_not_specialize=["R"], do_not_specialize_on_alignment=["desc_ptr", "i0_ptr", "i1_ptr", "keep_ptr"])
def _row_copy_kernel(desc_ptr, i0_ptr, i1_ptr, keep_ptr, buf_ptr, R, HAS_KEEP: tl.constexpr, TO_BUF: tl.constexpr,
                     WORD: tl.constexpr, BLOCK: tl.constexpr):
    t = tl.program_id(0)
    r = tl.program_id(1)
    base = tl.load(desc_ptr + t * 6 + 0)
    s0 = tl.load(desc_ptr + t * 6 + 1)
    s1 = tl.load(desc_ptr + t * 6 + 2)
    nu = tl.load(desc_ptr + t * 6 + 3)
    off = tl.load(desc_ptr + t * 6 + 4) * R
    sid = tl.load(desc_ptr + t * 6 + 5)
    a = tl.load(i0_ptr + sid * R + r)
    b = tl.load(i1_ptr + sid * R + r)
    ok = a >= 0
    if HAS_KEEP:
        ok = ok & (tl.load(keep_ptr + sid * R + r) != 0)
    addr = base + a.to(tl.int64) * s0 + b.to(tl.int64) * s1
    _copy_row(addr, buf_ptr, off, r, nu, ok, TO_BUF, WORD, BLOCK)


def _layout(tensors) -> tuple:
    """What a descriptor table depends on: each tensor's address, shape, strides and dtype."""
    return tuple((t.data_ptr(), tuple(t.shape), tuple(t.stride()), t.dtype) for t in tensors)


def _descriptors(tensors, sets, buf: torch.Tensor):
    key = (tuple(sets), str(buf.device), _layout(tensors))
    hit = _DESC.get(key)
    if hit is not None:
        return hit
    nbs = [row_bytes(t) for t in tensors]
    strides = [(t.stride(0) * t.element_size(), t.stride(1) * t.element_size()) for t in tensors]
    word = all(nb % 4 == 0 for nb in nbs) and all(a % 4 == 0 and b % 4 == 0 for a, b in strides) and \
        all(t.data_ptr() % 4 == 0 for t in tensors)
    unit = 4 if word else 1
    rows, off = [], 0
    for t, s, nb, (a, b) in zip(tensors, sets, nbs, strides):
        rows.append([t.data_ptr(), a, b, nb // unit, off // unit, s])
        off += nb
    desc = torch.tensor(rows, dtype=torch.int64).to(buf.device)
    hit = (desc, unit, max(nbs) // unit)
    _DESC[key] = hit  # never evicted: a CUDA-graph capture must find the table its warm-up built (no copy inside)
    return hit


def row_copy(tensors: list[torch.Tensor], sets: list[int], i0: torch.Tensor, i1: torch.Tensor, buf: torch.Tensor,
             to_buf: bool, keep: torch.Tensor | None = None) -> None:
    check(tensors, sets, i0, i1, buf, keep)
    R = i0.shape[1]
    if not tensors or R == 0:
        return
    desc, unit, max_units = _descriptors(tensors, sets, buf)
    if unit == 4 and buf.data_ptr() % 4:
        raise ValueError("row_copy: buf must be 4-byte aligned")
    block = min(1024, triton.next_power_of_2(max(max_units, 16)))
    i0c, i1c = i0.contiguous(), i1.contiguous()
    kp = keep.contiguous().view(torch.uint8) if keep is not None else i0c
    _row_copy_kernel[(len(tensors), R)](desc, i0c, i1c, kp, buf, R, HAS_KEEP=keep is not None, TO_BUF=to_buf,
                                        WORD=unit == 4, BLOCK=block)


# ---- speculative positions (contract: kernels/ref/row_copy.spec_row_copy) ----------------------------
_SDESC: dict[tuple, tuple[torch.Tensor, int, int]] = {}  # key -> (descriptors [T, 8], unit, max row units)


@triton.jit(do_not_specialize=["tables_stride", "R", "n"],
            do_not_specialize_on_alignment=["desc_ptr", "slots_ptr", "first_ptr", "tables_ptr", "bound_ptr"])
def _spec_row_copy_kernel(desc_ptr, slots_ptr, first_ptr, tables_ptr, tables_stride, width, bound_ptr, buf_ptr, R, n,
                          block_size, TO_BUF: tl.constexpr, WORD: tl.constexpr, BLOCK: tl.constexpr):
    t = tl.program_id(0)
    r = tl.program_id(1)
    base = tl.load(desc_ptr + t * 8 + 0)
    s0 = tl.load(desc_ptr + t * 8 + 1)
    s1 = tl.load(desc_ptr + t * 8 + 2)
    nu = tl.load(desc_ptr + t * 8 + 3)
    off = tl.load(desc_ptr + t * 8 + 4) * R
    kind = tl.load(desc_ptr + t * 8 + 5)
    v = tl.load(desc_ptr + t * 8 + 6)
    b = r // n
    j = r % n
    first = tl.load(first_ptr + b).to(tl.int64)
    p = first + j
    if kind == 0:  # slot ring of v rows
        a = tl.load(slots_ptr + b).to(tl.int64)
        row_i = p % v
        ok = a >= 0
    else:  # the entry of ratio v the positions close, logged in row j == 0
        p = first + (v - 1 - first % v)
        e = (p + 1) // v - 1
        col = tl.minimum(tl.maximum(e * v // block_size, 0), width - 1)
        a = tl.load(tables_ptr + b * tables_stride + col).to(tl.int64)
        row_i = (e * v % block_size) // v
        ok = (j == 0) & (p <= first + n - 1) & (a >= 0)
    if not TO_BUF:
        ok = ok & (p >= tl.load(bound_ptr + b))
    addr = base + a * s0 + row_i * s1
    _copy_row(addr, buf_ptr, off, r, nu, ok, TO_BUF, WORD, BLOCK)


def spec_row_copy(tensors, kinds, slots, first_pos, tables, n: int, block_size: int, buf, to_buf: bool,
                  bound=None) -> None:
    from kernels.ref.row_copy import row_copy_bytes

    B = slots.shape[0]
    R = B * n
    if not tensors or R == 0:
        return
    if buf.dtype != torch.uint8 or buf.numel() < row_copy_bytes(tensors, R):
        raise ValueError("spec_row_copy: buf must be uint8 of row_copy_bytes(tensors, B*n) bytes")
    if not to_buf and bound is None:
        raise ValueError("spec_row_copy: restore needs bound")
    key = (tuple(kinds), str(buf.device), _layout(tensors))
    hit = _SDESC.get(key)
    if hit is None:
        desc, unit, max_units = _descriptors(tensors, [0] * len(tensors), buf)
        d = desc.cpu()[:, :5]
        extra = torch.tensor([[k, v, 0] for k, v in kinds], dtype=torch.int64)
        hit = (torch.cat([d, extra], 1).contiguous().to(buf.device), unit, max_units)
        _SDESC[key] = hit  # never evicted (see _DESC)
    desc, unit, max_units = hit
    block = min(1024, triton.next_power_of_2(max(max_units, 16)))
    tab = tables.contiguous()
    _spec_row_copy_kernel[(len(tensors), R)](
        desc, slots.contiguous(), first_pos.contiguous(), tab, tab.stride(0), tab.shape[1],
        bound.contiguous() if bound is not None else first_pos, buf, R, n, block_size,
        TO_BUF=to_buf, WORD=unit == 4, BLOCK=block)
