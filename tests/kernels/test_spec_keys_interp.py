"""A kernel's Triton specialization depends on its call site, never on a step's sizes or offsets.

On the GPU every distinct key is a compile (0.2-1.5 s each on an H200) that the step launching it waits for;
session 12's server compiled 80 variants while serving because token counts crossed multiples of 16 and
metadata slices started at odd elements. Here (CPU, interpreter) a tiny model runs a sequence of mixed steps
whose sizes and offsets vary the way a server's do, and every launch's key is recomputed as Triton would
(tests/kernels/spec_keys.py). Outside its reach: the GPU-class paths (packed HCA entries, FP8 index scores,
the grouped MoE: their kernels carry the same per-argument lists, checked on the GPU by the serving log's
"new variant" lines) and sizes chosen from the SM count (the mHC split)."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton")

from tests.kernels.glue_cases import batch_of  # noqa: E402
from tests.kernels.interp_util import interp_modules  # noqa: E402
from tests.kernels.spec_keys import SpecKeys  # noqa: E402

# (chunk lengths, start positions) per step over slots 0..k-1: prompts of odd and multiple-of-16 lengths
# arriving among decoders, decoders joining and leaving, a chunk continuing a prompt
STEPS = [([9, 17, 3], [0, 0, 0]), ([1, 1, 1, 16], [9, 17, 3, 0]), ([1, 1, 1, 1, 33], [10, 18, 4, 16, 0]),
         ([1, 1, 1, 1, 1, 5, 2], [11, 19, 5, 17, 33, 0, 0]), ([1] * 7, [12, 20, 6, 18, 34, 5, 2]),
         ([1, 7, 1], [13, 21, 7])]


@pytest.mark.parametrize("kv_format", ["bf16", "fp8_fp4idx"])
def test_kernel_keys_do_not_depend_on_step_sizes_interp(kv_format):
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("interpreter test")
    import kernels
    from models.config import tiny_config
    from models.loading import load_model
    from models.state import batch_metadata
    from models.synthetic import write_synthetic_checkpoint

    interp_modules("mhc", "mhc_prefill", "norm", "fp8_linear", "linear_glue", "routing", "moe", "attention",
                   "compressor", "act_quant", "attn_tiles", "indexer", "indexer_fp8", "attention_hca")
    wide = kv_format != "bf16"
    dims = dict(head_dim=128, qk_rope_head_dim=64, index_head_dim=64) if wide else {}
    cfg = tiny_config(compress_ratios=(4, 128), index_topk=4, o_lora_rank=128, num_attention_heads=4, o_groups=2,
                      **dims)
    with tempfile.TemporaryDirectory() as tmp:
        write_synthetic_checkpoint(cfg, tmp, seed=3, quantize=True, include_mtp=False)
        model = load_model(tmp, "cpu", torch.float32, resident_quant=True)
    cfg = model.cfg
    n = max(len(lens) for lens, _ in STEPS)
    state = model.new_state(num_slots=n, num_blocks=4 * n, block_size=max(128, cfg.ratio_lcm), kv_format=kv_format)
    tables = torch.arange(4 * n).view(n, 4)
    g = torch.Generator().manual_seed(0)
    kernels.set_backend("triton")
    try:
        with SpecKeys() as sk, torch.no_grad():
            for lens, starts in STEPS:
                k = len(lens)
                b = batch_of(torch.randint(0, cfg.vocab_size, (sum(lens),), generator=g), lens, starts, tables[:k])
                batch_metadata(b)
                model(b, state)
    finally:
        kernels.set_backend("auto")
    launched = {k.rsplit(".", 1)[1] for k in sk.keys}
    assert {"_sparse_attn_kernel", "_emit_kernel", "_tail_kernel", "_fp8_linear_kernel", "_align_scatter_kernel",
            "_score_kernel", "_topk_kernel", "_finish_kernel", "_moe_gemm_kernel"} <= launched
    assert sk.unstable() == {}
