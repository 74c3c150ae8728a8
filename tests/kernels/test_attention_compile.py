"""The sparse-attention kernel compiles for sm_90 (Triton frontend + the bundled ptxas, no GPU) at the V4 decode
shape (64 heads x 512, FP8 or bf16 entries) for each value-column slicing (attention.DSPLIT), and slicing the
accumulator lowers its stack (spills). Runs in a subprocess without TRITON_INTERPRET."""

from __future__ import annotations

import pytest
import torch

from tests.kernels.fp8_compile import compile_sm90, compiled_count, resource_usage


def compile_attention() -> int:
    """Compile _sparse_attn_kernel for sm_90 (top-k CSA decode: window 128 + 512 entries, 8 warps, 16-key tiles)
    at DSPLIT 1 / 2 / 4 for both entry formats -> how many; asserts a sliced accumulator spills less."""
    import triton.language as tl

    import kernels.triton.attention as ta
    n = 0
    for fp8 in (False, True):
        kv = "*u8" if fp8 else "*bf16"
        sig = dict(q_ptr="*bf16", cur_ptr=kv, ring_ptr=kv, pool_ptr=kv, topk_ptr="*i32", tables_ptr="*i32",
                   tok_seq_ptr="*i32", pos_ptr="*i32", qstart_ptr="*i32", ctx_ptr="*i32", slot_ptr="*i32",
                   sink_ptr="*fp32", out_ptr="*bf16", part_acc_ptr="*fp32", part_ml_ptr="*fp32", H="i32",
                   table_stride="i32", topk_stride="i32", split_len="i32", sm_scale_log2="fp32")
        stack = {}
        for ds in (1, 2, 4):
            consts = dict(W=128, ROW=584 if fp8 else 512, PB=32, RATIO=4, K=512, HAS_POOL=True, HAS_TOPK=True,
                          NSPLIT=1, D=512, NOPE=448 if fp8 else 512, R=64 if fp8 else 0, FP8=fp8, BLOCK_H=64,
                          BLOCK_N=16, DOT_DT=tl.bfloat16, DSPLIT=ds)
            k = compile_sm90(ta._sparse_attn_kernel, sig, consts, num_warps=8, num_stages=2)
            assert k.asm["cubin"]
            stack[ds] = resource_usage(k)["STACK"]
            print(f"FP8={fp8} DSPLIT={ds}: stack {stack[ds]} B")
            n += 1
        assert min(stack[2], stack[4]) < stack[1], stack  # (bf16: 48 / 0 / 56 B; FP8: 96 / 88 / 0 B)
    return n


@pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU tests run the kernel for real")
def test_sparse_attention_compiles_for_sm90_with_sliced_accumulators():
    assert compiled_count("test_attention_compile", "compile_attention") == 6
