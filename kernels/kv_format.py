"""The KV-cache storage formats: the one registry every layer reads.

A `KVFormat` names how the attention state stores its two kinds of rows:

* main entries (sliding-window ring rows and compressed entries): "dense" (the KV dtype, one element
  per dim) or "fp8" (the 584-byte FlashMLA "MODEL1" entry for V4, see kernels/ref/kv_fp8.py);
* CSA indexer keys: "dense", "fp8" (E4M3 + one fp32 scale, ci + 4 bytes) or "fp4" (Hadamard-rotated
  MXFP4, ci/2 + ci/32 bytes).

Readers: the CLI's --kv-cache-dtype choices (server/cli.py), EngineArgs.validate and
EngineArgs.kv_format (engine/config.py), the state specs (models/state.py, models/mtp.py), the size
planner (kvcache/sizing.py, whose per-row planning encodings `ENCODINGS` are defined here too) and the
pack/unpack code (kernels/ref/kv_fp8.py). Adding a format (e.g. NVFP4 entries) is one `KVFormat` row
here, its byte widths (and planning encoding) below, and its pack/unpack kernels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

FP8_QBLOCK = 64  # nope dims per UE8M0 scale byte of an FP8 main entry
FP4_QBLOCK = 32  # dims per UE8M0 scale byte of an MXFP4 indexer key


def entry_bytes(c: int, r: int) -> int:
    """Bytes of one FP8 main entry: FP8 nope dims + BF16 rope dims + one UE8M0 scale per 64 nope dims,
    padded to a multiple of 8 (584 for V4: c=512, r=64)."""
    nope = c - r
    raw = nope + 2 * r + math.ceil(nope / FP8_QBLOCK)
    return -(-raw // 8) * 8


def index_key_bytes(ci: int, fmt: str = "fp8") -> int:
    """Row bytes of a packed indexer key: "fp8" (E4M3 + fp32 scale) or "fp4" (MXFP4, rotated)."""
    if fmt == "fp8":
        return ci + 4
    if fmt == "fp4":
        if ci % FP4_QBLOCK:
            raise ValueError(f"MXFP4 indexer keys need index_head_dim % 32 == 0, got {ci}")
        return ci // 2 + ci // FP4_QBLOCK
    raise ValueError(f"unknown indexer key format {fmt!r}")


@dataclass(frozen=True)
class KVFormat:
    name: str  # the engine's kv_format ("bf16" = dense, the parity reference)
    cli: str  # its --kv-cache-dtype spelling ("auto" = dense in the activation dtype)
    entries: str  # main entries: "dense" | "fp8"
    index_keys: str  # CSA indexer keys: "dense" | "fp8" | "fp4"
    help: str  # one phrase for the CLI help and error messages

    @property
    def packed(self) -> bool:
        """True: main entries are uint8 rows (a packed format)."""
        return self.entries != "dense"

    def entry_width(self, c: int, r: int) -> int:
        """Last-dim width of a main-entry row: c elements (dense) or packed bytes."""
        return entry_bytes(c, r) if self.entries == "fp8" else c

    def index_key_width(self, ci: int) -> int:
        """Last-dim width of an indexer-key row: ci elements (dense) or packed bytes."""
        if self.index_keys == "fp4" and ci & (ci - 1):  # the Triton compressor's in-register Hadamard
            raise ValueError(f"kv_format {self.name!r} needs a power-of-two index_head_dim >= 32, got {ci}")
        return ci if self.index_keys == "dense" else index_key_bytes(ci, self.index_keys)


KV_FORMATS: dict[str, KVFormat] = {f.name: f for f in (
    KVFormat("bf16", "auto", "dense", "dense", "entries dense in the activation dtype"),
    KVFormat("fp8", "fp8", "fp8", "fp8", "584-byte FP8 entries (448 e4m3 + 64 bf16 rope) and FP8 indexer keys "
                                         "(132 B)"),
    KVFormat("fp8_fp4idx", "fp8_fp4idx", "fp8", "fp4", "the same FP8 entries with MXFP4 indexer keys (68 B, "
                                                       "3.5 KB/token on V4-Flash)"),
)}

CLI_CHOICES: tuple[str, ...] = tuple(f.cli for f in KV_FORMATS.values())  # --kv-cache-dtype values


def get(name: str | KVFormat) -> KVFormat:
    """The format of an engine kv_format name (or a KVFormat, returned as is)."""
    return name if isinstance(name, KVFormat) else _lookup(KV_FORMATS, name, "kv_format")


def from_cli(kv_cache_dtype: str) -> KVFormat:
    """The format of a --kv-cache-dtype value (its CLI spelling, or the engine name, e.g. "bf16")."""
    for f in KV_FORMATS.values():
        if kv_cache_dtype in (f.cli, f.name):
            return f
    raise ValueError(f"kv_cache_dtype must be one of {', '.join(CLI_CHOICES)} (bf16 = auto), got {kv_cache_dtype!r}")


def find(entries: str, index_keys: str) -> KVFormat | None:
    """The engine format storing (entries, index_keys) in these encodings, or None."""
    for f in KV_FORMATS.values():
        if (f.entries, f.index_keys) == (entries, index_keys):
            return f
    return None


def check_kernel_dims(fmt: str | KVFormat, head_dim: int, rope_dim: int, device) -> None:
    """ValueError when the kernels that run on `device` ("cpu" / "cuda" / a torch.device) cannot store
    `fmt`'s main entries for this head shape. The Triton kernels (CUDA) quantize an FP8 entry's nope
    dims (head_dim - rope_dim) in whole 64-dim scale blocks, so they need nope % 64 == 0 (V4: 448);
    the torch twins (CPU) take any width. Checked once when the engine is built."""
    f = get(fmt)
    device_type = getattr(device, "type", str(device).split(":")[0])
    nope = head_dim - rope_dim
    if f.entries == "fp8" and device_type == "cuda" and nope % FP8_QBLOCK:
        raise ValueError(f"kv_format {f.name!r} on CUDA (Triton kernels) needs head_dim - qk_rope_head_dim (the "
                         f"FP8 nope dims) to be a multiple of {FP8_QBLOCK}; this model has head_dim={head_dim}, "
                         f"qk_rope_head_dim={rope_dim} (nope {nope}): use kv_cache_dtype 'auto' for it")


# ---- row encodings for size planning (kvcache/sizing.py) -----------------------------------------
@dataclass(frozen=True)
class KVEntryFormat:
    name: str
    # bytes of one main KV entry (window or compressed) given (head_dim, rope_dim); None = not a main format
    main_entry_bytes: Callable[[int, int], int] | None
    # bytes of one CSA indexer key given index_head_dim
    indexer_key_bytes: Callable[[int], int]


ENCODINGS: dict[str, KVEntryFormat] = {  # planning names: "bf16" = dense rows in bf16 (2 bytes a dim)
    "bf16": KVEntryFormat("bf16", lambda c, r: 2 * c, lambda ci: 2 * ci),
    "fp8": KVEntryFormat("fp8", entry_bytes, lambda ci: index_key_bytes(ci, "fp8")),  # FP8 + fp32 scale (132 B)
    "fp4": KVEntryFormat("fp4", None, lambda ci: index_key_bytes(ci, "fp4")),  # MXFP4 + UE8M0 per 32 (68 B)
}


def get_encoding(fmt: str | KVEntryFormat) -> KVEntryFormat:
    """A planning encoding by name (or a custom KVEntryFormat, returned as is)."""
    return fmt if isinstance(fmt, KVEntryFormat) else _lookup(ENCODINGS, fmt, "KV entry format")


def _lookup(table: dict, name: str, kind: str):
    if name not in table:
        raise ValueError(f"unknown {kind} {name!r} (choose from {', '.join(table)})")
    return table[name]


def cli_help() -> str:
    return "KV entries: " + "; ".join(f"{f.cli} = {f.help}" for f in KV_FORMATS.values())
