"""Shared by the kernel tests: import Triton modules so that they run in the CPU interpreter.

Test modules set TRITON_INTERPRET=1 at import time when no GPU is present; kernels/ imports its
Triton modules lazily, but if something jitted them earlier without the interpreter they are
reloaded here."""

from __future__ import annotations

import importlib
import os


def interp_modules(*names):
    """Import kernels.triton.<names> with the interpreter active (reload if jitted without it)."""
    mods = []
    common = importlib.import_module("kernels.triton.common")
    for n in names:
        m = importlib.import_module(f"kernels.triton.{n}")
        if os.environ.get("TRITON_INTERPRET") == "1":
            jit_objs = [v for v in vars(m).values() if type(v).__name__ in ("JITFunction", "InterpretedFunction")]
            if any(type(v).__name__ == "JITFunction" for v in jit_objs):
                importlib.reload(common)
                m = importlib.reload(m)
        mods.append(m)
    return mods
