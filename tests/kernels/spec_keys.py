"""Triton's specialization key of every launch, recorded on CPU under the interpreter.

On the GPU a kernel is compiled once per distinct key: the argument types, each non-constexpr integer's
"== 1" / "divisible by 16" attribute, each pointer's 16-byte alignment, and the constexpr values. A key that
depends on a step's sizes or offsets (a token count that is sometimes a multiple of 16, a metadata slice
that starts at an odd element) makes a serving engine compile new variants, seconds each, while requests
wait: session 12 found 80 such compiles in one server run. The interpreter compiles nothing, but the key
is computed here exactly as `JITFunction` computes it (`native_specialize_impl`, honouring the kernel's
`do_not_specialize` / `do_not_specialize_on_alignment`), so a CPU test can require that a kernel's key
depends on its call site only:

    with SpecKeys() as sk:
        run_steps()
    sk.unstable()  # {kernel: {arg: sorted attribute values}} for args whose attribute varied
"""

from __future__ import annotations

import inspect
from collections import defaultdict


def _key(fn, kwargs: dict, args: tuple, call_kwargs: dict) -> tuple:
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.compiler import BaseBackend

    params = list(inspect.signature(fn).parameters.values())
    bound = dict(zip([p.name for p in params], args))
    bound.update({k: v for k, v in call_kwargs.items() if k in {p.name for p in params}})
    dns, dna = kwargs.get("do_not_specialize") or (), kwargs.get("do_not_specialize_on_alignment") or ()
    out = []
    for i, p in enumerate(params):
        if p.name not in bound:
            v = p.default
        else:
            v = bound[p.name]
        ann = str(p.annotation)
        if "constexpr" in ann:
            out.append((p.name, "constexpr", v))
            continue
        spec = not (p.name in dns or i in dns)
        align = not (p.name in dna or i in dna)
        ty, attr = native_specialize_impl(BaseBackend, v, False, spec, align)
        if ty == "constexpr":  # an integer argument equal to 1 becomes a constant: one more variant
            ty, attr = "i32", "==1"
        out.append((p.name, ty, attr))
    return tuple(out)


class SpecKeys:
    """Records (kernel name -> set of keys) for every interpreted launch inside the `with`."""

    def __init__(self) -> None:
        self.keys: dict[str, set] = defaultdict(set)

    def __enter__(self) -> "SpecKeys":
        from triton.runtime.interpreter import InterpretedFunction
        self._orig = InterpretedFunction.run
        orig, keys = self._orig, self.keys
        depth = [0]

        def run(itp, *args, grid, warmup, **kw):
            if not depth[0]:
                keys[f"{itp.fn.__module__}.{itp.fn.__name__}"].add(_key(itp.fn, itp.kwargs, args, kw))
            depth[0] += 1
            try:
                return orig(itp, *args, grid=grid, warmup=warmup, **kw)
            finally:
                depth[0] -= 1

        InterpretedFunction.run = run
        return self

    def __exit__(self, *exc) -> None:
        from triton.runtime.interpreter import InterpretedFunction
        InterpretedFunction.run = self._orig

    def unstable(self) -> dict[str, dict[str, list]]:
        """Per kernel, the arguments whose attribute (divisibility / alignment / == 1) took more than one value
        among launches that agree on every type and constexpr (one call site's launches)."""
        out: dict[str, dict[str, list]] = {}
        for name, keys in self.keys.items():
            sites = defaultdict(list)
            for k in keys:
                sites[tuple((n, ty, a if ty == "constexpr" else None) for n, ty, a in k)].append(k)
            for site, ks in sites.items():
                for i, (n, ty, _) in enumerate(site):
                    if ty == "constexpr":
                        continue
                    vals = {str(k[i][2]) for k in ks}
                    if len(vals) > 1:
                        out.setdefault(name, {})[n] = sorted(vals)
        return out
