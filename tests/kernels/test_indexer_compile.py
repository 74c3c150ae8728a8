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


def compile_fp8_scores() -> int:
    """Compile the FP8 index-score kernels (triton/indexer_fp8.py) for sm_90 at the V4 indexer shape: the score
    kernel at 1-3 pipeline stages and both key-tile sizes, the packing kernel for every key format; asserts no
    spills and that the score loop runs on FP8 wgmma."""
    import kernels.triton.indexer_fp8 as f8
    ptrs16 = {(i,): [["tt.divisibility", 16]] for i in range(8)}  # torch allocations, as specialized at run time
    n = 0
    for rows, stages, block_e, warps in ((1, 1, 64, 4), (1, 3, 128, 4), (2, 2, 64, 4), (2, 3, 64, 4),
                                         (2, 3, 128, 8), (4, 3, 64, 8)):
        sig = dict(q_ptr="*bf16", w_ptr="*fp32", k8_ptr="*fp8e4nv", ks_ptr="*fp32", kbase_ptr="*i64",
                   tok_seq_ptr="*i32", pos_ptr="*i32", scores_ptr="*fp32", row0="i32", n_rows="i32", HI="i32",
                   score_stride="i32", n_split="i32")
        consts = dict(CI=128, RATIO=4, BLOCK_H=64, BLOCK_E=block_e, R=rows, DOT_F32=False, STAGES=stages)
        k = compile_sm90(f8._score_kernel, sig, consts, ptrs16, num_warps=warps)
        use = resource_usage(k)
        cfg = (rows, stages, block_e, warps)
        assert use["LOCAL"] == 0 and use["STACK"] == 0, (cfg, use)
        assert "e4m3" in k.asm["ptx"] and "wgmma" in k.asm["ptx"], "the score MMA is not FP8 wgmma"
        # pipelined: the key tile and its scales are cp.async-prefetched STAGES-1 tiles ahead, in each of the
        # R per-sequence passes
        assert k.asm["ttgir"].count("async_copy_global_to_local") == (0 if stages == 1 else 2 * stages * rows), cfg
        print(f"score R={rows} STAGES={stages} BLOCK_E={block_e} warps={warps}: {use['REG']} registers, "
              f"{k.metadata.shared} B shared")
        n += 1
    for kfmt, keys_t, row in ((0, "*bf16", 128), (1, "*u8", 132), (2, "*u8", 68)):
        sig = dict(keys_ptr=keys_t, tables_ptr="*i32", nkeys_ptr="*i32", kbase_ptr="*i64", out_ptr="*fp8e4nv",
                   oscale_ptr="*fp32", table_stride="i32", ROW="i32")
        consts = dict(CI=128, PB=32, KFMT=kfmt, BLOCK_E=64, ALIGN=16 if kfmt == 0 else 4, DOT_F32=False)
        k = compile_sm90(f8._pack_kernel, sig, consts, {(i,): [["tt.divisibility", 16]] for i in (0, 1, 2, 3, 4, 5)},
                         num_warps=8)
        use = resource_usage(k)
        assert use["LOCAL"] == 0 and use["STACK"] == 0, (kfmt, use)
        print(f"pack KFMT={kfmt}: {use['REG']} registers")
        n += 1
    return n


@pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU tests run the kernel for real")
def test_fp8_score_kernels_compile_for_sm90_without_spills():
    assert compiled_count("test_indexer_compile", "compile_fp8_scores") == 9
