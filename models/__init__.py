"""DeepSeek-V4 model core: config, modules, checkpoint loading, synthetic checkpoints."""

from __future__ import annotations

from .config import ConfigError, ModelConfig, flash_config, pro_config, tiny_config
from .loading import build_model, load_model

__all__ = ["ConfigError", "ModelConfig", "build_model", "load_model", "flash_config", "pro_config", "tiny_config"]
