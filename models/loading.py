"""Build a model on the target device and fill it from an official-format checkpoint.

Lean loading: the model is built on the meta device, every parameter gets its final dtype there
(compute dtype, fp32 for the F32 tensors, or the resident FP8 / MXFP4 storage of `make_resident`),
and only then is each tensor allocated once on the device (`materialize`). The checkpoint is then
streamed shard by shard, tensor by tensor, from host memory straight into the parameters (CPU:
FP8/MXFP4 dequantized one tensor at a time). Peak device memory while loading is the resident
weights plus at most one tensor in flight; `LoadStats` (on `model.load_stats`) records it.

MTP weights (`mtp.*`) are loaded only when asked for (`include_mtp=True`, speculative decoding).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import ModelConfig
from .model import DeepseekV4

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadStats:
    """What one load cost (attached to the model as `model.load_stats`)."""

    resident_bytes: int  # parameters + buffers of the loaded model (quantized storage incl. scales)
    seconds: float  # wall time from validation to the last tensor in place
    peak_device_bytes: int | None  # CUDA: torch.cuda.max_memory_allocated during the load minus what was
    #                                allocated before it; None on CPU (no allocator statistics)
    quantized_resident: bool  # FP8/MXFP4 tensors kept in their checkpoint formats

    @property
    def gb_per_s(self) -> float:
        """Load rate: resident bytes placed per second."""
        return self.resident_bytes / 1e9 / max(self.seconds, 1e-9)


def build_meta_model(cfg: ModelConfig, dtype: torch.dtype = torch.float32, include_mtp: bool = False,
                     parallel=None) -> DeepseekV4:
    """The model on the meta device (no memory) with every parameter in its final dtype: `dtype`
    except the F32 ones (hc_*, sinks, ape, router bias). `make_resident` may then switch modules to
    quantized storage, still on meta; `materialize` allocates.

    `parallel` (models.parallel.ParallelContext): only that rank's shard (tensor parallel)."""
    with torch.device("meta"):
        model = DeepseekV4(cfg, include_mtp=include_mtp, parallel=parallel)
    keep = set(model.param_dtypes_fp32())
    for name, p in model.named_parameters():
        p.data = p.data.to(torch.float32 if name in keep else dtype)  # meta: no allocation
    return model


def materialize(model: DeepseekV4, device: torch.device | str) -> DeepseekV4:
    """Allocate every parameter and buffer of a meta model once, uninitialised, on `device` (the
    checkpoint fills them); the rope tables are computed, not loaded, so they are rebuilt there."""
    from torch import nn

    from .layers import make_ropes

    done: dict[int, torch.Tensor] = {}  # shared tensors stay shared

    def alloc(t: torch.Tensor, param: bool) -> torch.Tensor:
        if id(t) not in done:  # torch.empty, not empty_like: a meta input would route through torch._refs
            new = torch.empty(t.shape, dtype=t.dtype, device=device)
            done[id(t)] = nn.Parameter(new, requires_grad=t.requires_grad) if param else new
        return done[id(t)]

    for mod in model.modules():
        for name, p in mod._parameters.items():
            if p is not None:
                mod._parameters[name] = alloc(p, True)
        for name, b in mod._buffers.items():
            if b is not None:
                mod._buffers[name] = alloc(b, False)
    model.rope_main, model.rope_compress = make_ropes(model.cfg)
    model.rope_main.to(device)
    model.rope_compress.to(device)
    return model.eval()


def build_model(cfg: ModelConfig, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                include_mtp: bool = False, parallel=None) -> DeepseekV4:
    """An uninitialised model (float storage) on `device`: build_meta_model + materialize."""
    return materialize(build_meta_model(cfg, dtype, include_mtp, parallel), device)


def _wo_a_blocks_align(cfg) -> bool:
    """The grouped wo_a can stay FP8 when every group's rows and columns are whole 128x128 scale
    blocks (V4: 1024 x 4096 per group); otherwise it is dequantized at load."""
    per_group_in = cfg.num_attention_heads * cfg.head_dim // cfg.o_groups
    return cfg.o_lora_rank % 128 == 0 and per_group_in % 128 == 0


def make_resident(model: DeepseekV4, specs) -> set[str]:
    """Switch the modules whose checkpoint linears are FP8/MXFP4 to resident quantized storage (call
    it on the meta model, before `materialize`, so no float copy is ever allocated).

    Returns the checkpoint `.weight` names that must be streamed raw (with their `.scale`)."""
    from .layers import Linear
    from .moe import MoE

    raw: set[str] = set()
    modules = dict(model.named_modules())
    for name, spec in specs.items():
        if spec.quant not in ("fp8", "fp4"):
            continue
        if name.endswith(".attn.wo_a.weight") and not _wo_a_blocks_align(model.cfg):
            continue
        prefix = name[: -len(".weight")]
        mod = modules.get(prefix)
        if isinstance(mod, Linear) and spec.quant == "fp8" and not mod.fp32:
            mod.make_fp8_resident()
            raw.add(name)
    for name, mod in modules.items():
        if isinstance(mod, MoE):
            fmts = {specs[f"{name}.experts.{e}.{w}.weight"].quant for e in range(mod.experts_w1.shape[0])
                    for w in ("w1", "w2", "w3") if f"{name}.experts.{e}.{w}.weight" in specs}
            if len(fmts) == 1 and (fmt := fmts.pop()) in ("fp8", "fp4"):
                mod.make_resident(fmt)
                raw.update(f"{name}.experts.{e}.{w}.weight" for e in range(mod.experts_w1.shape[0])
                           for w in ("w1", "w2", "w3"))
    return raw


def weight_bytes(model: DeepseekV4) -> int:
    """Bytes of all parameters and buffers (resident weights incl. scales)."""
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))


class _DevicePeak:
    """Peak allocated device memory over a region, relative to what was allocated at its start (CUDA;
    resets the device's peak statistics)."""

    def __init__(self, device: torch.device):
        self.device = device if device.type == "cuda" else None
        if self.device is not None:
            torch.cuda.synchronize(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak(self) -> int | None:
        if self.device is None:
            return None
        torch.cuda.synchronize(self.device)
        return torch.cuda.max_memory_allocated(self.device) - self.base


def resident_default(device: torch.device | str, cfg: ModelConfig, resident_quant: bool | None) -> bool:
    """Keep FP8/MXFP4 tensors quantized: explicit choice, else on for CUDA with a quantized checkpoint."""
    if cfg.quantization is None:
        return False
    return torch.device(device).type == "cuda" if resident_quant is None else resident_quant


def stream_into(model: DeepseekV4, stream_fn, device: torch.device | str, raw_specs, model_dir,
                   t0: float) -> DeepseekV4:
    """Shared tail of load_model / load_model_sharded: decide resident storage on the meta model
    (`raw_specs`: checkpoint specs that may stay quantized, or None), allocate once, stream
    `stream_fn(keep_quantized)` into place, log and attach `LoadStats`."""
    dev = torch.device(device)
    peak = _DevicePeak(dev)
    keep = None
    if raw_specs is not None:
        keep = make_resident(model, raw_specs).__contains__
    model = materialize(model, dev)
    with torch.no_grad():
        model.load_weights(stream_fn(keep))
    stats = LoadStats(weight_bytes(model), time.perf_counter() - t0, peak.peak(), keep is not None)
    model.load_stats = stats
    peak_txt = "" if stats.peak_device_bytes is None else (
        f"; peak device memory while loading {stats.peak_device_bytes / 2**30:.2f} GiB "
        f"(resident + {(stats.peak_device_bytes - stats.resident_bytes) / 2**30:.2f} GiB)")
    log.info("loaded %s%s: %d layers, %.3f GB (%d bytes) of resident weights on %s%s in %.1f s (%.2f GB/s)%s",
             model_dir, "" if not model.tp.enabled else f" (rank {model.tp.rank}/{model.tp.world_size})",
             model.cfg.num_hidden_layers, stats.resident_bytes / 1e9, stats.resident_bytes, dev,
             ", FP8/MXFP4 kept quantized" if keep is not None else "", stats.seconds, stats.gb_per_s, peak_txt)
    return model


def load_model(model_dir: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
               include_mtp: bool = False, resident_quant: bool | None = None) -> DeepseekV4:
    """Validate the checkpoint, then stream it shard by shard into a model allocated once in its
    final storage (see the module docstring).

    `resident_quant` (default: on for CUDA devices with a quantized checkpoint): FP8 linears and
    FP8/MXFP4 routed experts stay in their checkpoint formats on the device and run through the
    kernels' quantized paths; otherwise everything is dequantized to `dtype` at load (CPU path).
    `include_mtp`: also load the MTP block(s); a checkpoint without them is a CheckpointError."""
    from .loader import iter_checkpoint, validate_checkpoint

    t0 = time.perf_counter()
    cfg = ModelConfig.from_json(model_dir)
    index = validate_checkpoint(model_dir, cfg, include_mtp=include_mtp)
    model = build_meta_model(cfg, dtype, include_mtp)
    raw_specs = index.specs if resident_default(device, cfg, resident_quant) else None

    def stream(keep):  # host tensors: load_weights copies each straight into its device parameter
        return iter_checkpoint(model_dir, cfg, dtype=dtype, device="cpu", include_mtp=include_mtp,
                               keep_quantized=keep)

    return stream_into(model, stream, device, raw_specs, model_dir, t0)

