"""GPU tests at V4-Flash shapes (64 heads x 512, window 128, top-k 512): Triton vs torch twins,
ragged batches, empty/short sequences, block-table indirection, FP8 entries; model logits with the
Triton path vs the torch path."""

import pytest
import torch

from tests.kernels.kernel_cases import attention_case, compressor_case, indexer_case, topk_case

pytestmark = pytest.mark.gpu

SPECS = [(0, 1), (5, 1), (200, 1), (40000, 1), (1000, 37), (0, 130), (77, 0), (3, 2)]


@pytest.mark.parametrize("fp8", [False, True])
@pytest.mark.parametrize("ratio,topk", [(0, 0), (4, 512), (128, 0)])
def test_attention_real_shapes(ratio, topk, fp8):
    errs = attention_case(SPECS, h=64, c=512, r=64, w=128, ratio=ratio, topk=topk, block_size=256, fp8=fp8,
                          device="cuda", dtype=torch.bfloat16)
    print(errs)
    for k, v in errs.items():
        if k.startswith("nsplit"):
            assert v < 2e-2, (k, v)
    assert errs["window_store"] == 0
    if fp8:
        assert errs["pack"] <= 0.001 * 584 * sum(n for _, n in SPECS)


def test_attention_hca_long_split():
    errs = attention_case([(1 << 20, 1), (300000, 1)], h=64, c=512, r=64, w=128, ratio=128, topk=0, block_size=256,
                          fp8=True, device="cuda", dtype=torch.bfloat16)
    print(errs)
    assert max(v for k, v in errs.items() if k.startswith("nsplit")) < 2e-2


@pytest.mark.parametrize("fp8", [False, True])
def test_indexer_real_shapes(fp8):
    errs = indexer_case([(0, 1), (100, 1), (2100, 1), (40000, 1), (3000, 64), (0, 9)], hi=64, ci=128, topk=512,
                        block_size=256, fp8=fp8, device="cuda", row_tile=16)
    print(errs)
    assert errs["rows_mismatch"] == 0


@pytest.mark.parametrize("n", [300, 512, 8192, 131072])
def test_topk_rows(n):
    assert topk_case(16, n, 512, "cuda")["mismatch"] == 0


@pytest.mark.parametrize("fp8", [False, True])
@pytest.mark.parametrize("ratio,overlap,c,key", [(4, True, 512, False), (128, False, 512, False), (4, True, 128, True)])
def test_compressor_real_shapes(ratio, overlap, c, key, fp8):
    specs = [(0, 1), (3, 1), (127, 1), (1000, 300), (0, 260), (7, 0)]
    errs = compressor_case(specs, c=c, r=64, ratio=ratio, overlap=overlap, block_size=256, fp8=fp8, index_key=key,
                           device="cuda")
    print(errs)
    assert errs["tails"] == 0
    assert errs["entries"] < (3e-2 if fp8 else 1e-5)


@pytest.mark.parametrize("kv_format", ["bf16", "fp8"])
def test_model_logits_triton_vs_torch(kv_format):
    import kernels
    from models.config import tiny_config
    from models.state import single_sequence_batch
    from tests.models.oracle import our_model, random_state_dict

    cfg = tiny_config(compress_ratios=(0, 4, 8, 4), index_topk=8, head_dim=128, qk_rope_head_dim=64,
                      index_head_dim=64)
    model = our_model(cfg, random_state_dict(cfg, seed=1)).cuda().to(torch.bfloat16)
    ids = torch.randint(0, cfg.vocab_size, (150,), generator=torch.Generator().manual_seed(2)).cuda()
    outs = {}
    kernels.set_backend("ref")  # everything else on the torch path: isolates the attention kernels
    for backend in ("ref", "triton"):
        kernels.set_attention_backend(backend)
        try:
            state = model.new_state(num_slots=2, num_blocks=20, block_size=16, kv_format=kv_format)
            table = torch.arange(19, 9, -1)
            chunks = []
            for a, b in ((0, 100), *((i, i + 1) for i in range(100, 150))):  # prefill + decode steps
                batch = single_sequence_batch(ids[a:b], a, table, slot=1)
                chunks.append(model.compute_logits(model(batch, state)))
            outs[backend] = torch.cat(chunks)
        finally:
            kernels.set_attention_backend(None)
    kernels.set_backend("auto")
    ref, got = outs["ref"], outs["triton"]
    rel = ((got - ref).norm() / ref.norm()).item()
    top1 = (got.argmax(-1) == ref.argmax(-1)).float().mean().item()
    print(kv_format, "rel", rel, "top1 agreement", top1)
    assert rel < 3e-2 and top1 > 0.9
