"""Router tail + token->expert alignment: Triton (CPU interpreter on tiny shapes; GPU at V4-Flash
shapes) vs the torch twins in kernels.ref.routing.

Interpreter choice: TRITON_INTERPRET=1 is set in os.environ at import of this module (collection
time, before any test runs) when no GPU is present. kernels/__init__ imports the Triton modules
lazily, and `interp_util.interp_modules` reloads them if something imported them earlier without the
interpreter, so @triton.jit sees the flag when it decorates.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

from kernels.ref import routing as ref  # noqa: E402
from tests.kernels.interp_util import interp_modules  # noqa: E402


@pytest.mark.parametrize("hashed", [False, True])
@pytest.mark.parametrize("renorm", [True, False])
def test_route_interp(hashed, renorm):
    (tri,) = interp_modules("routing")
    g = torch.Generator().manual_seed(1)
    n, e, k = 7, 16, 3
    logits = torch.randn(n, e, generator=g) * 3
    bias = torch.randn(e, generator=g) * 0.1
    kw = dict(bias=None if hashed else bias)
    if hashed:
        kw.update(tid2eid=torch.randint(0, e, (40, k), generator=g), input_ids=torch.randint(0, 40, (n,), generator=g))
    w0, i0 = ref.moe_route(logits, k, 1.5, renorm, **kw)
    w1, i1 = tri.moe_route(logits, k, 1.5, renorm, **kw)
    assert i1.dtype == torch.int32 and w1.dtype == torch.float32
    assert torch.equal(i0, i1)
    torch.testing.assert_close(w1, w0, rtol=1e-5, atol=1e-6)


# (the last two: several chunks of 64 / 256 pairs -> per-chunk histograms, prefix scan, stable scatter)
@pytest.mark.parametrize("n,k,e,bm", [(1, 2, 8, 16), (9, 2, 8, 4), (40, 3, 5, 16), (50, 2, 8, 8), (150, 6, 32, 16),
                                      (300, 6, 256, 64)])
@pytest.mark.parametrize("parallel", [False, True])  # one program (decode) / two parallel launches (prefill)
def test_align_interp(n, k, e, bm, parallel):
    (tri,) = interp_modules("routing")
    g = torch.Generator().manual_seed(n)
    ids = torch.randint(0, e, (n, k), generator=g, dtype=torch.int32)
    ids[:, 0] = 0  # skewed: expert 0 hot; some experts empty
    r = ref.moe_align(ids, e, bm)
    t = tri.moe_align(ids, e, bm, parallel=parallel)
    for a, b in zip(r, t):
        assert torch.equal(a, b)
    # layout invariants: every pair exactly once, each block one expert
    s, ex, npad = r
    used = s[: int(npad)]
    valid = used[used < n * k].long()
    assert torch.equal(valid.sort().values, torch.arange(n * k))
    blk = s[: int(npad)].view(-1, bm)
    for b in range(blk.shape[0]):
        p = blk[b][blk[b] < n * k].long()
        assert (ids.reshape(-1)[p] == ex[b]).all()


# ---- GPU: V4-Flash shapes -----------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("n", [1, 8, 64, 512, 4096])
def test_route_gpu(n):
    import kernels.triton.routing as tri
    torch.manual_seed(n)
    e, k, vocab = 256, 6, 129280
    logits = torch.randn(n, e, device="cuda") * 2
    bias = torch.randn(e, device="cuda") * 0.05
    w0, i0 = ref.moe_route(logits, k, 1.5, True, bias=bias)
    w1, i1 = tri.moe_route(logits, k, 1.5, True, bias=bias)
    assert torch.equal(i0.sort(1).values, i1.sort(1).values)
    torch.testing.assert_close(w1.sort(1).values, w0.sort(1).values, rtol=1e-5, atol=1e-6)
    tid = torch.randint(0, e, (vocab, k), device="cuda")
    toks = torch.randint(0, vocab, (n,), device="cuda")
    w0, i0 = ref.moe_route(logits, k, 1.5, True, tid2eid=tid, input_ids=toks)
    w1, i1 = tri.moe_route(logits, k, 1.5, True, tid2eid=tid, input_ids=toks)
    assert torch.equal(i0, i1)
    torch.testing.assert_close(w1, w0, rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.parametrize("n", [1, 3, 64, 1000, 4096, 8192, 16384])
@pytest.mark.parametrize("bm", [16, 64, 128])
def test_align_gpu(n, bm):
    import kernels.triton.routing as tri
    torch.manual_seed(n + bm)
    ids = torch.randint(0, 256, (n, 6), device="cuda", dtype=torch.int32)
    if n > 3:
        ids[: n // 2] = torch.randint(0, 8, (n // 2, 6), device="cuda", dtype=torch.int32)  # skew
    want = ref.moe_align(ids, 256, bm)
    for parallel in (False, True):  # both kernels at every size (the default switches at PARALLEL_PAIRS)
        for a, b in zip(want, tri.moe_align(ids, 256, bm, parallel=parallel)):
            assert torch.equal(a, b)
