"""FP8 KV entry format: 584-byte layout round trip, indexer keys, and a CPU model run on fp8 state."""

import pytest
import torch

from kernels.ref import kv_fp8
from models.config import flash_config, tiny_config
from models.state import layer_state_specs


def test_entry_layout_and_round_trip():
    assert kv_fp8.entry_bytes(512, 64) == 584
    assert kv_fp8.index_key_bytes(128) == 132
    x = torch.randn(10, 512) * torch.logspace(-3, 3, 10)[:, None]
    b = kv_fp8.pack_entry(x, 64)
    assert b.shape == (10, 584) and b.dtype == torch.uint8
    y = kv_fp8.unpack_entry(b, 512, 64)
    assert torch.equal(y[:, 448:], x[:, 448:].bfloat16().float())  # rope dims are bf16
    rel = (y[:, :448] - x[:, :448]).abs() / x[:, :448].abs().amax(-1, keepdim=True)
    assert rel.max() < 2 ** -4  # e4m3 with a power-of-two scale per 64: <= half an ulp of the block max
    assert (b[:, 576:583] > 0).all() and (b[:, 583] == 0).all()  # 7 UE8M0 scale bytes + 1 pad
    k = torch.randn(6, 128)
    kb = kv_fp8.pack_index_key(k)
    assert kb.shape == (6, 132)
    assert ((kv_fp8.unpack_index_key(kb, 128) - k).abs().max(-1).values / k.abs().amax(-1)).max() < 2 ** -4


def test_fp8_state_specs_flash():
    cfg = flash_config()
    specs = {s.name: s for s in layer_state_specs(cfg, 2, 256, "fp8")}  # a CSA layer
    assert specs["window"].shape == (128, 584) and specs["compressed"].shape == (64, 584)
    assert specs["index_keys"].shape == (64, 132)
    assert specs["window"].packed and specs["compressed"].dtype(torch.bfloat16) == torch.uint8


@torch.no_grad()
def test_model_runs_on_fp8_state_close_to_bf16():
    from tests.models.oracle import our_model, random_state_dict
    cfg = tiny_config(compress_ratios=(0, 4, 8, 4), index_topk=8)
    model = our_model(cfg, random_state_dict(cfg, seed=1))
    ids = torch.randint(0, cfg.vocab_size, (40,), generator=torch.Generator().manual_seed(2))
    from models.state import single_sequence_batch
    outs = {}
    for fmt in ("bf16", "fp8"):
        state = model.new_state(num_slots=1, num_blocks=4, block_size=16, kv_format=fmt)
        a = model.compute_logits(model(single_sequence_batch(ids[:30], 0, torch.arange(4)), state))
        b = model.compute_logits(model(single_sequence_batch(ids[30:], 30, torch.arange(4)), state))
        outs[fmt] = torch.cat((a, b))
    rel = ((outs["fp8"] - outs["bf16"]).norm() / outs["bf16"].norm()).item()
    assert rel < 0.1, rel


def test_mxfp4_index_keys_rotated_round_trip_and_scores():
    """MXFP4 keys hold x @ H (normalized Hadamard, orthogonal); with q rotated the same way the indexer
    scores track the exact ones, which an unrotated q would not."""
    from kernels.ref.indexer import indexer_topk
    from tests.kernels.kernel_cases import make_meta

    assert kv_fp8.index_key_bytes(128, "fp4") == 68
    H = kv_fp8.hadamard(128, "cpu")
    assert torch.allclose(H @ H.T, torch.eye(128), atol=1e-6)
    g = torch.Generator().manual_seed(0)
    k = torch.randn(64, 128, generator=g)
    kb = kv_fp8.pack_index_key_fp4(k)
    assert kb.shape == (64, 68) and kv_fp8.check_key_store(kb, 128, "fp4") == "fp4"
    with pytest.raises(ValueError, match="does not hold 'fp8'"):  # a store and a format that disagree
        kv_fp8.read_keys(kb, 128, "fp8")
    back = kv_fp8.read_keys(kb, 128, "fp4")  # rotated values
    assert ((back - k @ H).norm() / (k @ H).norm()).item() < 0.15  # FP4: ~10 % rounding
    # the indexer on MXFP4 keys picks (nearly) the same entries as on the exact keys
    meta, nblocks, _ = make_meta([(400, 1)], 16, "cpu")
    keys = torch.randn(nblocks, 4, 128, generator=g)
    q = torch.randn(1, 8, 128, generator=g)
    w = torch.rand(1, 8, generator=g)
    exact = set(indexer_topk(q, w, keys, meta, 20, key_format="dense").flatten().tolist())
    fp4 = set(indexer_topk(kv_fp8.rotate_for_keys(q, "fp4"), w, kv_fp8.pack_index_key_fp4(keys), meta, 20,
                           key_format="fp4").flatten().tolist())  # q rotated as the stored keys are
    assert len(exact & fp4) >= 14, (exact, fp4)
    assert kv_fp8.rotate_for_keys(q, "dense") is q  # dense keys: q untouched
