"""Build a model on the target device and fill it from an official-format checkpoint."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from .config import ModelConfig
from .model import DeepseekV4

log = logging.getLogger(__name__)


def build_model(cfg: ModelConfig, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                include_mtp: bool = True, parallel=None) -> DeepseekV4:
    """Allocate an uninitialised model: parameters in `dtype` except the fp32 ones (hc_*, sinks, ape,
    router bias), built on the meta device first so nothing is allocated twice.

    `parallel` (models.parallel.ParallelContext): build only that rank's shard (tensor parallel)."""
    with torch.device("meta"):
        model = DeepseekV4(cfg, include_mtp=include_mtp, parallel=parallel)
    model = model.to_empty(device=device)
    keep = set(model.param_dtypes_fp32())
    for name, p in model.named_parameters():
        p.data = p.data.to(torch.float32 if name in keep else dtype)
    # rope tables are computed, not loaded: rebuild them on the real device
    from .layers import make_ropes
    model.rope_main, model.rope_compress = make_ropes(cfg)
    model.rope_main.to(device)
    model.rope_compress.to(device)
    model.eval()
    return model




def _wo_a_blocks_align(cfg) -> bool:
    """The grouped wo_a can stay FP8 when every group's rows and columns are whole 128x128 scale
    blocks (V4: 1024 x 4096 per group); otherwise it is dequantized at load."""
    per_group_in = cfg.num_attention_heads * cfg.head_dim // cfg.o_groups
    return cfg.o_lora_rank % 128 == 0 and per_group_in % 128 == 0


def make_resident(model: DeepseekV4, specs) -> set[str]:
    """Switch the modules whose checkpoint linears are FP8/MXFP4 to resident quantized storage.

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


def load_model(model_dir: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
               include_mtp: bool = True, resident_quant: bool | None = None) -> DeepseekV4:
    """Validate the checkpoint, then stream it shard by shard into a freshly built model.

    `resident_quant` (default: on for CUDA devices with a quantized checkpoint): FP8 linears and
    FP8/MXFP4 routed experts stay in their checkpoint formats on the device and run through the
    kernels' quantized paths; otherwise everything is dequantized to `dtype` at load (CPU path)."""
    from .checkpoint_spec import expected_tensors
    from .loader import iter_checkpoint, validate_checkpoint

    cfg = ModelConfig.from_json(model_dir)
    validate_checkpoint(model_dir, cfg, include_mtp=include_mtp)
    if resident_quant is None:
        resident_quant = torch.device(device).type == "cuda" and cfg.quantization is not None
    model = build_model(cfg, device, dtype, include_mtp=include_mtp)
    keep = None
    if resident_quant and cfg.quantization is not None:
        raw = make_resident(model, expected_tensors(cfg, quantized=True, include_mtp=include_mtp))
        keep = raw.__contains__
    with torch.no_grad():
        model.load_weights(iter_checkpoint(model_dir, cfg, dtype=dtype, device=device, include_mtp=include_mtp,
                                           keep_quantized=keep))
    n_bytes = weight_bytes(model)
    log.info("loaded %s: %d layers, %.3f GB (%d bytes) of resident weights on %s (%s%s)", model_dir,
             cfg.num_hidden_layers, n_bytes / 1e9, n_bytes, device, dtype, ", FP8/MXFP4 kept quantized" if keep is not None else "")
    return model
