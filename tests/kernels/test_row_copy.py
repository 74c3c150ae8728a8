"""kernels.row_copy (speculative rollback): the one-launch Triton row copy vs its torch twin (CPU
interpreter on tiny shapes; GPU at V4-Flash state shapes), save then masked restore, word and byte units,
skipped rows, and CUDA-graph capture."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

import kernels  # noqa: E402
from kernels.ref import row_copy as ref  # noqa: E402
from tests.kernels.interp_util import interp_modules  # noqa: E402


def _tensors(dev, byte_rows: bool):
    g = torch.Generator().manual_seed(1)
    ts = [torch.randn(5, 7, 3, 4, generator=g), torch.randint(0, 255, (4, 9, 12), generator=g, dtype=torch.uint8),
          torch.randn(6, 8, 10, generator=g).bfloat16()]
    if byte_rows:
        ts.append(torch.randint(0, 255, (3, 7, 7), generator=g, dtype=torch.uint8))  # 7-byte rows: byte units
    return [t.to(dev) for t in ts]


def _case(dev, byte_rows: bool):
    ts = _tensors(dev, byte_rows)
    sets = [0, 1, 0] + ([0] if byte_rows else [])
    i0 = torch.tensor([[0, 2, 1, -1, 2], [3, 1, 0, 2, -1]], device=dev)
    i1 = torch.tensor([[1, 6, 0, 0, 3], [5, 2, 3, 4, 0]], device=dev)
    keep = torch.tensor([[True, False, True, True, True], [False, True, True, False, True]], device=dev)
    return ts, sets, i0, i1, keep


def _roundtrip(impl, dev, byte_rows: bool):
    ts, sets, i0, i1, keep = _case(dev, byte_rows)
    orig = [t.clone() for t in ts]
    buf = torch.zeros(ref.row_copy_bytes(ts, i0.shape[1]), dtype=torch.uint8, device=dev)
    impl.row_copy(ts, sets, i0, i1, buf, True)
    saved_view = buf.clone()
    for t in ts:  # scribble over everything, then restore the kept rows
        t.view(torch.uint8).fill_(7)
    impl.row_copy(ts, sets, i0, i1, buf, False, keep)
    return ts, orig, saved_view, (sets, i0, i1, keep)


def _expected(ts, orig, sets, i0, i1, keep):
    for t, o, s in zip(ts, orig, sets):
        want = torch.full_like(o.view(torch.uint8), 7).view(o.dtype)
        for r in range(i0.shape[1]):
            a, b = int(i0[s, r]), int(i1[s, r])
            if a >= 0 and bool(keep[s, r]):
                want[a, b] = o[a, b]
        assert torch.equal(t.view(torch.uint8), want.view(torch.uint8))


@pytest.mark.parametrize("byte_rows", [False, True])
def test_twin_save_restore(byte_rows):
    ts, orig, _, (sets, i0, i1, keep) = _roundtrip(ref, torch.device("cpu"), byte_rows)
    _expected(ts, orig, sets, i0, i1, keep)


@pytest.mark.parametrize("byte_rows", [False, True])
def test_triton_matches_twin_interp(byte_rows):
    if torch.cuda.is_available():
        pytest.skip("interpreter test (CPU)")
    (tri,) = interp_modules("row_copy")
    ts, orig, buf_t, (sets, i0, i1, keep) = _roundtrip(tri, torch.device("cpu"), byte_rows)
    _expected(ts, orig, sets, i0, i1, keep)
    _, _, buf_r, _ = _roundtrip(ref, torch.device("cpu"), byte_rows)
    off = 0  # saved bytes of the valid rows are equal (skipped rows: the twin writes row 0's bytes, Triton none)
    for t, s in zip(ts, sets):
        nb = ref.row_bytes(t)
        for r in range(i0.shape[1]):
            if int(i0[s, r]) >= 0:
                assert torch.equal(buf_t[off + r * nb:off + (r + 1) * nb], buf_r[off + r * nb:off + (r + 1) * nb])
        off += i0.shape[1] * nb


def test_bad_arguments():
    ts, sets, i0, i1, keep = _case(torch.device("cpu"), False)
    buf = torch.zeros(8, dtype=torch.uint8)
    with pytest.raises(ValueError, match="row_copy_bytes"):
        kernels.row_copy(ts, sets, i0, i1, buf, True)
    with pytest.raises(ValueError, match="one set index"):
        kernels.row_copy(ts, sets[:1], i0, i1, buf, True)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_flash_shapes_and_graph():
    """V4-Flash-like state rows (584-byte FP8 window entries, bf16 tails, 68-byte FP4 index keys) at
    batch 64 x 3 positions: Triton == twin, and the launch replays inside a CUDA graph."""
    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(0)
    ts = [torch.randint(0, 255, (65, 128, 584), device=dev, dtype=torch.uint8, generator=g),
          torch.randn(65, 8, 1024, device=dev, generator=g).bfloat16(),
          torch.randint(0, 255, (300, 32, 68), device=dev, dtype=torch.uint8, generator=g)]
    sets = [0, 1, 2]
    R = 192
    def ri(lo, hi):
        return torch.randint(lo, hi, (R,), device=dev, generator=g)

    i0 = torch.stack([ri(0, 65), ri(0, 65), ri(-1, 300)])
    i1 = torch.stack([ri(0, 128), ri(0, 8), ri(0, 32)])
    keep = torch.rand(3, R, device=dev, generator=g) < 0.5
    outs = []
    for b in ("ref", "triton"):
        a = [t.clone() for t in ts]
        buf = torch.zeros(ref.row_copy_bytes(a, R), dtype=torch.uint8, device=dev)
        with kernels.backend(b):
            kernels.row_copy(a, sets, i0, i1, buf, True)
            for t in a:
                t.view(torch.uint8).fill_(3)
            kernels.row_copy(a, sets, i0, i1, buf, False, keep)
        outs.append(a)
    for x, y in zip(*outs):
        assert torch.equal(x.view(torch.uint8), y.view(torch.uint8))
    a = [t.clone() for t in ts]
    buf = torch.zeros(ref.row_copy_bytes(a, R), dtype=torch.uint8, device=dev)
    kernels.row_copy(a, sets, i0, i1, buf, True)  # warm (descriptor table built outside the capture)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        kernels.row_copy(a, sets, i0, i1, buf, True)
    for t, o in zip(a, ts):
        t.copy_(o)
    buf.zero_()
    graph.replay()
    torch.cuda.synchronize()
    ref_buf = torch.zeros_like(buf)
    with kernels.backend("ref"):
        kernels.row_copy(ts, sets, i0, i1, ref_buf, True)
    valid = torch.cat([(i0[s] >= 0).repeat_interleave(ref.row_bytes(t)) for t, s in zip(ts, sets)])
    assert torch.equal(buf[valid], ref_buf[valid])


def _spec_case(dev):
    g = torch.Generator().manual_seed(2)
    ring8 = torch.randn(4, 8, 6, generator=g)  # slot rings of 8 and 16 rows
    ring16 = torch.randint(0, 255, (4, 16, 20), generator=g, dtype=torch.uint8)
    comp4 = torch.randn(10, 4, 5, generator=g).bfloat16()  # block tensors: ratio 4 (block 16: 4 rows), ratio 8
    comp8 = torch.randint(0, 255, (10, 2, 12), generator=g, dtype=torch.uint8)
    ts = [t.to(dev) for t in (ring8, comp4, ring16, comp8)]
    kinds = [(0, 8), (1, 4), (0, 16), (1, 8)]
    slots = torch.tensor([2, 0, 3], device=dev)
    first = torch.tensor([5, 14, 30], device=dev)  # closes entries at 7 / 15 (ratio 4), 15 (ratio 8), 31 / 31
    tables = torch.tensor([[1, 4, -1], [6, 2, -1], [3, -1, 7]], dtype=torch.int32, device=dev)  # seq 2: block 1 = -1
    bound = torch.tensor([7, 100, 31], device=dev)
    return ts, kinds, slots, first, tables, bound


def _spec_roundtrip(impl, dev, n=3, bs=16):
    ts, kinds, slots, first, tables, bound = _spec_case(dev)
    orig = [t.clone() for t in ts]
    buf = torch.zeros(ref.row_copy_bytes(ts, slots.shape[0] * n), dtype=torch.uint8, device=dev)
    impl.spec_row_copy(ts, kinds, slots, first, tables, n, bs, buf, True)
    for t in ts:
        t.view(torch.uint8).fill_(9)
    impl.spec_row_copy(ts, kinds, slots, first, tables, n, bs, buf, False, bound)
    return ts, orig


def test_spec_row_copy_twin_rows():
    """The twin restores exactly the rows of positions >= bound (rings) and the entries they close (blocks)."""
    ts, orig = _spec_roundtrip(ref, torch.device("cpu"))
    want = [torch.full_like(o.view(torch.uint8), 9).view(o.dtype) for o in orig]
    # seq 0 (slot 2): positions 7 (>= bound 7) -> ring rows 7 % 8, 7 % 16; closes ratio-4 entry 1 at p=7:
    # block tables[0][4 // 16 = 0] = 1, row (4 % 16) // 4 = 1, and ratio-8 entry 0: block 1, row 0.
    # seq 1 (bound 100): nothing. seq 2 (slot 3):
    # positions 31, 32 -> rows 31 % 8 = 7, 0 and 31 % 16 = 15, 0; p=31 closes ratio-4 entry 7 (block
    # tables[2][28 // 16 = 1] = -1: nothing) and ratio-8 entry 3 (block tables[2][24 // 16 = 1] = -1: nothing)
    for s, p in ((2, 7), (3, 31), (3, 32)):
        want[0][s, p % 8] = orig[0][s, p % 8]
        want[2][s, p % 16] = orig[2][s, p % 16]
    want[1][1, 1] = orig[1][1, 1]
    want[3][1, 0] = orig[3][1, 0]
    for t, w in zip(ts, want):
        assert torch.equal(t.view(torch.uint8), w.view(torch.uint8))


def test_spec_row_copy_triton_interp():
    if torch.cuda.is_available():
        pytest.skip("interpreter test (CPU)")
    (tri,) = interp_modules("row_copy")
    a, _ = _spec_roundtrip(tri, torch.device("cpu"))
    b, _ = _spec_roundtrip(ref, torch.device("cpu"))
    for x, y in zip(a, b):
        assert torch.equal(x.view(torch.uint8), y.view(torch.uint8))


@pytest.mark.parametrize("backend", ["ref", "triton"])
def test_restore_with_duplicate_and_invalid_entries(backend, monkeypatch):
    """Entries naming the same row: a kept one, an invalid one (i0 < 0) and one not kept. The row gets its
    saved bytes back whatever the order (the twin used to write the others' current bytes over it)."""
    if backend == "triton":
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    t = torch.arange(4 * 3 * 8, dtype=torch.int32).view(4, 3, 8).to(torch.uint8)
    want = t.clone()
    i0 = torch.tensor([[0, -1, 0, 2]])
    i1 = torch.tensor([[1, 1, 1, 2]])
    keep = torch.tensor([[True, True, False, True]])
    buf = torch.zeros(ref.row_copy_bytes([t], 4), dtype=torch.uint8)
    with kernels.backend(backend):
        kernels.row_copy([t], [0], i0, i1, buf, True)
        t.fill_(3)
        kernels.row_copy([t], [0], i0, i1, buf, False, keep)
    assert torch.equal(t[0, 1], want[0, 1]) and torch.equal(t[2, 2], want[2, 2])
    assert int(t[0, 0].max()) == 3 and int(t[3].max()) == 3  # nothing else written
