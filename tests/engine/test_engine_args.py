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
