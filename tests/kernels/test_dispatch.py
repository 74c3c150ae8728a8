"""kernels/__init__.py: one table op -> (twin, Triton module); every public op dispatches through it,
both implementations take the same parameters, and the backend override is scoped."""

import inspect

import pytest
import torch

import kernels
from kernels import ref


@pytest.mark.parametrize("op", sorted(kernels._OPS))
def test_every_op_has_both_implementations_with_one_signature(op):
    twin, tri_name, _ = kernels._OPS[op]
    assert op in kernels.__all__ and twin.__name__.startswith(ref.__name__ + ".")
    with kernels.backend("triton"):
        tri = kernels._impl(op, torch.empty(0))
    assert tri.__name__ == f"kernels.triton.{tri_name}"
    params = lambda f: list(inspect.signature(f).parameters)  # noqa: E731
    # the Triton function takes every parameter of the twin (plus, at most, tuning knobs of its own)
    assert set(params(getattr(twin, op))) <= set(params(getattr(tri, op))), op
    assert f'_impl("{op}"' in inspect.getsource(getattr(kernels, op))  # the public function uses the table


def test_scoped_override_restores_and_groups():
    cpu = torch.empty(0)
    assert kernels._impl("rms_norm", cpu) is kernels._OPS["rms_norm"][0]  # auto: the twin off CUDA
    with kernels.backend("triton", ops="attention"):
        assert kernels._impl("kv_pack", cpu).__name__ == "kernels.triton.attention"
        assert kernels._impl("rms_norm", cpu) is kernels._OPS["rms_norm"][0]
        with pytest.raises(RuntimeError), kernels.backend("ref", ops="attention"):
            assert kernels._impl("kv_pack", cpu) is kernels._OPS["kv_pack"][0]
            raise RuntimeError
        assert kernels._impl("kv_pack", cpu).__name__ == "kernels.triton.attention"  # restored after the error
    assert kernels._impl("kv_pack", cpu) is kernels._OPS["kv_pack"][0]
    with kernels.backend("triton"):
        assert kernels._impl("rms_norm", cpu).__name__ == "kernels.triton.norm"
    assert kernels.get_backend() == "auto"
    with pytest.raises(ValueError):
        with kernels.backend("cuda"):
            pass
