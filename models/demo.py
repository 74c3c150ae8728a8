"""The embedded demo model: a tiny V4-architecture checkpoint (random weights, real tokenizer with the
V4 special tokens) generated deterministically on first use into a cache directory, so that
`v4serve serve` with no model argument works on any CPU in seconds without downloads."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from .config import tiny_config
from .synthetic import write_synthetic_checkpoint

log = logging.getLogger(__name__)

DEMO_VERSION = "1"  # bump when the demo config or the synthetic writer changes
DEMO_SEED = 1234


def demo_config():
    # Flash-like schedule with small ratios so short chats cross compression boundaries.
    return tiny_config(compress_ratios=(0, 4, 16, 4), vocab_size=1024, index_topk=8, num_hash_layers=1,
                       max_position_embeddings=8192)


def demo_dir() -> Path:
    root = os.environ.get("V4SERVE_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "v4serve")
    return Path(root) / f"demo-model-v{DEMO_VERSION}"


def ensure_demo_model() -> Path:
    """Path of the demo checkpoint, writing it first if it is not there (atomic: temp dir + rename)."""
    target = demo_dir()
    if (target / "config.json").is_file() and (target / "model.safetensors.index.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".demo-", dir=target.parent))
    try:
        write_synthetic_checkpoint(demo_config(), tmp, seed=DEMO_SEED, quantize=False)
        try:
            tmp.rename(target)
        except OSError:  # another process won the race
            if not (target / "config.json").is_file():
                raise
        log.info("wrote the demo model to %s", target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
