"""The FP8 activation quantization kernel (kernels/triton/act_quant.py) compiles for sm_90 (Triton frontend + the
bundled ptxas, no GPU): the fp32 -> float8e4nv store and the scale layouts the interpreter does not check. Runs
in a subprocess without TRITON_INTERPRET; this module does not set it at import."""

from __future__ import annotations

import pytest
import torch

from tests.kernels.fp8_compile import compile_sm90, compiled_count


def compile_act_quant() -> int:
    """Compile the act_quant kernel for sm_90 (no GPU) for bf16 and fp32 rows -> how many."""
    import kernels.triton.act_quant as aq
    n = 0
    for xt in ("*bf16", "*fp32"):
        sig = dict(x_ptr=xt, q_ptr="*fp8e4nv", s_ptr="*fp32", M="i32", MP="i32", K="i32", stride_xm="i32", stride_qm="i32",
                   s_sm="i32", s_sk="i32")
        k = compile_sm90(aq._act_quant_kernel, sig, dict(BM=64, DOT_F32=False), num_warps=4)
        assert k.asm["cubin"] and "cvt.rn.satfinite.e4m3x2.f32" in k.asm["ptx"]
        n += 1
    return n


@pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU tests run the kernel for real")
def test_act_quant_compiles_for_sm90():
    assert compiled_count("test_act_quant_compile", "compile_act_quant") == 2
