"""Config parsing: official keys, layer kinds from compress_ratios, presets, foreign families."""

from __future__ import annotations

import pytest

from models.config import ConfigError, ModelConfig, flash_config, pro_config, tiny_config


def test_flash_schedule_and_round_trip():
    cfg = flash_config()
    kinds = [cfg.layer_kind(i) for i in range(cfg.num_hidden_layers)]
    assert kinds[:2] == ["sliding", "sliding"]
    assert kinds.count("csa") == 21 and kinds.count("hca") == 20
    raw = cfg.to_dict()
    assert raw["compress_ratios"] == [0, 0] + [4, 128] * 20 + [4, 0]  # 44 entries incl. MTP
    assert ModelConfig.from_dict(raw) == cfg
    assert cfg.ratio_lcm == 128 and cfg.nope_head_dim == 448


def test_pro_starts_with_hca():
    cfg = pro_config()
    kinds = [cfg.layer_kind(i) for i in range(cfg.num_hidden_layers)]
    assert kinds[:3] == ["hca", "hca", "csa"]
    assert kinds.count("csa") == 30 and kinds.count("hca") == 31
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg


def test_other_hca_ratios_are_hca():
    cfg = tiny_config(compress_ratios=(0, 4, 8, 16))
    assert [cfg.layer_kind(i) for i in range(4)] == ["sliding", "csa", "hca", "hca"]
    assert cfg.ratio_lcm == 16


@pytest.mark.parametrize("mutate,needle", [
    (lambda d: d.update(model_type="deepseek_v3"), "model_type"),
    (lambda d: d.update(dspark_num_stages=3), "dspark_num_stages"),
    (lambda d: d.update(engram_layers=[1]), "engram_layers"),
    (lambda d: d.update(compress_ratios=d["compress_ratios"] + [0, 0, 0]), "compress_ratios"),
    (lambda d: d.pop("hidden_size"), "hidden_size"),
    (lambda d: d.update(num_key_value_heads=8), "num_key_value_heads"),
    (lambda d: d.update(rope_scaling={"type": "linear", "factor": 2}), "rope_scaling"),
    (lambda d: d.update(quantization_config={"quant_method": "awq"}), "quantization_config"),
])
def test_rejects_with_clear_message(mutate, needle):
    raw = flash_config().to_dict()
    mutate(raw)
    with pytest.raises(ConfigError, match=needle):
        ModelConfig.from_dict(raw)


def test_quantization_and_yarn_parsed():
    cfg = flash_config()
    assert cfg.quantization is not None and cfg.quantization.weight_block_size == (128, 128)
    assert cfg.expert_dtype == "fp4" and cfg.yarn.factor == 16 and cfg.yarn.original_max_position_embeddings == 65536
