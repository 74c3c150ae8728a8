"""Build a model on the target device and fill it from an official-format checkpoint."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from .config import ModelConfig
from .model import DeepseekV4

log = logging.getLogger(__name__)


def build_model(cfg: ModelConfig, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                include_mtp: bool = True) -> DeepseekV4:
    """Allocate an uninitialised model: parameters in `dtype` except the fp32 ones (hc_*, sinks, ape,
    router bias), built on the meta device first so nothing is allocated twice."""
    with torch.device("meta"):
        model = DeepseekV4(cfg, include_mtp=include_mtp)
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


def load_model(model_dir: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
               include_mtp: bool = True) -> DeepseekV4:
    """Validate the checkpoint, then stream it shard by shard into a freshly built model."""
    from .loader import iter_checkpoint, validate_checkpoint

    cfg = ModelConfig.from_json(model_dir)
    validate_checkpoint(model_dir, cfg, include_mtp=include_mtp)
    model = build_model(cfg, device, dtype, include_mtp=include_mtp)
    with torch.no_grad():
        model.load_weights(iter_checkpoint(model_dir, cfg, dtype=dtype, device=device, include_mtp=include_mtp))
    n_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    log.info("loaded %s: %d layers, %.2f GB of weights on %s (%s)", model_dir, cfg.num_hidden_layers,
             n_bytes / 1e9, device, dtype)
    return model
