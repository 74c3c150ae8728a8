"""Sampled top-k for many long rows (kernels/triton/topk_prefill.py) at V4 prefill shapes on the GPU: k 512,
256 rows of up to 262,144 entries (1M context at ratio 4), exactly equal (ids, order, ties) to
indexer.topk_rows' streaming kernel (the filter in both forms, scan and atomic), with rows that fall back (ties,
a defeated sample) and CUDA-graph replay."""

from __future__ import annotations

import pytest
import torch

K, ROWS, E_CAP = 512, 256, 262144


def _rows():
    g = torch.Generator(device="cuda").manual_seed(0)
    limits = torch.randint(8193, E_CAP + 1, (ROWS,), device="cuda", generator=g)
    limits[:8] = torch.tensor([E_CAP, E_CAP - 3, 1, 512, 513, 4000, 8192, 8200], device="cuda")
    scores = torch.randn(ROWS, E_CAP, device="cuda", generator=g)
    return scores, limits


@pytest.mark.gpu
@pytest.mark.parametrize("atomic", [False, True], ids=["scan", "atomic"])
def test_prefill_topk_real_shapes_gpu(monkeypatch, atomic):
    from kernels.triton import indexer as ti
    from kernels.triton import topk_prefill as tp

    scores, limits = _rows()
    scores[8] = torch.randint(0, 3, (E_CAP,), device="cuda", generator=None).float()  # massive ties
    ids = tp.sampled_entries(int(limits[9])).cuda()
    scores[9] += 10.0
    scores[9, ids] -= 20.0  # sample low, the rest high: too many candidates
    scores[10, tp.sampled_entries(int(limits[10])).cuda()] += 10.0  # only the sample high: too few
    scores[11] = torch.arange(E_CAP, device="cuda").float()  # increasing
    scores[12] = (scores[12] * 32).round()  # ties at the threshold (~180 a level), candidate path
    ratio = 4
    pos = (limits * ratio - 1 + torch.randint(0, ratio, (ROWS,), device="cuda")).int()
    row0 = 3
    pos = torch.cat([torch.zeros(row0, dtype=torch.int32, device="cuda"), pos])
    monkeypatch.setitem(ti._SPLIT, "on", False)
    want = torch.full((row0 + ROWS, K), -7, dtype=torch.int32, device="cuda")
    got = want.clone()
    counts = torch.zeros(ROWS, dtype=torch.int32, device="cuda")
    ti.topk_rows(scores, pos, want, row0, ROWS, K, ratio)
    tp.topk_rows_prefill(scores, pos, got, row0, ROWS, K, ratio, counts=counts, atomic=atomic)
    assert torch.equal(got, want), (got != want).any(1).nonzero().flatten().tolist()[:10]
    c = counts.tolist()
    assert c[8] > tp.CAP and c[9] > tp.CAP and c[10] < K, c[8:11]
    assert K <= c[11] <= tp.CAP and K <= c[12] <= tp.CAP, c[11:13]
    normal = counts[13:]
    assert bool(((normal >= K) & (normal <= tp.CAP)).all()), "random rows fell back"
    assert tp.use_prefill(ROWS, E_CAP, K)


@pytest.mark.gpu
def test_prefill_topk_cuda_graph_gpu():
    from kernels.triton import topk_prefill as tp

    scores, limits = _rows()
    pos = (limits - 1).int()
    out = torch.full((ROWS, K), -7, dtype=torch.int32, device="cuda")
    tp.topk_rows_prefill(scores, pos, out, 0, ROWS, K, 1)  # compile outside the capture
    want = out.clone()
    out.fill_(-7)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        tp.topk_rows_prefill(scores, pos, out, 0, ROWS, K, 1)
    g.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, want)
    for r in range(4):  # the id sets against torch.topk (randn rows: no ties)
        lim = int(limits[r])
        want_set = list(range(lim)) + [-1] * (K - lim) if lim <= K else scores[r, :lim].topk(K).indices.tolist()
        assert sorted(out[r].tolist()) == sorted(want_set), r
