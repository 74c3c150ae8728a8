"""The fused glue kernels compile for sm_90 (Triton frontend + the bundled ptxas, no GPU needed): catches
what the interpreter cannot (layouts, dot operand types, atomics, register-heavy variants). Runs in a
subprocess without TRITON_INTERPRET (the interpreter tests set it in this process)."""

from __future__ import annotations

import pytest
import torch
import triton

from tests.kernels.fp8_compile import compile_sm90, compiled_count

tl = triton.language

P = {t: "*" + t for t in ("bf16", "fp32", "u8", "i32", "i64")}

MIX_SIG = dict(x_ptr=P["bf16"], o_ptr=P["bf16"], post_ptr=P["fp32"], comb_ptr=P["fp32"], xo_ptr=P["bf16"],
               fn_ptr=P["fp32"], part_ptr=P["fp32"], sq_ptr=P["fp32"], N="i32", D="i32", MIX="i32", C_PER="i32")
FIN_SIG = dict(x_ptr=P["bf16"], part_ptr=P["fp32"], sq_ptr=P["fp32"], base_ptr=P["fp32"], scale_ptr=P["fp32"],
               nw_ptr=P["bf16"], u_ptr=P["bf16"], post_ptr=P["fp32"], comb_ptr=P["fp32"], N="i32", D="i32", S="i32",
               iters="i32", hc_eps="fp32", norm_eps="fp32")
LIN_SIG = dict(x_ptr=P["bf16"], w_ptr=P["u8"], s_ptr=P["u8"], w2_ptr=P["u8"], s2_ptr=P["u8"], y_ptr=P["bf16"],
               y2_ptr=P["fp32"], ws_ptr=P["fp32"], cnt_ptr=P["i32"], tab_ptr=P["fp32"], idx_ptr=P["i64"], M="i32",
               N="i32", K="i32", stride_xm="i32", stride_wn="i32", stride_sn="i32", stride_ym="i32", x_gs="i32",
               w_gs="i32", y_gs="i32", R="i32", alpha="fp32", limit="fp32", K_PER_SPLIT="i32", nw_ptr=P["bf16"],
               norm_eps="fp32")


def _compile(fn, sig, consts, warps, stages=1):
    assert compile_sm90(fn, sig, consts, num_warps=warps, num_stages=stages).asm["cubin"]


def _cases():
    from kernels.triton import fp8_linear as fl
    from kernels.triton import mhc, norm
    from kernels.triton import mhc_prefill
    for post in (False, True):
        yield mhc._mix_kernel, MIX_SIG, dict(HC=4, MP=32, BM=16, BC=32, POST=post), 8
        # the prefill mix (mhc_prefill.py): 64-row tiles on presplit bf16 fn, and fn split in the kernel
        for bm, bc, warps, stages, bf16, pre in ((64, 64, 8, 2, True, True), (16, 32, 4, 1, True, False)):
            sig = dict(MIX_SIG, fn_ptr=P["bf16"]) if pre else MIX_SIG
            yield mhc_prefill._mix_prefill_kernel, sig, dict(HC=4, MP=32, BM=bm, BC=bc, POST=post, BF16=bf16,
                                                             INTERP=False, PRESPLIT=pre), warps, stages
    yield mhc_prefill._split_fn_kernel, dict(fn_ptr=P["fp32"], out_ptr=P["bf16"], MIX="i32", K="i32"), \
        dict(MP=32, BK=1024), 4
    yield mhc_prefill._finish_rows_kernel, FIN_SIG, dict(HC=4, MP=32, SP=4, BD=4096, HEAD=False, NORM=True, BR=2), 8
    for head, norm_w in ((False, True), (True, True), (False, False)):
        yield mhc._finish_kernel, FIN_SIG, dict(HC=4, MP=16 if head else 32, SP=128, BD=4096, HEAD=head,
                                                NORM=norm_w), 16
    yield mhc._post_kernel, dict(o_ptr=P["bf16"], x_ptr=P["bf16"], post_ptr=P["fp32"], comb_ptr=P["fp32"],
                                 out_ptr=P["bf16"], D="i32"), dict(HC=4, BD=128), 4
    nsig = dict(x_ptr=P["bf16"], w_ptr=P["bf16"], cos_ptr=P["fp32"], sin_ptr=P["fp32"], y_ptr=P["bf16"], H="i32",
                D="i32", R2="i32", eps="fp32", stride_xr="i32", stride_cs="i32")
    for nrm, w, rope, inv in ((True, False, True, False), (True, True, True, False), (False, False, True, True),
                              (True, True, False, False)):
        yield norm._norm_rope_kernel, nsig, dict(BH=256, NORM=nrm, HAS_W=w, ROPE=rope, INVERSE=inv), 2
    yield norm._add_cast_kernel, dict(a_ptr=P["fp32"], b_ptr=P["bf16"], y_ptr=P["bf16"], numel="i32"), \
        dict(BLOCK=1024), 4
    from kernels.triton import moe
    msig = dict(a_ptr=P["bf16"], b_ptr=P["u8"], b2_ptr=P["u8"], bs_ptr=P["u8"], b2s_ptr=P["u8"], out_ptr=P["bf16"],
                rw_ptr=P["fp32"], sorted_ptr=P["i32"], eids_ptr=P["i32"], npad_ptr=P["i32"], N="i32", K="i32", P="i32",
                limit="fp32", stride_am="i32", stride_be="i32", stride_bn="i32", stride_bk="i32", stride_se="i32",
                stride_sn="i32", stride_sk="i32", stride_om="i32", zero_ptr=P["fp32"], ZERO_PER="i32", ZERO_N="i32")
    for wfmt in (1, 2):  # MoE gate/up launch that also clears the down kernel's output
        yield moe._moe_gemm_kernel, msig, dict(A_DIV=6, OUT_DIV=1, GATE_UP=True, WFMT=wfmt, BM=16, BN=64, BK=128,
                                               GROUP_M=1, DOT_T=tl.bfloat16, DOT_F32=False, USE_ASM=False,
                                               ACT_FP8=False, ZERO=True), 4
    lin_cases = [  # (split, dual, epi, round, wfmt, act_fp8, norm_in)
        (1, False, 0, False, 1, False, False), (4, False, 0, False, 1, False, False),
        (4, True, 1, True, 1, False, False), (2, True, 2, False, 0, False, False),
        (2, False, 0, True, 1, False, False), (4, True, 1, True, 1, True, False),
        (1, False, 0, False, 1, False, True), (4, False, 0, False, 1, True, True)]
    for split, dual, epi, rnd, wfmt, act, nrm in lin_cases:
        sig = dict(LIN_SIG)
        if wfmt == 0:
            sig.update(w_ptr=P["bf16"], s_ptr=P["bf16"], w2_ptr=P["bf16"], s2_ptr=P["bf16"], y_ptr=P["fp32"])
        yield fl._fp8_linear_kernel, sig, dict(BM=16, BN=32, BK=128, GROUP_M=1, SPLIT_K=split, ACT_FP8=act,
                                               DOT_T=tl.bfloat16, DOT_F32=False, WFMT=wfmt, DUAL=dual, EPI=epi,
                                               ROUND=rnd, NORM_IN=nrm, VAR=0, GEMV_STAGES=1), 4


def compile_all() -> int:
    n = 0
    for fn, sig, consts, warps, *stages in _cases():
        _compile(fn, sig, consts, warps, *stages)
        n += 1
    return n


@pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU tests run these kernels for real")
def test_glue_kernels_compile_for_sm90():
    assert compiled_count("test_glue_compile", "compile_all") >= 19
