"""indexer: Triton kernels under the CPU interpreter (TRITON_INTERPRET=1, tiny shapes, fixed configs)
vs the pure-torch twins in kernels/ref. The kernels run in a subprocess that sets TRITON_INTERPRET=1
before importing triton (see tests/kernels/kernel_cases.run_interp_subprocess)."""

import os

import torch

if not torch.cuda.is_available():  # the suite's convention: Triton is first imported with the interpreter on
    os.environ["TRITON_INTERPRET"] = "1"

from tests.kernels.kernel_cases import run_interp_subprocess  # noqa: E402


def test_indexer_interpreter_matches_twin():
    results = run_interp_subprocess("indexer")
    assert results
    bad = [(name, val, tol) for name, val, tol in results if not val <= tol]
    for name, val, tol in results:
        print(f"{name}: {val:.3e} (tol {tol:.0e})")
    assert not bad, bad


def test_fp8_score_choice(monkeypatch):
    """The FP8 index scores are chosen per sequence, for prefill chunks on the measured GPU class only: never on the
    CPU, never for decode or speculative-verify rows (also beside a prefill chunk), and V4_IDX_FP8_MIN_ROWS=0 turns
    them off. Consecutive sequences with the same choice form one row range."""
    import torch

    from kernels.triton import fp8_table
    from kernels.triton import indexer_fp8 as f8
    from tests.kernels.kernel_cases import make_meta

    lo = f8.FP8_SCORE_MIN_ROWS
    assert lo is not None
    q = torch.zeros(1, 64, 128)
    mixed, _, _ = make_meta([(0, lo), (4096, 1), (100, 4), (0, 0), (0, lo + 7), (9000, lo)], 128, "cpu")
    decode, _, _ = make_meta([(4096, 4)] * 300, 128, "cpu")  # 1,200 verify rows: no chunk of lo tokens
    assert f8.fp8_sequences(q, mixed) == [False] * 6  # CPU rows
    monkeypatch.setattr(fp8_table, "_on_measured_gpu", lambda rows: True)
    monkeypatch.setattr(f8, "_ENV_MIN_ROWS", None)
    choice = f8.fp8_sequences(q, mixed)
    assert choice == [True, False, False, False, True, True]
    qs = mixed.query_start_host
    assert f8.row_segments(mixed, choice) == [(0, lo, True), (lo, lo + 5, False), (lo + 5, qs[-1], True)]
    assert f8.fp8_sequences(q, decode) == [False] * 300
    assert f8.row_segments(decode, [False] * 300) == [(0, 1200, False)]
    monkeypatch.setattr(f8, "_ENV_MIN_ROWS", "0")
    assert f8.fp8_sequences(q, mixed) == [False] * 6
    monkeypatch.setattr(f8, "_ENV_MIN_ROWS", "4")
    assert f8.fp8_sequences(q, mixed) == [True, False, True, False, True, True]


def test_row_tiles_balanced_cover_the_rows_without_small_remainders():
    """indexer_topk's score tiles: contiguous, covering [r0, r1), at most `tile` rows, as few as that allows, equal
    up to one row. For the prefill chunks of a 1M-token
    prompt (8,192 / 16,384 rows and their 7,616 / 15,808-row last chunks) at every context's tile cap, no tile
    falls under topk_prefill.PREFILL_MIN_ROWS (which sent remainders to topk_long's few-rows path)."""
    from kernels.triton import indexer as ti
    from kernels.triton import topk_prefill as tp

    for r0, r1, tile in ((0, 8192, 545), (5, 7621, 256), (0, 10, 3), (2, 3, 8), (0, 16384, 2048)):
        tiles = ti.row_tiles(r0, r1, tile)
        assert tiles[0][0] == r0 and sum(n for _, n in tiles) == r1 - r0
        assert all(a + n == b for (a, n), (b, _) in zip(tiles, tiles[1:])) and max(n for _, n in tiles) <= tile
        assert len(tiles) == -(-(r1 - r0) // tile) and max(n for _, n in tiles) - min(n for _, n in tiles) <= 1
    assert ti.row_tiles(4, 4, 8) == []
    assert ti.row_tiles(0, 8192, 545) == [(512 * i, 512) for i in range(16)]  # not 15 x 545 + 17
    for rows in (8192, 16384, 7616, 15808):
        for e_cap in range(1024, 262145, 997):
            cap = max(1, min(rows, ti.SCORE_BUDGET_BYTES // (4 * e_cap)))
            assert min(n for _, n in ti.row_tiles(0, rows, cap)) >= tp.PREFILL_MIN_ROWS, (rows, e_cap, cap)
