"""Tensor-parallel checkpoint loading: every rank reads only its slices (issue 7).

`iter_checkpoint_sharded(model_dir, cfg, ctx, ...)` is models/loader.iter_checkpoint for rank
`ctx.rank` of `ctx.world_size`: the same validation and the same output conventions (dequantized
float linears, F32 tensors kept F32, optional raw FP8/FP4 + UE8M0 scale pairs), but each tensor is
read through `safe_open(...).get_slice(...)` restricted to what `models.parallel.shard_checkpoint_tensor`
assigns to the rank: head / group / indexer-head / vocabulary slices, only the rank's routed experts
(renamed to local indices), the shared expert on rank 0 only. Quantized slices are read block-aligned
(FP8 128x128 tiles, MXFP4 1x32 blocks) with their scale tiles, dequantized, then trimmed; raw
(resident) slices must be tile-aligned (`raw_slice_ok`).

`load_model_sharded` builds the rank's model on the meta device (models.loading.build_meta_model with the
context), allocates it once in its final storage and streams the rank's slices into it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open

from models.checkpoint_spec import FP4_BLOCK, FP8_BLOCK, TensorSpec, scale_name
from models.config import ModelConfig
from models.loader import emit_tensor, validate_checkpoint
from models.parallel import ParallelContext, TensorShard, check_divisibility, shard_checkpoint_tensor
from kernels.codecs import dequant_fp8_block, dequant_mxfp4


def _block(spec: TensorSpec, dim: int) -> int:
    """Logical elements per scale tile along `dim` (1: no tiling)."""
    if spec.quant == "fp8":
        return FP8_BLOCK
    if spec.quant == "fp4":
        return FP4_BLOCK if dim == 1 else 1
    return 1


def raw_slice_ok(spec: TensorSpec, sh: TensorShard) -> bool:
    """Whether a quantized tensor's slice can stay in its stored format (starts and ends on tiles)."""
    if sh.action != "slice" or spec.quant not in ("fp8", "fp4") or sh.pad_to is not None:
        return sh.action != "slice" or spec.quant not in ("fp8", "fp4")
    b = _block(spec, sh.dim)
    size = spec.logical_shape[sh.dim]
    return sh.start % b == 0 and (sh.end % b == 0 or sh.end == size)


def _read(f, name: str, dim: int, a: int, b: int) -> torch.Tensor:
    sl = f.get_slice(name)
    return sl[a:b] if dim == 0 else sl[:, a:b]


class _Opener:
    """safe_open handles of the shards, opened on demand (scales may live in another shard) and
    closed together (each maps its whole file)."""

    def __init__(self):
        self.files: dict[Path, object] = {}
        self._ctx = []

    def get(self, path: Path):
        if path not in self.files:
            cm = safe_open(str(path), framework="pt", device="cpu")
            self.files[path] = cm.__enter__()
            self._ctx.append(cm)
        return self.files[path]

    def close(self):
        for cm in self._ctx:
            cm.__exit__(None, None, None)
        self.files.clear()
        self._ctx.clear()


def _sliced(index, op: _Opener, name: str, spec: TensorSpec, sh: TensorShard, dtype, raw: bool):
    """-> [(name, tensor)] for one sliced tensor (weight, + scale if raw)."""
    f = op.get(index.tensors[name].shard)
    if spec.quant not in ("fp8", "fp4"):
        t = _read(f, name, sh.dim, sh.start, sh.end)
        if t.is_floating_point() and t.dtype != torch.float32:
            t = t.to(dtype)
        if sh.pad_to is not None and t.shape[0] < sh.pad_to:
            t = torch.cat([t, t.new_zeros((sh.pad_to - t.shape[0], *t.shape[1:]))])
        return [(name, t)]
    blk = _block(spec, sh.dim)
    size = spec.logical_shape[sh.dim]
    a0, a1 = sh.start // blk * blk, min(size, -(-sh.end // blk) * blk)
    pack = 2 if (spec.quant == "fp4" and sh.dim == 1) else 1  # two FP4 nibbles per byte along K
    w = _read(f, name, sh.dim, a0 // pack, a1 // pack)
    sname = scale_name(name)
    g = op.get(index.tensors[sname].shard)
    s = _read(g, sname, sh.dim, a0 // blk, -(-a1 // blk))
    if raw:
        assert (a0, a1) == (sh.start, sh.end), f"{name}: raw slice not tile-aligned"
        return [(name, w), (sname, s.view(torch.uint8))]
    t = dequant_fp8_block(w, s, dtype=dtype) if spec.quant == "fp8" else dequant_mxfp4(w, s, dtype=dtype)
    lo, hi = sh.start - a0, sh.end - a0
    t = t[lo:hi] if sh.dim == 0 else t[:, lo:hi]
    return [(name, t.contiguous())]


def iter_checkpoint_sharded(
    model_dir: str | Path,
    cfg: ModelConfig | None,
    ctx: ParallelContext,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    include_mtp: bool = False,
    keep_quantized=None,
) -> Iterator[tuple[str, torch.Tensor]]:
    """Validate, then yield this rank's `(name, tensor)` pairs (see the module docstring)."""
    index = validate_checkpoint(model_dir, cfg, include_mtp)
    cfg = index.cfg
    op = _Opener()
    try:
        for shard in index.shards:
            f = op.get(shard)
            for name in index.names_in(shard):
                spec = index.specs[name]
                if spec.init == "scale":
                    continue  # consumed with its weight
                sh = shard_checkpoint_tensor(name, cfg, ctx)
                if sh.action == "skip":
                    continue
                out = sh.rename or name
                raw = spec.quant in ("fp8", "fp4") and keep_quantized is not None and keep_quantized(out)
                if sh.action == "slice":
                    for n, t in _sliced(index, op, name, spec, sh, dtype, raw):
                        yield (scale_name(out) if n.endswith(".scale") else out), t.to(device)
                    continue
                yield from emit_tensor(index, f, shard, name, out, dtype, device, raw)
            op.close()  # one shard (file mapping) open at a time
    finally:
        op.close()


def load_model_sharded(model_dir: str | Path, ctx: ParallelContext, device: torch.device | str = "cpu",
                       dtype: torch.dtype = torch.float32, include_mtp: bool = False,
                       resident_quant: bool | None = None):
    """Rank ctx.rank's shard of the model, filled from the official checkpoint (its slices only),
    with the lean loading of models.loading (meta build, resident storage decided before allocation,
    host slices copied straight into place)."""
    import time

    from models.loading import build_meta_model, resident_default, stream_into

    t0 = time.perf_counter()
    cfg = ModelConfig.from_json(model_dir)
    check_divisibility(cfg, ctx.world_size)
    index = validate_checkpoint(model_dir, cfg, include_mtp=include_mtp)
    model = build_meta_model(cfg, dtype, include_mtp=include_mtp, parallel=ctx)
    raw_specs = None
    if resident_default(device, cfg, resident_quant):  # only tile-aligned slices can stay quantized
        raw_specs = {n: s for n, s in index.specs.items() if raw_slice_ok(s, shard_checkpoint_tensor(n, cfg, ctx))}

    def stream(keep):
        return iter_checkpoint_sharded(model_dir, cfg, ctx, dtype=dtype, device="cpu", include_mtp=include_mtp,
                                       keep_quantized=keep)

    return stream_into(model, stream, device, raw_specs, model_dir, t0)
