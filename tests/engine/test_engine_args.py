"""EngineArgs: derived settings are resolved once, at construction."""

import pytest

from engine.config import EngineArgs
from engine.spec_decode_config import SpeculativeConfig


def test_speculative_config_is_parsed_once_at_construction():
    args = EngineArgs(speculative_config='{"method": "mtp", "num_speculative_tokens": 2}')
    assert args.spec_config == SpeculativeConfig("mtp", 2)
    assert args.spec_config is args.spec_config  # no re-parse on access
    assert EngineArgs().spec_config is None and EngineArgs(speculative_config={}).spec_config is None
    with pytest.raises(ValueError, match="speculative_config is not valid JSON"):
        EngineArgs(speculative_config="{nope")  # at construction, not on first use
    args.speculative_config = {"method": "mtp", "num_speculative_tokens": 3}  # assigned later: parsed then
    assert args.spec_config == SpeculativeConfig("mtp", 3)
    args.speculative_config = None
    assert args.spec_config is None


def test_token_budget_defaults_follow_the_device_and_usage(monkeypatch):
    """max_num_batched_tokens None resolves as vLLM's defaults: a >= 70 GiB GPU other than an A100 gets 16384
    offline and 8192 for the server, smaller GPUs (and A100s) 8192 / 2048, the CPU 2048; a set value wins."""
    import torch
    from types import SimpleNamespace

    gpu = {"name": "NVIDIA H200", "total_memory": 140 * 2**30}
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: SimpleNamespace(**gpu))
    cuda = torch.device("cuda", 0)
    want = {("NVIDIA H200", 140): (16384, 8192), ("NVIDIA A100-SXM4-80GB", 80): (8192, 2048),
            ("NVIDIA L4", 24): (8192, 2048)}
    for (name, gib), (offline, server) in want.items():
        gpu.update(name=name, total_memory=gib * 2**30)
        assert EngineArgs().resolve_max_num_batched_tokens(cuda) == offline, name
        assert EngineArgs(usage="server").resolve_max_num_batched_tokens(cuda) == server, name
    assert EngineArgs(usage="server").resolve_max_num_batched_tokens(torch.device("cpu")) == 2048
    assert EngineArgs().resolve_max_num_batched_tokens(torch.device("cpu")) == 2048
    assert EngineArgs(max_num_batched_tokens=7).resolve_max_num_batched_tokens(cuda) == 7
    with pytest.raises(ValueError, match="max_num_batched_tokens must be >= 1"):
        EngineArgs(max_num_batched_tokens=0).validate()
    with pytest.raises(ValueError, match="usage must be"):
        EngineArgs(usage="batch").validate()
