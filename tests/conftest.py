"""Shared fixtures: GPU marker handling and synthetic tiny checkpoints written once per session."""

from __future__ import annotations

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    """An unquantized synthetic checkpoint of the default tiny config (official format)."""
    from models.config import tiny_config
    from models.synthetic import write_synthetic_checkpoint

    out = tmp_path_factory.mktemp("tiny_ckpt")
    write_synthetic_checkpoint(tiny_config(), out, seed=0, quantize=False)
    return out
