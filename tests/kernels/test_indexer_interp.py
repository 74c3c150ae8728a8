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
    """The FP8 index scores are chosen for prefill-sized calls on the measured GPU class only: never on the CPU,
    never for decode-sized batches, and V4_IDX_FP8_MIN_ROWS=0 turns them off."""
    import torch

    from kernels.triton import fp8_table
    from kernels.triton import indexer_fp8 as f8

    q = lambda n: torch.zeros(n, 64, 128)  # noqa: E731
    assert not f8.use_fp8_scores(q(4096))  # CPU rows
    monkeypatch.setattr(fp8_table, "_on_measured_gpu", lambda rows: True)
    monkeypatch.setattr(f8, "_ENV_MIN_ROWS", None)
    lo = f8.FP8_SCORE_MIN_ROWS
    assert lo is not None and f8.use_fp8_scores(q(lo)) and not f8.use_fp8_scores(q(lo - 1))
    monkeypatch.setattr(f8, "_ENV_MIN_ROWS", "0")
    assert not f8.use_fp8_scores(q(4096))
    monkeypatch.setattr(f8, "_ENV_MIN_ROWS", "64")
    assert f8.use_fp8_scores(q(64)) and not f8.use_fp8_scores(q(63))
