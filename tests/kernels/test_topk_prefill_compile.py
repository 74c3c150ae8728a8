"""The prefill top-k kernels (kernels/triton/topk_prefill.py) compile for sm_90 at their real sizes (k 512,
SAMPLE 8192, CAP 4096, BLOCK 4096; the filter in both forms, scan and atomic) without a GPU (Triton frontend + the bundled ptxas), without spilling:
cuobjdump -res-usage must report STACK:0 (the one persistent kernel that held every stage spilled ~200
bytes a thread at 16 warps). Subprocess without TRITON_INTERPRET."""

from __future__ import annotations

import os
import re
import subprocess
import tempfile

import pytest
import torch

from tests.kernels.fp8_compile import compile_sm90, compiled_count

P = dict(scores_ptr="*fp32", pos_ptr="*i32", out_ptr="*i32")
TAIL = dict(row0="i32", score_stride="i32", out_stride="i32")


def res_usage(cubin: bytes) -> dict | None:
    """{'REG': n, 'STACK': bytes, ...} of a cubin from the cuobjdump bundled with Triton (None if absent)."""
    import triton
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.exists(tool):
        return None
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True, check=True).stdout
    return {k: int(v) for k, v in re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", text)}


def compile_all() -> int:
    from kernels.triton import topk_prefill as tp
    common = dict(K=512, RATIO=4, SAMPLE=tp.SAMPLE, BLOCK=tp.BLOCK)
    cases = [
        (tp._sample_kernel, dict(P, thr_ptr="*i32", count_ptr="*i32", **TAIL), dict(common, SEG=tp.SEG, Z=tp.SAMPLE_Z),
         tp.WARPS),
        *[(tp._filter_select_kernel, dict(P, thr_ptr="*i32", count_ptr="*i32", cid_ptr="*i32", cval_ptr="*fp32",
                                          cnt_ptr="*i32", row0="i32", n_rows="i32", score_stride="i32",
                                          out_stride="i32"),
           dict(common, CAP=tp.CAP, ATOMIC=atomic), tp.WARPS) for atomic in (False, True)],
        (tp._fallback_kernel, dict(P, count_ptr="*i32", **TAIL), dict(common, CAP=tp.CAP), tp.FALLBACK_WARPS),
    ]
    for fn, sig, consts, warps in cases:
        use = res_usage(compile_sm90(fn, sig, consts, num_warps=warps).asm["cubin"])
        print(fn.__name__, use)
        assert use is None or use["STACK"] == 0, (fn.__name__, use)
    return len(cases)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU tests run these kernels for real")
def test_topk_prefill_kernels_compile_for_sm90_without_spills():
    assert compiled_count("test_topk_prefill_compile", "compile_all") == 4
