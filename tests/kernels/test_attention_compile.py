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


def compile_hca_prefill() -> int:
    """Compile the packed-entry HCA prefill kernels (triton/attention_hca.py) for sm_90 at the V4 shape: the
    attention kernel's entry loop is cp.async-pipelined at the shipped BLOCK_N / STAGES and fits in shared
    memory for both entry formats; the packing kernel reads the 584-byte FP8 rows with loads of at most 8 bytes
    (a constexpr row pitch gave misaligned 16-byte loads on the H200 with 2 entries per block)."""
    import re

    import triton.language as tl

    import kernels.triton.attention_hca as hca
    ptrs16 = {(i,): [["tt.divisibility", 16]] for i in range(14)}
    n = 0
    for fp8 in (False, True):
        kv = "*u8" if fp8 else "*bf16"
        sig = dict(q_ptr="*bf16", cur_ptr=kv, ring_ptr=kv, ent_ptr="*bf16", ebase_ptr="*i64", tok_seq_ptr="*i32",
                   pos_ptr="*i32", qstart_ptr="*i32", ctx_ptr="*i32", slot_ptr="*i32", sink_ptr="*fp32",
                   out_ptr="*bf16", part_acc_ptr="*fp32", part_ml_ptr="*fp32", H="i32", split_len="i32",
                   sm_scale_log2="fp32")
        consts = dict(W=128, ROW=584 if fp8 else 512, RATIO=128, NSPLIT=1, D=512, NOPE=448 if fp8 else 512,
                      R=64 if fp8 else 0, FP8=fp8, BLOCK_H=64, BLOCK_N=hca.BLOCK_N, DOT_DT=tl.bfloat16,
                      STAGES=hca.STAGES)
        k = compile_sm90(hca._hca_prefill_kernel, sig, consts, ptrs16, num_warps=8)
        use = resource_usage(k)
        assert k.metadata.shared <= 227 * 1024, k.metadata.shared
        assert use["LOCAL"] == 0, use
        assert k.asm["ttgir"].count("async_copy_global_to_local") >= 2, "the entry loop is not pipelined"
        print(f"hca FP8={fp8}: {use['REG']} registers, stack {use['STACK']} B, {k.metadata.shared} B shared")
        n += 1
        psig = dict(pool_ptr=kv, tables_ptr="*i32", nent_ptr="*i32", ebase_ptr="*i64", out_ptr="*bf16",
                    table_stride="i32", ROW="i32")
        for pb in (1, 2):
            pc = dict(PB=pb, D=512, NOPE=448 if fp8 else 512, R=64 if fp8 else 0, FP8=fp8, BLOCK_E=hca.PACK_BLOCK,
                      DOT_DT=tl.bfloat16)
            attrs = {(i,): [["tt.divisibility", 16]] for i in range(5)}
            if not fp8:
                attrs[(6,)] = [["tt.divisibility", 16]]  # a 512-element pitch is specialized as such at run time
            pk = compile_sm90(hca._pack_entries_kernel, psig, pc, attrs, num_warps=4)
            widths = set(re.findall(r"ld\.global\.(v\d\.)?b(\d+)", pk.asm["ptx"]))
            if fp8:
                assert all(int(v[0][1] if v[0] else 1) * int(v[1]) <= 64 for v in widths), widths
            n += 1
    return n


@pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU tests run the kernel for real")
def test_hca_prefill_compiles_for_sm90():
    assert compiled_count("test_attention_compile", "compile_hca_prefill") == 6
