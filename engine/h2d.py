"""Host -> device copies that never wait for the device (per-step inputs under async scheduling).

A copy from pageable host memory stages through a driver buffer, and `torch.tensor(..., device=cuda)`
is a blocking copy: both can stall the host behind the step in flight. `h2d` stages through pinned
memory (torch's caching host allocator keeps the block alive until the copy ran) and copies
non-blocking. On the CPU it returns the tensor itself (no copy), so CPU results are unchanged.
"""

from __future__ import annotations

import torch


def h2d(t: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """`t` (a CPU tensor) on `device` without a host-device synchronization."""
    if torch.device(device).type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)
