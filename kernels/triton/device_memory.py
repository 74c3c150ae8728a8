"""How many more bytes torch can allocate on a GPU, without a device sync per question.

`torch.cuda.mem_get_info` calls cudaMemGetInfo, which waits for the device on some drivers: an ~8 ms host sync per
call has been reported on H200-class machines (sglang#25225), and v4serve's MoE prefill asked it once per MoE layer
and step: the suspected cause of ~9 s of GPU idle in a 1M-token prompt (docs/benchmarks.md, sessions 6-7; not
yet confirmed by a measurement). The caching
allocator only moves bytes between "free in the driver" and "reserved by torch", so driver-free + torch-reserved
stays the same until something outside torch allocates; the answer is that sum, queried at most once per
REFRESH_S per device, minus what torch has allocated now (a host-side counter).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

REFRESH_S = 5.0  # the driver is asked again after this many seconds (memory taken outside torch meanwhile)


@dataclass
class _Headroom:
    bytes: int  # driver-free + torch-reserved bytes at the query
    at: float  # time.monotonic() of the query


_HEADROOM: dict[int, _Headroom] = {}


def allocatable_bytes(device: torch.device | int | str | None = None) -> int:
    """Bytes torch could still allocate on CUDA `device` (default: the current one), reserved-but-unused cache
    included. Asks the driver on first use and when the last answer is older than REFRESH_S."""
    index = device if isinstance(device, int) else (torch.device(device).index if device is not None else None)
    index = torch.cuda.current_device() if index is None else index
    now = time.monotonic()
    h = _HEADROOM.get(index)
    if h is None or now - h.at > REFRESH_S:
        free, _total = torch.cuda.mem_get_info(index)
        h = _HEADROOM[index] = _Headroom(free + torch.cuda.memory_reserved(index), now)
    return h.bytes - torch.cuda.memory_allocated(index)
