"""The indexer-key format travels explicitly (models/attention.py): every block call names it, and a CSA
layer refuses a state without one instead of guessing it from a row width."""

import pytest
import torch

from models.config import tiny_config
from models.state import single_sequence_batch

from tests.models.oracle import our_model, random_state_dict


@torch.no_grad()
def test_blocks_take_the_key_format_and_csa_layers_need_one():
    cfg = tiny_config(compress_ratios=(0, 4))  # sliding, then CSA
    model = our_model(cfg, random_state_dict(cfg))
    state = model.new_state(num_slots=1, num_blocks=4, block_size=16)
    batch = single_sequence_batch(torch.arange(2, 7), 0, torch.arange(4))
    x = torch.randn(5, cfg.hc_mult, cfg.hidden_size)
    cos, sin = model.rope_compress.cos_sin(batch.positions)
    csa = model.layers[1]
    with pytest.raises(TypeError, match="key_format"):  # no default: a caller cannot forget it
        csa(x, batch, state.layers[1], model.rope_compress, cos, sin)
    with pytest.raises(ValueError, match="indexer-key format"):
        csa(x, batch, state.layers[1], model.rope_compress, cos, sin, key_format=None)
    cos, sin = model.rope_main.cos_sin(batch.positions)  # a sliding layer has no indexer: None is fine
    out, _ = model.layers[0](x, batch, state.layers[0], model.rope_main, cos, sin, key_format=None)
    assert out.shape == x.shape
