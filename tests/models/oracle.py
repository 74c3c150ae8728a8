"""Test helpers: random weights for our model and the transformers 5.17 DeepseekV4ForCausalLM oracle
built from the same weights (HF module names differ from the official ones; mapped here)."""

from __future__ import annotations

import math

import torch

from models.config import ModelConfig
from models.loading import build_model

_LEAF = [
    ("attn_norm.weight", "input_layernorm.weight"), ("ffn_norm.weight", "post_attention_layernorm.weight"),
    ("hc_attn_fn", "attn_hc.fn"), ("hc_attn_base", "attn_hc.base"), ("hc_attn_scale", "attn_hc.scale"),
    ("hc_ffn_fn", "ffn_hc.fn"), ("hc_ffn_base", "ffn_hc.base"), ("hc_ffn_scale", "ffn_hc.scale"),
    ("attn.wq_a.weight", "self_attn.q_a_proj.weight"), ("attn.q_norm.weight", "self_attn.q_a_norm.weight"),
    ("attn.wq_b.weight", "self_attn.q_b_proj.weight"), ("attn.wkv.weight", "self_attn.kv_proj.weight"),
    ("attn.kv_norm.weight", "self_attn.kv_norm.weight"), ("attn.wo_a.weight", "self_attn.o_a_proj.weight"),
    ("attn.wo_b.weight", "self_attn.o_b_proj.weight"), ("attn.attn_sink", "self_attn.sinks"),
    ("attn.compressor.wkv.weight", "self_attn.compressor.kv_proj.weight"),
    ("attn.compressor.wgate.weight", "self_attn.compressor.gate_proj.weight"),
    ("attn.compressor.norm.weight", "self_attn.compressor.kv_norm.weight"),
    ("attn.compressor.ape", "self_attn.compressor.position_bias"),
    ("attn.indexer.wq_b.weight", "self_attn.compressor.indexer.q_b_proj.weight"),
    ("attn.indexer.weights_proj.weight", "self_attn.compressor.indexer.scorer.weights_proj.weight"),
    ("attn.indexer.compressor.wkv.weight", "self_attn.compressor.indexer.kv_proj.weight"),
    ("attn.indexer.compressor.wgate.weight", "self_attn.compressor.indexer.gate_proj.weight"),
    ("attn.indexer.compressor.norm.weight", "self_attn.compressor.indexer.kv_norm.weight"),
    ("attn.indexer.compressor.ape", "self_attn.compressor.indexer.position_bias"),
    ("ffn.gate.weight", "mlp.gate.weight"), ("ffn.gate.bias", "mlp.gate.e_score_correction_bias"),
    ("ffn.gate.tid2eid", "mlp.gate.tid2eid"),
    ("ffn.shared_experts.w1.weight", "mlp.shared_experts.gate_proj.weight"),
    ("ffn.shared_experts.w2.weight", "mlp.shared_experts.down_proj.weight"),
    ("ffn.shared_experts.w3.weight", "mlp.shared_experts.up_proj.weight"),
]
_GLOBAL = {"embed.weight": "model.embed_tokens.weight", "head.weight": "lm_head.weight",
           "norm.weight": "model.norm.weight", "hc_head_fn": "model.hc_head.hc_fn",
           "hc_head_base": "model.hc_head.hc_base", "hc_head_scale": "model.hc_head.hc_scale"}


def hf_config(cfg: ModelConfig):
    from transformers import DeepseekV4Config

    kinds = {"sliding": "sliding_attention", "csa": "compressed_sparse_attention",
             "hca": "heavily_compressed_attention"}
    hca = {r for r in cfg.compress_ratios if r not in (0, 4)}
    assert len(hca) <= 1, "the oracle supports one HCA ratio per config"
    rope = {"rope_type": "default"}
    if cfg.yarn is not None:
        rope = {"rope_type": "yarn", "factor": cfg.yarn.factor, "beta_fast": cfg.yarn.beta_fast,
                "beta_slow": cfg.yarn.beta_slow,
                "original_max_position_embeddings": cfg.yarn.original_max_position_embeddings}
    c = DeepseekV4Config(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, moe_intermediate_size=cfg.moe_intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=1, head_dim=cfg.head_dim, q_lora_rank=cfg.q_lora_rank,
        num_experts_per_tok=cfg.num_experts_per_tok, n_routed_experts=cfg.n_routed_experts,
        n_shared_experts=cfg.n_shared_experts, routed_scaling_factor=cfg.routed_scaling_factor,
        max_position_embeddings=cfg.max_position_embeddings, rope_theta=cfg.rope_theta,
        layer_types=[kinds[cfg.layer_kind(i)] for i in range(cfg.num_hidden_layers)],
        compress_rates={"compressed_sparse_attention": 4, "heavily_compressed_attention": hca.pop() if hca else 128},
        compress_rope_theta=cfg.compress_rope_theta, hc_mult=cfg.hc_mult, hc_sinkhorn_iters=cfg.hc_sinkhorn_iters,
        hc_eps=cfg.hc_eps, mlp_layer_types=["hash_moe" if cfg.is_hash_layer(i) else "moe"
                                            for i in range(cfg.num_hidden_layers)],
        swiglu_limit=cfg.swiglu_limit, sliding_window=cfg.sliding_window, o_groups=cfg.o_groups,
        o_lora_rank=cfg.o_lora_rank, index_n_heads=cfg.index_n_heads, index_head_dim=cfg.index_head_dim,
        index_topk=cfg.index_topk, rms_norm_eps=cfg.rms_norm_eps,
        partial_rotary_factor=cfg.qk_rope_head_dim / cfg.head_dim, rope_parameters=rope,
        bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id,
    )
    c._attn_implementation = "eager"
    return c


def to_hf_state_dict(cfg: ModelConfig, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official-name tensors (experts per-expert, dequantized) -> HF DeepseekV4ForCausalLM names."""
    out = {hf: sd[k] for k, hf in _GLOBAL.items()}
    for i in range(cfg.num_hidden_layers):
        p = f"layers.{i}."
        for ours, hf in _LEAF:
            if p + ours in sd:
                out[f"model.layers.{i}.{hf}"] = sd[p + ours]
        e = cfg.n_routed_experts
        w1 = torch.stack([sd[f"{p}ffn.experts.{j}.w1.weight"] for j in range(e)])
        w3 = torch.stack([sd[f"{p}ffn.experts.{j}.w3.weight"] for j in range(e)])
        w2 = torch.stack([sd[f"{p}ffn.experts.{j}.w2.weight"] for j in range(e)])
        out[f"model.layers.{i}.mlp.experts.gate_up_proj"] = torch.cat((w1, w3), dim=1)
        out[f"model.layers.{i}.mlp.experts.down_proj"] = w2
    return out


def build_oracle(cfg: ModelConfig, sd: dict[str, torch.Tensor]):
    from transformers import DeepseekV4ForCausalLM

    model = DeepseekV4ForCausalLM(hf_config(cfg)).float().eval()
    missing, unexpected = model.load_state_dict(to_hf_state_dict(cfg, sd), strict=False)
    missing = [m for m in missing if "inv_freq" not in m]
    assert not missing and not unexpected, (missing, unexpected)
    return model


@torch.no_grad()
def oracle_logits(oracle, ids: list[int]) -> torch.Tensor:
    return oracle(torch.tensor([ids])).logits[0].float()


def random_state_dict(cfg: ModelConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random official-name weights with O(1) activations (per-expert names, no MTP)."""
    from models.checkpoint_spec import expected_tensors

    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, spec in expected_tensors(cfg, quantized=False, include_mtp=False).items():
        shape = tuple(spec.shape)
        if name.endswith("tid2eid"):
            out[name] = torch.stack([torch.randperm(cfg.n_routed_experts, generator=g)[: shape[1]]
                                     for _ in range(shape[0])])
            continue
        t = torch.randn(shape, generator=g)
        if name.endswith(("norm.weight",)):
            t = 1 + 0.1 * t
        elif name.endswith("_scale"):
            t = 1 + 0.1 * t
        elif name.endswith("_base"):
            t = 0.1 * t
        elif name.endswith("_fn"):
            t = t * 0.02
        elif name.endswith("attn_sink"):
            t = t
        elif name.endswith("ape") or name.endswith("gate.bias"):
            t = 0.1 * t
        elif name == "embed.weight":
            t = t
        elif len(shape) == 2:
            t = t / math.sqrt(shape[1])
        out[name] = t.float()
    return out


def our_model(cfg: ModelConfig, sd: dict[str, torch.Tensor]):
    model = build_model(cfg, "cpu", torch.float32, include_mtp=False)
    model.load_weights(sd.items())
    return model
