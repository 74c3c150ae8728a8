"""Compile Triton kernels for sm_90 on a machine without a GPU (Triton frontend + the bundled ptxas).

`compile_sm90` compiles one kernel from an explicit signature / constexprs (the *_compile tests);
`compile_launch` compiles the block linear exactly as `fp8_linear.launch` would launch it (meta tensors stand
in for the operands; Triton's own binder specializes the arguments as at run time), used by the shared-memory
check and for reading registers / spills. All of it runs without TRITON_INTERPRET: the tests call
`run_without_interpreter`, which runs their code in a subprocess with TRITON_INTERPRET removed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def run_without_interpreter(code: str, timeout: int = 600) -> str:
    """Run `code` with this Python in a subprocess at the repository root, TRITON_INTERPRET removed from its
    environment; -> its stdout. Skips the calling test if this Triton install has no ptxas; fails it (with
    the tail of stderr) on any other error."""
    import pytest
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=timeout)
    if p.returncode and "ptxas" in p.stderr and "not found" in p.stderr.lower():
        pytest.skip("no ptxas in this Triton install")
    assert p.returncode == 0, p.stderr[-3000:]
    return p.stdout


def compiled_count(module: str, func: str) -> int:
    """Run tests.kernels.<module>.<func>() (compiles kernels, returns how many) without TRITON_INTERPRET
    (run_without_interpreter); -> that count."""
    out = run_without_interpreter(f"from tests.kernels.{module} import {func}; print('COMPILED', {func}())")
    return int(out.split("COMPILED")[-1])


def compile_sm90(fn, sig: dict, consts: dict, attrs: dict | None = None, **options):
    """-> triton.compile of the JIT function `fn` for sm_90: `sig` maps the runtime arguments to Triton types,
    `consts` the constexpr arguments to values, `attrs` ((arg index,) -> attributes, e.g. tt.divisibility)
    as in ASTSource; `options` (num_warps, num_stages, maxnreg, ...) go to the compiler."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    full = dict(sig)
    full.update({k: "constexpr" for k in consts})
    src = ASTSource(fn=fn, signature=full, constexprs={(fn.arg_names.index(k),): v for k, v in consts.items()},
                    attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options)


def resource_usage(kernel) -> dict:
    """Registers / local-memory (spill) bytes / shared bytes of a kernel compiled with compile_sm90, read from its
    cubin with the cuobjdump bundled with Triton (no GPU): {"REG": n, "LOCAL": bytes, "STACK": bytes, ...}."""
    import os
    import re
    import subprocess
    import tempfile

    import triton
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        out = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True, check=True).stdout
    return {k: int(v) for k, v in re.findall(r"([A-Z]+):(\d+)", out)}


def compile_launch(x, w, y, **launch_kw):
    """-> the compiled kernel (metadata.shared; asm["ptx"] / ["ttgir"]) of launch(x, w, y, **launch_kw) for
    sm_90. (Always the full pipeline: a truncated compile would sit in Triton's cache under the full key.)"""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    from kernels.triton import fp8_linear as fl
    grid, args, kw = fl.launch(x, w, y, dry_run=True, **launch_kw)
    fn = fl._fp8_linear_kernel
    target = GPUTarget("cuda", 90, 32)
    backend = make_backend(target)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, spec, options = binder(*args, **kw)
    options, signature, constexprs, attrs = fn._pack_args(backend, kw, bound, spec, options)
    src = ASTSource(fn, signature, constexprs, attrs)
    return triton.compile(src, target=target, options=options.__dict__)


def meta_operands(m, n, k, x_dtype=torch.bfloat16, w_dtype="fp8", groups=1, dual=False, y_dtype=None):
    """Meta-device x [m, groups*k], weight(s) [groups*n, k], y [m, groups*n] for compile_launch."""
    from kernels.quant_weight import QuantWeight
    dev = "meta"
    x = torch.empty(m, groups * k, dtype=x_dtype, device=dev)
    y = torch.empty(m, groups * n, dtype=y_dtype or x_dtype, device=dev)

    def weight():
        if w_dtype == "fp8":
            return QuantWeight(torch.empty(groups * n, k, dtype=torch.float8_e4m3fn, device=dev),
                               torch.empty((groups * n + 127) // 128, (k + 127) // 128, dtype=torch.uint8,
                                           device=dev), "fp8")
        return torch.empty(groups * n, k, dtype=w_dtype, device=dev)
    return x, weight(), (weight() if dual else None), y


# ---- every launch of the V4-Flash shapes x paths (tests/kernels/test_fp8_linear_smem.py) ---------------
FLASH = {"wq_a": (1024, 4096), "wq_b": (32768, 1024), "wkv": (512, 4096), "wo_b": (4096, 8192),
         "idx_wq_b": (8192, 1024), "shared_w13": (2048, 4096), "shared_w2": (4096, 2048), "mtp_proj": (4096, 4096)}
ROWS = (1, 16, 64, 200, 4096)


def _cases():
    """(label, launch kwargs builder) for every path at the V4-Flash shapes and decode / prefill row counts."""
    bf, f32 = torch.bfloat16, torch.float32
    for m in ROWS:
        for name, (n, k) in FLASH.items():
            x, w, _, y = meta_operands(m, n, k)
            yield f"linear {name} m{m}", (x, w, y), {}
        x, w, _, y = meta_operands(m, 32768, 1024)
        yield f"norm_linear wq_b m{m}", (x, w, y), dict(norm_weight=torch.empty(1024, dtype=bf, device="meta"),
                                                         norm_eps=1e-6)
        x, w, _, y = meta_operands(m, 1024, 4096, groups=8)
        yield f"grouped wo_a m{m}", (x, w, y), dict(groups=8, x_gs=4096, w_gs=1024, y_gs=1024)
        x, w, w3, y = meta_operands(m, 2048, 4096, dual=True)
        yield f"swiglu shared_w13 m{m}", (x, w, y), dict(w2=w3, epi=1, round_out=True, limit=10.0)
        x, wkv, wg, kv = meta_operands(m, 1024, 4096, w_dtype=bf, dual=True, y_dtype=f32)
        yield f"compressor bf16 m{m}", (x, wkv, kv), dict(
            w2=wg, y2=torch.empty_like(kv), epi=2, tab=torch.empty(4, 1024, dtype=f32, device="meta"),
            idx=torch.empty(m, dtype=torch.int64, device="meta"))
        x, wg, _, yg = meta_operands(m, 256, 4096, w_dtype=bf, y_dtype=f32)
        yield f"router fp32-out m{m}", (x, wg, yg), {}
        x, w, _, y = meta_operands(m, 4096, 4096)
        yield f"act_quant mtp_proj m{m}", (x, w, y), dict(act_quant=True)
    # decode variants forced on every path (swap / GEMV, K steps 128..1024, L2 prefetch, PDL)
    variants = [dict(BM=16, BN=64, BK=128, GROUP_M=1, num_warps=4, num_stages=4, SPLIT_K=2, VAR=1),
                dict(BM=16, BN=64, BK=256, GROUP_M=1, num_warps=4, num_stages=3, SPLIT_K=1, VAR=1, PREFETCH=8),
                dict(BM=64, BN=128, BK=128, GROUP_M=1, num_warps=4, num_stages=3, SPLIT_K=2, VAR=1, PDL=True),
                dict(BM=1, BN=32, BK=128, GROUP_M=1, num_warps=4, num_stages=3, SPLIT_K=1, VAR=2),
                dict(BM=1, BN=8, BK=512, GROUP_M=1, num_warps=4, num_stages=3, SPLIT_K=2, VAR=2, PREFETCH=8,
                     PDL=True)]
    for i, c in enumerate(variants):
        m = c["BM"]
        x, w, _, y = meta_operands(m, 4096, 4096)
        yield f"variant{i} linear", (x, w, y), dict(config=c)
        x, w, _, y = meta_operands(m, 1024, 4096, groups=8)
        yield f"variant{i} grouped", (x, w, y), dict(groups=8, x_gs=4096, w_gs=1024, y_gs=1024, config=c)
        x, w, w3, y = meta_operands(m, 2048, 4096, dual=True)
        yield f"variant{i} swiglu", (x, w, y), dict(w2=w3, epi=1, round_out=True, limit=10.0, config=c)
        x, w, _, y = meta_operands(m, 32768, 1024)
        yield f"variant{i} norm_linear", (x, w, y), dict(norm_weight=torch.empty(1024, dtype=bf, device="meta"),
                                                          norm_eps=1e-6, config=c)
        x, wkv, wg, kv = meta_operands(m, 1024, 4096, w_dtype=bf, dual=True, y_dtype=f32)
        yield f"variant{i} compressor", (x, wkv, kv), dict(
            w2=wg, y2=torch.empty_like(kv), epi=2, tab=torch.empty(4, 1024, dtype=f32, device="meta"),
            idx=torch.empty(m, dtype=torch.int64, device="meta"), config=c)
    # fp32 activations (the fp32 model of the tests): the launch that asked for 247,296 B
    x, w, _, y = meta_operands(200, 256, 32, x_dtype=f32)
    yield "norm_linear fp32 m200", (x, w, y), dict(norm_weight=torch.empty(32, dtype=f32, device="meta"),
                                                   norm_eps=1e-6)


def _compile_one(item):
    label, (x, w, y), kw = item
    k = compile_launch(x, w, y, **kw)
    return label, k.metadata.shared


def compiled_shared() -> list:
    """[(label, shared bytes)] of every distinct launch of _cases (deduplicated by kernel signature)."""
    from concurrent.futures import ProcessPoolExecutor

    from kernels.triton import fp8_linear as fl
    seen, todo = set(), []
    for label, ops, kw in _cases():
        grid, args, kkw = fl.launch(*ops, dry_run=True, **kw)
        key = (tuple(kkw.items()), tuple(getattr(a, "dtype", None) for a in args[:11]))
        if key not in seen:
            seen.add(key)
            todo.append((label, ops, kw))
    with ProcessPoolExecutor(max(1, min(4, os.cpu_count() or 1))) as ex:
        return list(ex.map(_compile_one, todo))
