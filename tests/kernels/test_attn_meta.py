"""AttnMeta.packed_layout: the dense per-sequence layout shared by the packed HCA entries and the packed FP8
index keys. Host sizes and device offsets must agree, sequences below min_query (and empty chunks) get none."""

from __future__ import annotations

import torch

from kernels.attn_meta import AttnMeta


def meta(query_lens: list[int], context_lens: list[int]) -> AttnMeta:
    qs = [0]
    for n in query_lens:
        qs.append(qs[-1] + n)
    b = len(context_lens)
    tok_seq = torch.repeat_interleave(torch.arange(b, dtype=torch.int32), torch.tensor(query_lens))
    return AttnMeta(query_start=torch.tensor(qs, dtype=torch.int32),
                    context_lens=torch.tensor(context_lens, dtype=torch.int32),
                    slot_ids=torch.arange(b, dtype=torch.int32), block_tables=torch.zeros(b, 1, dtype=torch.int32),
                    tok_seq=tok_seq, positions=torch.zeros(qs[-1], dtype=torch.int32), query_start_host=qs,
                    context_lens_host=context_lens, max_query_len=max(query_lens),
                    max_seq_len=max(c + n for c, n in zip(context_lens, query_lens)))


def test_packed_layout_counts_and_offsets():
    m = meta([5, 0, 1, 600, 3], [10, 40, 127, 0, 1])
    lay = m.packed_layout(4)
    want = [(10 + 5) // 4, 0, (127 + 1) // 4, 600 // 4, (1 + 3) // 4]
    assert lay.counts.tolist() == want
    assert lay.base.tolist() == [0, 3, 3, 35, 185]
    assert lay.base.dtype == torch.int64 and lay.counts.dtype == torch.int32
    assert (lay.total, lay.most) == (sum(want), 150)


def test_packed_layout_min_query_skips_short_chunks():
    m = meta([5, 1, 600], [10, 127, 0])
    lay = m.packed_layout(4, min_query=512)
    assert lay.counts.tolist() == [0, 0, 150]
    assert lay.base.tolist() == [0, 0, 0]
    assert (lay.total, lay.most) == (150, 150)
    empty = meta([1, 1], [2, 1]).packed_layout(128)
    assert (empty.total, empty.most, empty.counts.tolist()) == (0, 0, [0, 0])
