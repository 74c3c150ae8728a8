"""Checkpoint validation and streaming load (safetensors, official DeepSeek-V4 layout).

`validate_checkpoint` reads only the safetensors headers (8-byte little-endian length + JSON) of
every shard, checks them against `expected_tensors(cfg, quantized)` and raises ONE `CheckpointError`
listing every problem (missing / unexpected tensors, wrong shape or dtype, unreadable or truncated
shards, an index naming absent files). `iter_checkpoint` then streams `(name, tensor)` shard by shard
with FP8/FP4 linears dequantized (their `.scale` tensors are consumed, never yielded). It does not
rename, shard across devices or build modules: the model side consumes the stream.
MTP tensors (`mtp.*`) are validated and streamed only with `include_mtp=True`.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from models.checkpoint_spec import ST_DTYPES, TensorSpec, expected_tensors, scale_name
from models.config import ModelConfig
from kernels.codecs import dequant_fp8_block, dequant_mxfp4

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
MAX_LISTED = 20  # problems named per kind in the error message
MISSING_MTP = "missing MTP tensors (asked for with include_mtp=True)"  # problem kind
_MAX_HEADER = 100 * 2**20  # refuse absurd header lengths (corrupt file) before reading them


class CheckpointError(ValueError):
    """The checkpoint files do not match the config; `problems` maps a kind to its messages."""

    def __init__(self, message: str, problems: dict[str, list[str]] | None = None):
        super().__init__(message)
        self.problems = problems or {}


@dataclass(frozen=True)
class TensorEntry:
    name: str  # checkpoint key
    shard: Path  # file that holds it
    dtype: str  # safetensors dtype string, e.g. "F8_E4M3"
    shape: tuple[int, ...]
    data_offsets: tuple[int, int]  # [begin, end) within the shard's data section


@dataclass(frozen=True)
class CheckpointIndex:
    """What a validated checkpoint holds (header metadata only; no tensor data)."""

    model_dir: Path
    cfg: ModelConfig  # the config validated against
    include_mtp: bool  # whether MTP tensors were expected (and will be yielded)
    shards: tuple[Path, ...]  # shard files in load order
    tensors: dict[str, TensorEntry]  # every tensor on disk, by name
    specs: dict[str, TensorSpec]  # expected_tensors(cfg, ...) (all present with matching shape/dtype)

    def names_in(self, shard: Path) -> list[str]:
        """Expected tensors stored in `shard`, in file order (skipped MTP tensors excluded)."""
        return [n for n, e in self.tensors.items() if e.shard == shard and n in self.specs]


def read_safetensors_header(path: Path) -> dict[str, TensorEntry]:
    """Parse one shard's header and check every tensor's byte range lies inside the file.

    Raises ValueError (with a human reason) for unreadable, corrupt or truncated files.
    """
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"file too short for a safetensors header ({size} bytes)")
        (n,) = struct.unpack("<Q", head)
        if n > min(size - 8, _MAX_HEADER):
            raise ValueError(f"header length {n} exceeds the file ({size} bytes): truncated or not safetensors")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"header is not valid JSON: {e}") from None
    data_len = size - 8 - n
    out: dict[str, TensorEntry] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = info["dtype"], tuple(int(s) for s in info["shape"]), info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"malformed header entry for {name!r}: {info!r}") from None
        if dtype not in ST_DTYPES:
            raise ValueError(f"tensor {name!r} has unsupported dtype {dtype}")
        numel = 1
        for s in shape:
            numel *= s
        want = numel * ST_DTYPES[dtype].itemsize
        if end - begin != want or begin < 0:
            raise ValueError(f"tensor {name!r} byte range [{begin}, {end}) does not match {dtype} {list(shape)}")
        if end > data_len:
            raise ValueError(f"truncated: tensor {name!r} ends at byte {end} but only {data_len} data bytes exist")
        out[name] = TensorEntry(name, path, dtype, shape, (begin, end))
    return out


def _find_shards(root: Path, problems: dict[str, list[str]]) -> list[Path]:
    """Shard files: from the index json if present, else model.safetensors, else every *.safetensors."""
    index = root / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            problems["unreadable shards"].append(f"{INDEX_FILE}: not a valid index ({e!r})")
            return []
        files: dict[str, int] = {}
        for f in weight_map.values():
            files[f] = files.get(f, 0) + 1
        shards = []
        for f, count in files.items():
            if (root / f).is_file():
                shards.append(root / f)
            else:
                problems["missing shard files"].append(f"{f} (named by {INDEX_FILE} for {count} tensors)")
        return shards
    if (root / SINGLE_FILE).is_file():
        return [root / SINGLE_FILE]
    shards = sorted(root.glob("*.safetensors"))
    if not shards:
        problems["missing shard files"].append(f"no *.safetensors files in {root}")
    return shards


def validate_checkpoint(
    model_dir: str | Path, cfg: ModelConfig | None = None, include_mtp: bool = False
) -> CheckpointIndex:
    """Check every shard header against the expected tensor list; raise one CheckpointError on mismatch.

    `cfg=None` reads `model_dir/config.json` (raising models.config.ConfigError if it is not V4).
    `include_mtp`: also require the MTP block(s) (`mtp.*`, for speculative decoding); without it MTP
    tensors on disk are ignored. Asked for but absent, they are listed under `MISSING_MTP`.
    """
    root = Path(model_dir)
    if cfg is None:
        cfg = ModelConfig.from_json(root)
    kinds = ("missing shard files", "unreadable shards", "missing tensors", MISSING_MTP, "unexpected tensors",
             "wrong shape", "wrong dtype", "duplicate tensors")
    problems: dict[str, list[str]] = {k: [] for k in kinds}
    shards = _find_shards(root, problems)
    found: dict[str, TensorEntry] = {}
    for shard in shards:
        try:
            entries = read_safetensors_header(shard)
        except (OSError, ValueError) as e:
            problems["unreadable shards"].append(f"{shard.name}: {e}")
            continue
        for name, entry in entries.items():
            if name in found:
                problems["duplicate tensors"].append(f"{name} in {found[name].shard.name} and {shard.name}")
            else:
                found[name] = entry
    specs = expected_tensors(cfg, quantized=cfg.quantization is not None, include_mtp=include_mtp)
    if include_mtp and cfg.num_nextn_predict_layers == 0:
        problems[MISSING_MTP].append("config.json declares num_nextn_predict_layers=0 (no MTP block)")
    for name, spec in specs.items():
        e = found.get(name)
        if e is None:
            problems[MISSING_MTP if _is_mtp(name) else "missing tensors"].append(name)
            continue
        if e.shape != spec.shape:
            problems["wrong shape"].append(f"{name}: expected {list(spec.shape)}, found {list(e.shape)}")
        if e.dtype != spec.st_dtype:
            problems["wrong dtype"].append(f"{name}: expected {spec.st_dtype}, found {e.dtype}")
    # With include_mtp=False, MTP tensors on disk are neither required nor loaded.
    problems["unexpected tensors"] = [n for n in found if n not in specs and (include_mtp or not _is_mtp(n))]
    if any(problems.values()):
        raise CheckpointError(_format_problems(root, cfg, problems), {k: v for k, v in problems.items() if v})
    return CheckpointIndex(root, cfg, include_mtp, tuple(shards), found, specs)


def _is_mtp(name: str) -> bool:
    return name.startswith("mtp.")


def _format_problems(root: Path, cfg: ModelConfig, problems: dict[str, list[str]]) -> str:
    quant = "FP8/" + cfg.expert_weight_format.upper() + " quantized" if cfg.quantization else "unquantized BF16"
    lines = [f"checkpoint {root} does not match its config ({cfg.num_hidden_layers} layers, "
             f"{cfg.num_nextn_predict_layers} MTP, {quant}):"]
    for kind, items in problems.items():
        if items:
            more = f" ... and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
            lines.append(f"  {kind} ({len(items)}): " + "; ".join(items[:MAX_LISTED]) + more)
    return "\n".join(lines)


def iter_checkpoint(
    model_dir: str | Path,
    cfg: ModelConfig | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    include_mtp: bool = False,
    keep_quantized=None,
) -> Iterator[tuple[str, torch.Tensor]]:
    """Validate, then yield `(name, tensor)` shard by shard (peak host memory ~ one tensor + its scale).

    Quantized linears come out dequantized to `dtype` in logical [out, in] shape; other floating
    tensors are cast to `dtype`, except F32 ones (hc_*, attn_sink, ape, gate.bias) which stay float32;
    integer tensors (tid2eid) are yielded as stored.

    `keep_quantized(name) -> bool` (optional): for the FP8/FP4 `.weight` tensors it accepts, yield the
    stored tensor as is (float8_e4m3fn / packed int8) followed by `(<prefix>.scale, uint8 UE8M0 bytes)`
    instead of dequantizing (resident quantized weights on the GPU).
    """
    index = validate_checkpoint(model_dir, cfg, include_mtp)
    for shard in index.shards:
        with safe_open(str(shard), framework="pt", device="cpu") as f:
            for name in index.names_in(shard):
                spec = index.specs[name]
                if spec.init == "scale":
                    continue  # consumed with its weight
                raw = spec.quant in ("fp8", "fp4") and keep_quantized is not None and keep_quantized(name)
                yield from emit_tensor(index, f, shard, name, name, dtype, device, raw)


def emit_tensor(index: CheckpointIndex, f, shard: Path, name: str, out: str, dtype: torch.dtype,
                device: str | torch.device, raw: bool) -> Iterator[tuple[str, torch.Tensor]]:
    """One checkpoint tensor as the model takes it, under the name `out`: raw quantized data followed
    by its `.scale` bytes (`raw`), dequantized to `dtype`, cast to `dtype` (F32 tensors stay F32), or
    as stored (integers)."""
    spec = index.specs[name]
    t = f.get_tensor(name)
    if raw:
        yield out, t.to(device)
        yield scale_name(out), _get_scale(index, f, shard, name).view(torch.uint8).to(device)
        return
    if spec.quant in ("fp8", "fp4"):
        t = _dequant(spec, t, _get_scale(index, f, shard, name), dtype)
    elif t.is_floating_point() and t.dtype != torch.float32:
        t = t.to(dtype)
    yield out, t.to(device)


def _get_scale(index: CheckpointIndex, f, shard: Path, weight_name: str) -> torch.Tensor:
    """The `.scale` companion, from the open shard or (rarely) another one."""
    sname = scale_name(weight_name)
    other = index.tensors[sname].shard
    if other == shard:
        return f.get_tensor(sname)
    with safe_open(str(other), framework="pt", device="cpu") as g:
        return g.get_tensor(sname)


def _dequant(spec: TensorSpec, w: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if spec.quant == "fp8":
        return dequant_fp8_block(w, scale, dtype=dtype)
    return dequant_mxfp4(w, scale, dtype=dtype)


def load_state_dict(
    model_dir: str | Path,
    cfg: ModelConfig | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    include_mtp: bool = False,
) -> dict[str, torch.Tensor]:
    """The whole checkpoint as one dict (tests and tiny models only)."""
    return dict(iter_checkpoint(model_dir, cfg, dtype, device, include_mtp))
