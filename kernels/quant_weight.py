"""Resident quantized weight handle passed to the kernels.

`QuantWeight(data, scale, fmt)`:
  * fmt "fp8": data float8_e4m3fn [..., N, K], scale float8_e8m0fnu (or uint8) [..., ceil(N/128), ceil(K/128)]
  * fmt "fp4": data int8 [..., N, K/2] (E2M1 pairs: low nibble = even k), scale e8m0 [..., N, K/32]
The leading dim (if any) is the expert dim of stacked MoE weights. Plain tensors mean bf16/fp32 weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

FP8_BLOCK = 128
FP4_BLOCK = 32


@dataclass
class QuantWeight:
    data: torch.Tensor
    scale: torch.Tensor
    fmt: str  # "fp8" | "fp4"
    _scale_max: int | None = field(default=None, repr=False, compare=False)  # see max_scale_byte()

    def __post_init__(self):
        if self.fmt not in ("fp8", "fp4"):
            raise ValueError(f"unknown quantized weight format {self.fmt!r}")

    def max_scale_byte(self) -> int:
        """Largest UE8M0 scale byte, measured on first use (one device sync) and remembered."""
        if self._scale_max is None:
            self._scale_max = int(self.scale_u8().max()) if self.scale.numel() else 0
        return self._scale_max

    @property
    def shape(self) -> tuple[int, ...]:
        """Logical (dequantized) shape [..., N, K]."""
        s = tuple(self.data.shape)
        return s[:-1] + (s[-1] * 2,) if self.fmt == "fp4" else s

    @property
    def device(self) -> torch.device:
        return self.data.device

    @property
    def is_cuda(self) -> bool:
        return self.data.is_cuda

    def nbytes(self) -> int:
        return self.data.numel() * self.data.element_size() + self.scale.numel() * self.scale.element_size()

    def scale_u8(self) -> torch.Tensor:
        return self.scale.view(torch.uint8) if self.scale.dtype != torch.uint8 else self.scale

    def __getitem__(self, e) -> "QuantWeight":
        """Expert slice of a stacked weight."""
        return QuantWeight(self.data[e], self.scale[e], self.fmt)

    def dequant(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        from .ref.quant import dequant
        return dequant(self, dtype)
