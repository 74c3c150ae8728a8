"""attention: Triton kernels under the CPU interpreter (TRITON_INTERPRET=1, tiny shapes, fixed configs)
vs the pure-torch twins in kernels/ref. The kernels run in a subprocess that sets TRITON_INTERPRET=1
before importing triton (see tests/kernels/kernel_cases.run_interp_subprocess)."""

import torch

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


def test_packed_hca_choice(monkeypatch):
    """Packed HCA entries (triton/attention_hca.py) for chunks whose tokens share their entries: never on the CPU,
    never for decode batches, and a mixed batch takes them when its prefill chunk dominates the entries."""
    from kernels.triton import attention_hca as hca
    from kernels.triton import fp8_table
    from tests.kernels.kernel_cases import make_meta

    q = torch.zeros(1, 4, 64)
    prefill, _, _ = make_meta([(4096, 512)], 128, "cpu")
    decode, _, _ = make_meta([(4096, 1)] * 64, 128, "cpu")
    mixed, _, _ = make_meta([(0, 2048)] + [(8192, 1)] * 8, 128, "cpu")
    assert not hca.use_packed_hca(prefill, 128, q)  # CPU rows
    monkeypatch.setattr(fp8_table, "_on_measured_gpu", lambda rows: True)
    monkeypatch.setattr(hca, "_ENV_MIN_QUERY", None)
    assert hca.use_packed_hca(prefill, 128, q) and hca.use_packed_hca(mixed, 128, q)
    assert not hca.use_packed_hca(decode, 128, q)
    monkeypatch.setattr(hca, "_ENV_MIN_QUERY", "0")
    assert not hca.use_packed_hca(prefill, 128, q)


def test_attention_fp8_rope_block_load_matches_twin():
    """The FP8 entries' unmasked block load with the rope block read once (attn_tiles.FP8_ROPE_BLOCK, an A/B switch)
    against the twins: window, CSA and packed HCA paths, whole and sliced value columns."""
    results = run_interp_subprocess("attention-fp8", env_extra={"V4_ATTN_FP8_ROPE_BLOCK": "1"})
    assert results
    bad = [(name, val, tol) for name, val, tol in results if not val <= tol]
    assert not bad, bad
