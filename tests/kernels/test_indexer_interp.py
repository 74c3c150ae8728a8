"""indexer: Triton kernels under the CPU interpreter (TRITON_INTERPRET=1, tiny shapes, fixed configs)
vs the pure-torch twins in kernels/ref. The kernels run in a subprocess that sets TRITON_INTERPRET=1
before importing triton (see tests/kernels/kernel_cases.run_interp_subprocess)."""

from tests.kernels.kernel_cases import run_interp_subprocess


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
