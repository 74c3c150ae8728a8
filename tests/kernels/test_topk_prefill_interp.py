"""Sampled top-k for many long rows (kernels/triton/topk_prefill.py), CPU interpreter on tiny shapes: the
output must equal indexer._topk_kernel's streaming path exactly (same ids, same order, same tie choice) on
rows of mixed lengths, ties, monotone rows, negative scores and -0.0, row0 > 0 with a persistent grid of
a few programs, and rows crafted to defeat the sample (both fallbacks: too many and too few candidates).
The per-row candidate counts show which stage each row took."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

from kernels.ref.indexer import select_topk  # noqa: E402
from tests.kernels.interp_util import interp_modules  # noqa: E402

# the interpreter converts 0-d arrays with __index__ in every loop over a tensor bound: noise, not signal
pytestmark = pytest.mark.filterwarnings("ignore:Conversion of an array with ndim:DeprecationWarning")

@pytest.fixture(params=[False, True], ids=["scan", "atomic"])
def atomic(request):
    """The filter's two forms: slots from a block-wide scan (in index order), or from an atomic counter (in
    any order; the select sorts them by id)."""
    return request.param


def run_both(monkeypatch, scores, limits, k, ratio=1, row0=2, **kw):
    """-> (prefill out, streaming-kernel out, counts) for rows row0.. of a tile whose limits are given."""
    ti, tp = interp_modules("indexer", "topk_prefill")
    n = len(limits)
    g = torch.Generator().manual_seed(n + k)
    pos = torch.zeros(row0 + n, dtype=torch.int32)
    pos[row0:] = torch.tensor([lim * ratio - 1 for lim in limits], dtype=torch.int32)
    pos[row0:] += torch.randint(0, ratio, (n,), generator=g, dtype=torch.int32)  # same limit, any position
    outs = []
    counts = torch.full((n,), -9, dtype=torch.int32)
    monkeypatch.setitem(ti._SPLIT, "on", False)  # the reference is the one-program-per-row streaming kernel
    for fn in (lambda o: tp.topk_rows_prefill(scores, pos, o, row0, n, k, ratio, counts=counts, **kw),
               lambda o: ti.topk_rows(scores, pos, o, row0, n, k, ratio, reg_max=16)):
        out = torch.full((row0 + n + 1, k), -7, dtype=torch.int32)
        fn(out)
        assert (out[:row0] == -7).all() and (out[row0 + n:] == -7).all(), "rows outside the tile were written"
        outs.append(out[row0:row0 + n])
    return outs[0], outs[1], counts


def assert_same(got, want):
    bad = [r for r in range(got.shape[0]) if not torch.equal(got[r], want[r])]
    assert not bad, f"rows {bad}: {got[bad[0]].tolist()} != {want[bad[0]].tolist()}"


def test_random_mixed_lengths_match_stream_and_twin(monkeypatch, atomic):
    k = 16
    limits = [3, 16, 17, 100, 255, 256, 257, 700, 1301, 2000]  # <= k, in registers, sampled
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(len(limits), 2000, generator=g)
    got, want, counts = run_both(monkeypatch, scores, limits, k, programs=3, atomic=atomic)
    assert_same(got, want)
    for r, lim in enumerate(limits):  # sampled rows took the candidate select, not the fallback
        assert counts[r] == lim if lim <= 256 else k <= counts[r] <= 256, (lim, int(counts[r]))
    twin = torch.full((len(limits), k), -1, dtype=torch.int32)
    select_topk(scores, torch.tensor(limits) - 1, k, 1, twin)  # no ties in randn rows: same id sets
    for r in range(len(limits)):
        assert sorted(got[r].tolist()) == sorted(twin[r].tolist()), r


def test_ratio4_and_negative_scores(monkeypatch, atomic):
    k = 8
    limits = [5, 9, 300, 900, 1024]
    g = torch.Generator().manual_seed(1)
    scores = -torch.rand(len(limits), 1024, generator=g) - 1.0
    scores[1, 3] = -0.0  # -0.0 orders below +0.0 (ordered keys), as in the streaming kernel
    scores[1, 5] = 0.0
    scores[3, ::97] = -0.0
    scores[3, 50] = 0.0
    got, want, _ = run_both(monkeypatch, scores, limits, k, ratio=4, row0=5, atomic=atomic)
    assert_same(got, want)


def test_ties_and_monotone_rows(monkeypatch, atomic):
    k = 16
    limits = [1200, 1200, 1500, 1500, 2000]
    g = torch.Generator().manual_seed(2)
    scores = torch.randn(len(limits), 2000, generator=g)
    scores[0] = (scores[0] * 4).round() / 4  # ties at the threshold, few enough for the candidate select
    scores[1] = torch.randint(0, 3, (2000,), generator=g).float()  # massive ties: overflow -> fallback
    scores[2] = torch.arange(2000, dtype=torch.float32)  # increasing: the top-k are the last entries
    scores[3] = -torch.arange(2000, dtype=torch.float32)  # decreasing
    scores[4] = torch.arange(2000, dtype=torch.float32) // 64  # increasing plateaus (ties at the end)
    got, want, counts = run_both(monkeypatch, scores, limits, k, row0=0, programs=2, atomic=atomic)
    assert_same(got, want)
    assert k <= counts[0] <= 256 and counts[1] > 256, counts.tolist()
    assert all(k <= int(c) <= 256 for c in counts[2:4]), counts.tolist()


def test_sample_defeated_both_fallbacks(monkeypatch, atomic):
    """Rank below k (k 64, sample 128, rows of 2048): a row whose sampled entries are low and all others
    high (count > cap), and one whose sampled entries are the only high ones (count < k)."""
    (tp,) = interp_modules("topk_prefill")
    k, sample, cap, lim = 64, 128, 1024, 2048
    g = torch.Generator().manual_seed(3)
    scores = torch.randn(4, lim, generator=g)
    ids = tp.sampled_entries(lim, sample)
    scores[1] += 10.0
    scores[1, ids] -= 20.0  # sample low, the rest high: every unsampled entry is a candidate
    scores[2, ids] += 10.0  # sample high, the rest low: only ~rank entries reach t_sub
    scores[3, :1024] += 5.0  # a step: the top half of the sample tells the truth
    got, want, counts = run_both(monkeypatch, scores, [lim] * 4, k, row0=1, sample=sample, cap=cap, programs=3,
                                  atomic=atomic)
    assert_same(got, want)
    c = counts.tolist()
    assert k <= c[0] <= cap and c[1] > cap and c[2] < k and k <= c[3] <= cap, c


def test_atomic_form_sends_tie_overflow_to_the_fallback(monkeypatch, atomic):
    """100 ties at the top value, k 16, cap 256: the scan form selects among the candidates; the atomic form
    sorts at most cap/4 = 64 entries at or above T, so it hands the row to the fallback (count cap + 1). Both
    write the streaming kernel's row."""
    k, cap = 16, 256
    g = torch.Generator().manual_seed(4)
    scores = torch.randn(3, 1300, generator=g)
    ties = torch.randperm(1300, generator=g)[:100]
    scores[1, ties] = 5.0
    got, want, counts = run_both(monkeypatch, scores, [1300] * 3, k, row0=0, cap=cap, programs=2, atomic=atomic)
    assert_same(got, want)
    c = counts.tolist()
    assert k <= c[0] <= cap and k <= c[2] <= cap, c
    assert c[1] == cap + 1 if atomic else k <= c[1] <= cap, c


def test_bad_sizes_rejected():
    (tp,) = interp_modules("topk_prefill")
    s = torch.zeros(1, 64)
    p = torch.zeros(1, dtype=torch.int32)
    o = torch.zeros(1, 8, dtype=torch.int32)
    with pytest.raises(ValueError):
        tp.topk_rows_prefill(s, p, o, 0, 1, 8, 1, cap=100)
    with pytest.raises(ValueError):
        tp.topk_rows_prefill(s, p, o, 0, 1, 512, 1, cap=256)
    k = tp.CAP // 2  # 512 at the GPU sizes
    assert tp.use_prefill(8192, 262144, k) and not tp.use_prefill(64, 262144, k)
    assert not tp.use_prefill(8192, tp.PREFILL_MIN_ECAP, k) and not tp.use_prefill(8192, 262144, tp.CAP)


def test_indexer_topk_rows_dispatches_here_only_when_enabled(monkeypatch):
    """indexer.topk_rows takes topk_prefill for many long rows only when ENABLED (on by default; off with
    V4_TOPK_PREFILL=0), and then returns exactly the streaming kernel's output."""
    ti, tp = interp_modules("indexer", "topk_prefill")
    g = torch.Generator().manual_seed(11)
    n, k, e_cap = 6, 8, 700
    scores = torch.randn(n, e_cap, generator=g)
    pos = torch.tensor([e_cap - 1 - 37 * i for i in range(n)], dtype=torch.int32)
    monkeypatch.setitem(ti._SPLIT, "on", False)
    monkeypatch.setattr(tp, "PREFILL_MIN_ROWS", 1)
    monkeypatch.setattr(tp, "PREFILL_MIN_ECAP", 16)
    calls = []
    real = tp.topk_rows_prefill
    monkeypatch.setattr(tp, "topk_rows_prefill", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    assert tp.ENABLED  # on by default
    monkeypatch.setattr(tp, "ENABLED", False)
    want = torch.full((n, k), -7, dtype=torch.int32)
    ti.topk_rows(scores, pos, want, 0, n, k, 1, reg_max=16)
    assert not calls
    monkeypatch.setattr(tp, "ENABLED", True)
    got = torch.full((n, k), -7, dtype=torch.int32)
    ti.topk_rows(scores, pos, got, 0, n, k, 1, reg_max=16)
    assert calls and torch.equal(got, want)
