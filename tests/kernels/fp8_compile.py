"""Compile the block linear exactly as `fp8_linear.launch` would launch it, for sm_90, on a machine without a
GPU (meta tensors stand in for the operands; Triton's own binder specializes the arguments as at run time).
Run without TRITON_INTERPRET. Used by the shared-memory check and for reading registers / spills."""

from __future__ import annotations

import torch


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
