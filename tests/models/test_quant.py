"""Weight codecs of kernels/codecs.py: hand-computed bit layouts and quantize/dequantize round trips."""

import pytest
import torch

from kernels.codecs import (
    E2M1_TABLE,
    ceil_log2,
    dequant_fp8_block,
    dequant_mxfp4,
    e2m1_encode,
    e8m0_from_exponent,
    e8m0_to_exponent,
    e8m0_to_float,
    pack_mxfp4,
    quant_fp8_block,
    unpack_e2m1_codes,
)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_e8m0_exponent_bias_and_bytes():
    e = torch.tensor([-127, -3, 0, 1, 5, 127])
    s = e8m0_from_exponent(e)
    assert s.dtype == torch.float8_e8m0fnu
    assert s.view(torch.uint8).tolist() == [0, 124, 127, 128, 132, 254]
    assert e8m0_to_exponent(s).tolist() == e.tolist()
    assert e8m0_to_float(s).tolist() == [2.0**-127, 0.125, 1.0, 2.0, 32.0, 2.0**127]
    nan = torch.tensor([255], dtype=torch.uint8).view(torch.float8_e8m0fnu)
    assert torch.isnan(e8m0_to_float(nan)).all()
    with pytest.raises(ValueError):
        e8m0_from_exponent(torch.tensor([128]))


def test_ceil_log2_exact_at_powers_of_two():
    x = torch.tensor([1.0, 0.75, 0.5, 2.0, 3.0, 4.0, 2.0**-130, 448.0 / 448.0, 449.0 / 448.0])
    assert ceil_log2(x).tolist() == [0, 0, -1, 1, 2, 2, -130, 0, 1]


def test_mxfp4_hand_computed_nibble_order_and_scale():
    # One row of K=64: block 0 holds 0.5 (k=0) and -3 (k=1), block 1 holds 6*4 = 24 (k=33).
    w = torch.zeros(1, 64)
    w[0, 0], w[0, 1], w[0, 33] = 0.5, -3.0, 24.0
    packed, scale = pack_mxfp4(w)
    assert packed.dtype == torch.int8 and packed.shape == (1, 32)
    assert scale.dtype == torch.float8_e8m0fnu and scale.shape == (1, 2)
    # block 0: amax 3 -> exponent ceil(log2(3/6)) = -1 -> byte 126; block 1: amax 24 -> 2 -> byte 129.
    assert scale.view(torch.uint8).tolist() == [[126, 129]]
    u = packed.view(torch.uint8)
    # k=0: 0.5 / 2^-1 = 1.0 -> code 2 (low nibble); k=1: -3 / 2^-1 = -6 -> code 8|7 = 15 (high nibble).
    assert u[0, 0].item() == (15 << 4) | 2
    # k=33 is odd -> high nibble of byte 16: 24 / 4 = 6 -> code 7; k=32 is 0 -> low nibble 0.
    assert u[0, 16].item() == 7 << 4
    assert u[0, 1:16].eq(0).all() and u[0, 17:].eq(0).all()
    assert torch.equal(dequant_mxfp4(packed, scale), w)


def test_mxfp4_decoder_reads_hand_packed_bytes():
    # Byte 0x9A: low nibble 0xA = -1.0 (k=0), high nibble 0x9 = -0.5 (k=1); scale byte 130 -> x8.
    packed = torch.zeros(1, 16, dtype=torch.uint8)
    packed[0, 0] = 0x9A
    packed[0, 15] = 0x70  # k=31 -> code 7 = 6.0
    scale = torch.tensor([[130]], dtype=torch.uint8).view(torch.float8_e8m0fnu)
    w = dequant_mxfp4(packed.view(torch.int8), scale)
    assert w[0, 0].item() == -8.0 and w[0, 1].item() == -4.0 and w[0, 31].item() == 48.0
    assert w[0, 2:31].eq(0).all()


def test_e2m1_rounding_nearest_ties_to_even():
    x = torch.tensor([0.2, 0.25, 0.3, 0.75, 1.25, 1.75, 2.5, 2.6, 3.5, 5.0, 5.1, 7.0, -0.25, -2.9, -5.0])
    got = E2M1_TABLE[e2m1_encode(x).long()].tolist()
    assert got == [0.0, 0.0, 0.5, 1.0, 1.0, 2.0, 2.0, 3.0, 4.0, 4.0, 6.0, 6.0, 0.0, -3.0, -4.0]
    assert e2m1_encode(torch.tensor([-0.1])).item() == 0  # canonical +0


def test_mxfp4_round_trip():
    w = torch.randn(48, 256, generator=_gen()) * 0.03
    packed, scale = pack_mxfp4(w)
    assert unpack_e2m1_codes(packed).shape == (48, 256)
    d = dequant_mxfp4(packed, scale)
    assert d.shape == w.shape
    # Per element error <= half the largest step (1.0 between 4 and 6) at the block's scale.
    blk_scale = e8m0_to_float(scale).repeat_interleave(32, dim=1)
    assert ((d - w).abs() <= blk_scale * 1.0 + 1e-12).all()
    assert (d - w).norm() / w.norm() < 0.15
    # Dequantized values are representable: re-quantizing is lossless.
    assert torch.equal(dequant_mxfp4(*pack_mxfp4(d)), d)
    assert dequant_mxfp4(packed, scale, dtype=torch.bfloat16).dtype == torch.bfloat16


def test_fp8_block_round_trip_with_ragged_edges():
    w = torch.randn(300, 200, generator=_gen(1)) * 0.05
    w[130:140, 5:9] *= 100  # one tile with a much larger range
    q, s = quant_fp8_block(w)
    assert q.dtype == torch.float8_e4m3fn and q.shape == (300, 200)
    assert s.dtype == torch.float8_e8m0fnu and s.shape == (3, 2)
    d = dequant_fp8_block(q, s)
    assert (d - w).norm() / w.norm() < 0.04
    # Normal-range elements carry 3 mantissa bits: relative error <= 2^-4.
    big = w.abs() > 0.01
    assert (((d - w).abs() / w.abs())[big] <= 2.0**-4 + 1e-6).all()
    # Tile scale = 2^ceil(log2(amax/448)).
    amax = w[128:256, 0:128].abs().max()
    assert e8m0_to_exponent(s)[1, 0].item() == ceil_log2(amax / 448).item()
    assert q.to(torch.float32).abs().max() <= 448
    assert torch.equal(dequant_fp8_block(*quant_fp8_block(d)), d)


def test_fp8_dequant_hand_computed():
    q = torch.tensor([[1.0, -2.0], [0.5, 448.0]]).to(torch.float8_e4m3fn)
    s = e8m0_from_exponent(torch.tensor([[-3]]))
    assert dequant_fp8_block(q, s).tolist() == [[0.125, -0.25], [0.0625, 56.0]]
    with pytest.raises(ValueError, match="scale shape"):
        dequant_fp8_block(q, e8m0_from_exponent(torch.zeros(2, 1, dtype=torch.int32)))


def test_zero_weights_stay_zero():
    z = torch.zeros(4, 64)
    assert dequant_fp8_block(*quant_fp8_block(z)).eq(0).all()
    assert dequant_mxfp4(*pack_mxfp4(z)).eq(0).all()
