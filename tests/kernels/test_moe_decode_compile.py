"""The swapped-operand MXFP4 MoE decode kernel compiles for sm_90 in every shipped config (Triton frontend +
the bundled ptxas, no GPU needed): catches what the interpreter cannot (dot operand layouts, the packed
PTX conversion, register-A MMA). Runs in a subprocess without TRITON_INTERPRET; this module does not set
it at import (tests/kernels/test_moe_decode.py does)."""

from __future__ import annotations

import pytest
import torch

from tests.kernels.fp8_compile import compile_sm90, compiled_count


def compile_decode_kernels() -> int:
    """Compile both launches of every shipped decode_config, the fallback conversion and a register-capped
    bench tile for sm_90 (no GPU), with the 16-byte divisibility the launcher's arguments get at run time."""
    import kernels.triton.moe_decode as md
    fn = md._moe_swap_kernel
    ptrs = dict(a_ptr="*bf16", b_ptr="*i8", b2_ptr="*i8", bs_ptr="*u8", b2s_ptr="*u8", out_ptr="*bf16",
                rw_ptr="*fp32", sorted_ptr="*i32", eids_ptr="*i32", npad_ptr="*i32", ids_ptr="*i32",
                zero_ptr="*fp32")
    ints = ("N", "K", "P", "stride_am", "stride_be", "stride_bn", "stride_se", "stride_sn", "stride_om", "ZERO_PER",
            "ZERO_N")
    n = 0
    cases = [(md.decode_config(p), True) for p in (6, 384)]
    cases.append((dict(BT=16, BN=128, BK=128, num_warps=4, num_stages=3, ALIGNED=True), True))  # wgmma tile
    cases += [(md.decode_config(384), False),  # scale bytes > 128: the fallback conversion
              (dict(md.decode_config(384), num_stages=3, maxnreg=168), True)]  # a register-capped bench tile
    for cfg, use_asm in cases:
        for gate_up in (True, False):
            sig = dict(ptrs, limit="fp32", **{k: "i32" for k in ints})
            if not gate_up:
                sig["out_ptr"] = "*fp32"
            consts = dict(A_DIV=6 if gate_up else 1, OUT_DIV=1 if gate_up else 6, GATE_UP=gate_up,
                          ALIGNED=cfg["ALIGNED"], BT=cfg["BT"], BN=cfg["BN"], BK=cfg["BK"], USE_ASM=use_asm,
                          DOT_F32=False, ZERO=gate_up, SEQ=cfg.get("SEQ", False))
            div = [i for i, a in enumerate(fn.arg_names) if a in sig and a not in ("P", "limit", "ZERO_PER", "ZERO_N")]
            k = compile_sm90(fn, {a: sig[a] for a in fn.arg_names if a not in consts}, consts, {(i,): [["tt.divisibility", 16]] for i in div},
                             num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
                             **({"maxnreg": cfg["maxnreg"]} if "maxnreg" in cfg else {}))
            assert k.asm["cubin"] and ("mul.rn.bf16x2" in k.asm["ptx"]) == use_asm
            n += 1
    return n


@pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU tests run these kernels for real")
def test_moe_decode_compiles_for_sm90():
    assert compiled_count("test_moe_decode_compile", "compile_decode_kernels") == 10
