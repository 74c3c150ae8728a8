"""What the Triton launchers ask of the GPU, queried once per device.

Under the CPU interpreter (TRITON_INTERPRET=1) or without CUDA the answers are H200 constants, so the
interpreter tests take the same launch decisions as the GPU they model. Imports no Triton code (safe to
import before a test switches the interpreter on).
"""

from __future__ import annotations

import functools
import os

import torch

H200_NUM_SMS = 132


def num_sms(device: torch.device | int | None = None) -> int:
    """Streaming multiprocessors of `device` (default: the current CUDA device); H200's 132 in the
    interpreter or without CUDA."""
    if os.environ.get("TRITON_INTERPRET") == "1" or not torch.cuda.is_available():
        return H200_NUM_SMS
    index = device if isinstance(device, int) else (torch.device(device).index if device is not None else None)
    return _num_sms(torch.cuda.current_device() if index is None else index)


@functools.lru_cache(maxsize=None)
def _num_sms(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def capability(device: torch.device | int | None = None) -> tuple[int, int]:
    """CUDA compute capability of `device` (default: the current CUDA device); H200's (9, 0) in the
    interpreter or without CUDA."""
    if os.environ.get("TRITON_INTERPRET") == "1" or not torch.cuda.is_available():
        return (9, 0)
    index = device if isinstance(device, int) else (torch.device(device).index if device is not None else None)
    return _capability(torch.cuda.current_device() if index is None else index)


@functools.lru_cache(maxsize=None)
def _capability(index: int) -> tuple[int, int]:
    return tuple(torch.cuda.get_device_capability(index))
