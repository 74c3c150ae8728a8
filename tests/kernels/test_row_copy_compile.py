"""The rollback copy kernels (kernels/triton/row_copy.py) compile for sm_90 without a GPU (Triton frontend +
the bundled ptxas): the int64 -> pointer casts, the runtime branch on the tensor kind and the loaded loop
bound are checked beyond what the interpreter runs. Subprocess without TRITON_INTERPRET."""

from __future__ import annotations

import pytest
import torch

from tests.kernels.fp8_compile import compile_sm90, compiled_count


def compile_all() -> int:
    from kernels.triton import row_copy as rc

    def build(fn, sig, consts):
        assert compile_sm90(fn, sig, consts, num_warps=4).asm["cubin"]

    n = 0
    sig = dict(desc_ptr="*i64", i0_ptr="*i64", i1_ptr="*i64", keep_ptr="*u8", buf_ptr="*u8", R="i32")
    for keep in (False, True):
        for to_buf in (False, True):
            for word in (False, True):
                build(rc._row_copy_kernel, sig, dict(HAS_KEEP=keep, TO_BUF=to_buf, WORD=word, BLOCK=256))
                n += 1
    sig = dict(desc_ptr="*i64", slots_ptr="*i64", first_ptr="*i64", tables_ptr="*i32", tables_stride="i32",
               width="i32", bound_ptr="*i64", buf_ptr="*u8", R="i32", n="i32", block_size="i32")
    for to_buf in (False, True):
        for word in (False, True):
            build(rc._spec_row_copy_kernel, sig, dict(TO_BUF=to_buf, WORD=word, BLOCK=256))
            n += 1
    return n


@pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU tests run these kernels for real")
def test_row_copy_kernels_compile_for_sm90():
    assert compiled_count("test_row_copy_compile", "compile_all") == 12
