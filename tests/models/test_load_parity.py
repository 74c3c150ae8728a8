"""Official-format checkpoints through the real loader: unquantized and FP8/MXFP4-quantized synthetic
checkpoints give the oracle's logits on the same (dequantized) weights."""

from __future__ import annotations

import pytest
import torch

from models import load_model
from models.config import tiny_config
from models.loader import load_state_dict
from models.synthetic import write_synthetic_checkpoint
from tests.models.oracle import build_oracle, oracle_logits

CFG = tiny_config(compress_ratios=(0, 4, 8, 4), index_topk=6, num_hash_layers=1, vocab_size=384)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    plain = tmp_path_factory.mktemp("plain")
    quant = tmp_path_factory.mktemp("quant")
    write_synthetic_checkpoint(CFG, plain, seed=5, quantize=False)
    write_synthetic_checkpoint(CFG, quant, seed=5, quantize=True)
    return plain, quant


def _oracle_sd(path):
    sd = load_state_dict(path, dtype=torch.float32)
    return {k: v for k, v in sd.items() if not k.startswith("mtp.")}


@pytest.mark.parametrize("which", ["plain", "quant"])
def test_loaded_checkpoint_matches_oracle(ckpts, which):
    path = ckpts[0] if which == "plain" else ckpts[1]
    model = load_model(path, device="cpu", dtype=torch.float32)
    assert len(model.mtp) == 0 and not any(n.startswith("mtp.") for n in model.state_dict())  # only when asked
    oracle = build_oracle(model.cfg, _oracle_sd(path))
    ids = torch.randint(0, CFG.vocab_size, (200,), generator=torch.Generator().manual_seed(0)).tolist()
    a, b = model.logits(ids), oracle_logits(oracle, ids)
    diff = (a - b).abs().max().item()
    print(f"{which} checkpoint vs oracle: max abs diff {diff:.2e}")
    assert b.abs().max() > 1.0 and diff <= 1e-4
    with_mtp = load_model(path, device="cpu", dtype=torch.float32, include_mtp=True)
    assert len(with_mtp.mtp) == 1  # MTP weights load when asked for; the main model is unchanged
    assert torch.equal(with_mtp.logits(ids), a)
    if which == "quant":  # FP8/MXFP4 kept resident (allocated quantized on meta first): same logits
        resident = load_model(path, device="cpu", dtype=torch.float32, resident_quant=True)
        assert resident.layers[1].ffn.expert_fmt == "fp4"
        assert (resident.logits(ids) - b).abs().max().item() <= 1e-4


def test_quantized_weights_track_the_float_weights(ckpts):
    """Same seed -> the quantized checkpoint dequantizes to the float weights within FP8/FP4 error.
    A swapped nibble order or a wrong exponent bias would break the correlation / the scale."""
    plain, quant = (load_state_dict(p, dtype=torch.float32) for p in ckpts)
    for name in ["layers.1.attn.wq_b.weight", "layers.2.attn.wo_a.weight",  # FP8 128x128 blocks
                 "layers.1.ffn.experts.3.w1.weight", "layers.2.ffn.experts.0.w2.weight"]:  # MXFP4
        a, b = plain[name].flatten(), quant[name].flatten()
        corr = torch.corrcoef(torch.stack([a, b]))[0, 1].item()
        ratio = (b.norm() / a.norm()).item()
        assert corr > 0.95, (name, corr)
        assert 0.8 < ratio < 1.25, (name, ratio)
