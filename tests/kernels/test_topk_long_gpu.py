"""Split top-k (kernels/triton/topk_long.py) at V4 decode shapes on the GPU: k = 512 over rows of up to
262K entries (1M context at ratio 4), against torch.topk; and the dispatch through indexer.topk_rows."""

from __future__ import annotations

import pytest
import torch


@pytest.mark.gpu
@pytest.mark.parametrize("e_cap", [262064, 40000])
def test_split_topk_real_shapes_gpu(e_cap):
    from kernels.triton import indexer as ti
    from kernels.triton import topk_long as tk

    k = 512
    limits = [e_cap, e_cap - 5000, 9000, 513, 100]
    g = torch.Generator(device="cuda").manual_seed(e_cap)
    scores = torch.randn(len(limits), e_cap, device="cuda", generator=g)
    pos = torch.tensor([lim - 1 for lim in limits], dtype=torch.int32, device="cuda")
    for fn in (lambda o: tk.topk_rows_split(scores, pos, o, 0, len(limits), k, 1),
               lambda o: ti.topk_rows(scores, pos, o, 0, len(limits), k, 1)):
        out = torch.full((len(limits), k), -7, dtype=torch.int32, device="cuda")
        fn(out)
        for r, lim in enumerate(limits):
            got = sorted(out[r].tolist())
            want = sorted(list(range(lim)) + [-1] * (k - lim)) if lim <= k else \
                sorted(scores[r, :lim].topk(k).indices.tolist())
            assert got == want, (e_cap, r, lim)
    assert tk.use_split(len(limits), e_cap, k)
