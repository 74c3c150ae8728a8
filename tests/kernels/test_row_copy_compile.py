"""The rollback copy kernels (kernels/triton/row_copy.py) compile for sm_90 without a GPU (Triton frontend +
the bundled ptxas): the int64 -> pointer casts, the runtime branch on the tensor kind and the loaded loop
bound are checked beyond what the interpreter runs. Subprocess without TRITON_INTERPRET."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch


def compile_all() -> int:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from kernels.triton import row_copy as rc

    def build(fn, sig, consts):
        full = dict(sig)
        full.update({k: "constexpr" for k in consts})
        src = ASTSource(fn=fn, signature=full, constexprs={(fn.arg_names.index(k),): v for k, v in consts.items()})
        assert triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4}).asm["cubin"]

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
    root = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(root) + os.pathsep + env.get("PYTHONPATH", "")
    code = "from tests.kernels.test_row_copy_compile import compile_all; print('COMPILED', compile_all())"
    p = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, timeout=600)
    if p.returncode and "ptxas" in p.stderr and "not found" in p.stderr.lower():
        pytest.skip("no ptxas in this Triton install")
    assert p.returncode == 0, p.stderr[-3000:]
    assert int(p.stdout.split("COMPILED")[-1]) == 12
