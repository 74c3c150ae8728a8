"""Tensor parallelism is an explicit constructor argument: a Block built with rank r's
ParallelContext holds rank r's heads and experts; the default context builds the whole model."""

import torch

from models.config import tiny_config
from models.model import Block
from models.parallel import ParallelContext


def test_block_built_for_a_rank_holds_its_share():
    cfg = tiny_config()
    csa = cfg.compress_ratios.index(4)
    with torch.device("meta"):
        whole = Block(cfg, csa)
        ranks = [Block(cfg, csa, tp=ParallelContext(r, 2)) for r in range(2)]
    assert whole.ffn.ep is None and not whole.attn.indexer.tp.enabled
    assert whole.ffn.experts_w1.shape[0] == cfg.n_routed_experts
    for r, b in enumerate(ranks):
        assert b.ffn.experts_w1.shape[0] == cfg.n_routed_experts // 2
        assert (b.ffn.ep.e0, b.ffn.ep.e1) == (r * cfg.n_routed_experts // 2, (r + 1) * cfg.n_routed_experts // 2)
        assert (b.ffn.shared_experts is not None) == (r == 0)  # added once, before the all-reduce
        assert b.attn.n_heads == cfg.num_attention_heads // 2
        idx = b.attn.indexer
        assert idx.tp is b.tp and idx.n_heads == cfg.index_n_heads // 2
        assert idx.weight_scale == whole.attn.indexer.weight_scale  # the global head count's scale
