"""The indexer's score kernel compiles for sm_90 (Triton frontend + the bundled ptxas, no GPU) for every rows-per-
program grouping and key format, without register spills. Runs in a subprocess without TRITON_INTERPRET; this
module does not set it at import."""

from __future__ import annotations

import pytest
import torch

from tests.kernels.fp8_compile import compile_sm90, compiled_count, resource_usage


def compile_score() -> int:
    """Compile _score_kernel for sm_90 at the V4 indexer shape (64 heads x 128), one or two rows per program,
    with and without the pipelined key loop -> how many; asserts no spills."""
    import triton.language as tl

    import kernels.triton.indexer as ti
    n = 0
    for r, stages in ((1, 1), (2, 1), (1, 2), (2, 2)):  # 2: the software-pipelined key loop (SCORE_STAGES)
        for kfmt, keys_t, row in ((0, "*bf16", 128), (1, "*u8", 132), (2, "*u8", 68)):
            sig = dict(q_ptr="*bf16", w_ptr="*fp32", keys_ptr=keys_t, tables_ptr="*i32", tok_seq_ptr="*i32",
                       pos_ptr="*i32", scores_ptr="*fp32", row0="i32", HI="i32", table_stride="i32",
                       score_stride="i32", ROW="i32", n_split="i32")
            consts = dict(CI=128, PB=32, RATIO=4, KFMT=kfmt, BLOCK_H=64, BLOCK_E=64, DOT_DT=tl.bfloat16,
                          ALIGN=16 if kfmt == 0 else 4, STAGES=stages)
            if r > 1:
                sig["n_rows"], consts["R"] = "i32", r
            k = compile_sm90(ti._score_kernel if r == 1 else ti._score_group_kernel, sig, consts, num_warps=4)
            assert k.asm["cubin"]
            use = resource_usage(k)
            assert use["LOCAL"] == 0 and use["STACK"] == 0, (r, kfmt, use)  # no spills
            print(f"R={r} KFMT={kfmt} STAGES={stages}: {use['REG']} registers, {k.metadata.shared} B shared")
            n += 1
    return n


@pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU tests run the kernel for real")
def test_score_kernel_compiles_for_sm90_without_spills():
    assert compiled_count("test_indexer_compile", "compile_score") == 12
