"""The sparse-attention kernel compiles for sm_90 (Triton frontend + the bundled ptxas, no GPU) at the V4 decode
shape (64 heads x 512, FP8 or bf16 entries) for each value-column slicing (attention.DSPLIT), and slicing the
accumulator lowers its stack (spills). Runs in a subprocess without TRITON_INTERPRET."""

from __future__ import annotations

import os

import pytest
import torch

from tests.kernels.fp8_compile import compile_sm90, compiled_count, resource_usage


def _attn_sig(kv: str) -> dict:
    """The runtime arguments of attention._sparse_attn_kernel with entries of Triton type `kv`."""
    return dict(q_ptr="*bf16", cur_ptr=kv, ring_ptr=kv, pool_ptr=kv, topk_ptr="*i32", tables_ptr="*i32",
                tok_seq_ptr="*i32", pos_ptr="*i32", qstart_ptr="*i32", ctx_ptr="*i32", slot_ptr="*i32",
                sink_ptr="*fp32", out_ptr="*bf16", part_acc_ptr="*fp32", part_ml_ptr="*fp32", cos_ptr="*fp32",
                sin_ptr="*fp32", H="i32", table_stride="i32", topk_stride="i32", split_len="i32",
                sm_scale_log2="fp32", cs_stride="i32")


def _hca_sig(kv: str) -> dict:
    """The runtime arguments of attention_hca._hca_prefill_kernel with entries of Triton type `kv`."""
    return dict(q_ptr="*bf16", cur_ptr=kv, ring_ptr=kv, ent_ptr="*bf16", ebase_ptr="*i64", tok_seq_ptr="*i32",
                pos_ptr="*i32", qstart_ptr="*i32", ctx_ptr="*i32", slot_ptr="*i32", sink_ptr="*fp32",
                out_ptr="*bf16", part_acc_ptr="*fp32", part_ml_ptr="*fp32", cos_ptr="*fp32", sin_ptr="*fp32",
                H="i32", split_len="i32", sm_scale_log2="fp32", cs_stride="i32")


def compile_attention() -> int:
    """Compile _sparse_attn_kernel for sm_90 (top-k CSA decode: window 128 + 512 entries, 8 warps, 16-key tiles)
    at DSPLIT 1 / 2 / 4 for both entry formats -> how many; asserts a sliced accumulator spills less."""
    import triton.language as tl

    import kernels.triton.attention as ta
    n = 0
    for fp8 in (False, True):
        kv = "*u8" if fp8 else "*bf16"
        sig = _attn_sig(kv)
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
        sig = _hca_sig(kv)
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


def compile_fp8_rope_block() -> str:
    """The CSA decode kernel with FP8 entries (32-key tiles, DSPLIT 1, the default decode shape) compiled for sm_90
    under this process's V4_ATTN_FP8_ROPE_BLOCK -> "instructions global-loads local-bytes" of its SASS."""
    import re
    import subprocess
    import tempfile

    import triton
    import triton.language as tl

    import kernels.triton.attention as ta

    kv = "*u8"
    sig = _attn_sig(kv)
    consts = dict(W=128, ROW=584, PB=32, RATIO=4, K=512, HAS_POOL=True, HAS_TOPK=True, NSPLIT=1, D=512, NOPE=448,
                  R=64, FP8=True, BLOCK_H=64, BLOCK_N=32, DOT_DT=tl.bfloat16, DSPLIT=1)
    k = compile_sm90(ta._sparse_attn_kernel, sig, consts, num_warps=8, num_stages=2)
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(k.asm["cubin"])
        f.flush()
        out = subprocess.run([tool, "-sass", f.name], capture_output=True, text=True, check=True).stdout
    ins = [x for x in out.splitlines() if re.match(r"\s+/\*[0-9a-f]{4,}\*/", x)]
    return f"{len(ins)} {sum('LDG' in x for x in ins)} {resource_usage(k)['LOCAL']}"


@pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU tests run the kernel for real")
def test_fp8_rope_block_load_compiles_leaner(monkeypatch):
    """attn_tiles.FP8_ROPE_BLOCK (read at import, so one compile process per setting): fewer instructions and global
    loads, no local memory (6,272 -> 4,264 instructions, 316 -> 252 loads when written)."""
    from tests.kernels.fp8_compile import run_without_interpreter

    counts = {}
    for on in ("0", "1"):
        monkeypatch.setenv("V4_ATTN_FP8_ROPE_BLOCK", on)
        out = run_without_interpreter("from tests.kernels.test_attention_compile import compile_fp8_rope_block; "
                                      "print('COUNTS', compile_fp8_rope_block())")
        counts[on] = [int(x) for x in out.split("COUNTS")[-1].split()]
    assert counts["1"][2] == 0 and counts["1"][0] < counts["0"][0] and counts["1"][1] < counts["0"][1], counts


def compile_rope_out() -> str:
    """The CSA decode kernel (both entry formats, 32-key tiles) and the packed HCA prefill kernel with and without the
    output's inverse RoPE in their write (attention.ROPE_OUT) -> one line per kernel: registers, stack and local
    bytes off / on."""
    import triton.language as tl

    import kernels.triton.attention as ta
    import kernels.triton.attention_hca as hca
    lines = []
    for fp8 in (False, True):
        kv = "*u8" if fp8 else "*bf16"
        sig = _attn_sig(kv)
        use = {}
        for on in (False, True):
            consts = dict(W=128, ROW=584 if fp8 else 512, PB=32, RATIO=4, K=512, HAS_POOL=True, HAS_TOPK=True,
                          NSPLIT=1, D=512, NOPE=448 if fp8 else 512, R=64, FP8=fp8, BLOCK_H=64, BLOCK_N=32,
                          DOT_DT=tl.bfloat16, DSPLIT=1, ROPE_OUT=on)
            use[on] = resource_usage(compile_sm90(ta._sparse_attn_kernel, sig, consts, num_warps=8, num_stages=2))
        lines.append(f"csa FP8={fp8}: " + " / ".join(f"{u['REG']} reg {u['STACK']} B stack {u['LOCAL']} B local"
                                                     for u in use.values()))
        hsig = _hca_sig(kv)
        for on in (False, True):
            consts = dict(W=128, ROW=584 if fp8 else 512, RATIO=128, NSPLIT=1, D=512, NOPE=448 if fp8 else 512,
                          R=64, FP8=fp8, BLOCK_H=64, BLOCK_N=hca.BLOCK_N, DOT_DT=tl.bfloat16, STAGES=hca.STAGES,
                          ROPE_OUT=on)
            use[on] = resource_usage(compile_sm90(hca._hca_prefill_kernel, hsig, consts,
                                                  {(i,): [["tt.divisibility", 16]] for i in range(16)}, num_warps=8))
        lines.append(f"hca FP8={fp8}: " + " / ".join(f"{u['REG']} reg {u['STACK']} B stack {u['LOCAL']} B local"
                                                     for u in use.values()))
    return "\n".join(lines)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU tests run the kernel for real")
def test_rope_out_compiles_for_sm90():
    """The output's inverse RoPE in the attention kernels' write compiles for sm_90 (its register cost printed:
    the A/B switch attention.ROPE_OUT is off until timed)."""
    from tests.kernels.fp8_compile import run_without_interpreter
    out = run_without_interpreter("from tests.kernels.test_attention_compile import compile_rope_out; "
                                  "print(compile_rope_out())")
    print(out)
    assert out.count(" reg ") == 8
