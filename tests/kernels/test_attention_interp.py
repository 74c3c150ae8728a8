"""attention: Triton kernels under the CPU interpreter (TRITON_INTERPRET=1, tiny shapes, fixed configs)
vs the pure-torch twins in kernels/ref. The kernels run in a subprocess that sets TRITON_INTERPRET=1
before importing triton (see tests/kernels/kernel_cases.run_interp_subprocess)."""

from tests.kernels.kernel_cases import run_interp_subprocess


def test_attention_interpreter_matches_twin():
    results = run_interp_subprocess("attention")
    assert results
    bad = [(name, val, tol) for name, val, tol in results if not val <= tol]
    for name, val, tol in results:
        print(f"{name}: {val:.3e} (tol {tol:.0e})")
    assert not bad, bad


def test_model_logits_interpreter_matches_twin():
    """The whole model (fp32) with the Triton attention ops == with the torch twins."""
    results = run_interp_subprocess("model")
    for name, val, tol in results:
        print(f"{name}: {val:.3e} (tol {tol:.0e})")
    assert results and all(val <= tol for _, val, tol in results), results
