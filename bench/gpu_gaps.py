"""Where the GPU idles: gaps between device activities in a torch.profiler run, by the pair of kernels around them.

`device_intervals(prof)` takes the device-side events of a finished `torch.profiler.profile` (kernels, memcpy,
memset; not the runtime calls or CUPTI's "Command Buffer Full" markers, which the key averages also list with
device time); `idle_report(intervals)` merges overlapping intervals (several streams) and reports the idle time
between them: in total, and per (previous activity -> next activity) pair, largest first. A pair that collects
much idle time names the boundary where the device waits on the host (a sync, host work between launches).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass


@dataclass(frozen=True)
class Interval:
    """One device activity: [start_us, end_us) on the profiler's clock, and its name."""

    start_us: float
    end_us: float
    name: str


# host-side or bookkeeping entries that the profiler lists with device time but that are no device activity
NOT_DEVICE = ("Command Buffer Full", "cuLaunch", "cudaLaunch", "cudaStream", "cudaMemcpy", "cudaEvent",
               "cudaDeviceSynchronize", "cudaGetDevice", "cudaFuncGetAttributes")


def device_intervals(prof) -> list[Interval]:
    """The device activities of a finished torch.profiler.profile, sorted by start."""
    from torch.autograd import DeviceType

    out = []
    for e in prof.events():
        if e.device_type != DeviceType.CUDA or e.name.startswith(NOT_DEVICE):
            continue
        tr = e.time_range
        if tr.end > tr.start:
            out.append(Interval(float(tr.start), float(tr.end), e.name))
    out.sort(key=lambda iv: iv.start_us)
    return out


def _short(name: str, width: int = 60) -> str:
    return name if len(name) <= width else name[:width - 3] + "..."


def idle_report(intervals: list[Interval], *, min_gap_us: float = 20.0, top: int = 15) -> dict:
    """-> {"span_s": first start to last end, "busy_s": union of the intervals, "idle_s": span - busy,
    "idle_in_gaps_over_min_s": idle in gaps of >= min_gap_us, "gaps_over_min": their count, "top_pairs":
    [[prev -> next, idle ms, gaps], ...] over those gaps, largest idle first}."""
    if not intervals:
        return {"span_s": 0.0, "busy_s": 0.0, "idle_s": 0.0, "idle_in_gaps_over_min_s": 0.0, "gaps_over_min": 0,
                "top_pairs": []}
    ivs = sorted(intervals, key=lambda iv: iv.start_us)
    busy = 0.0
    cur_start, cur_end, cur_last = ivs[0].start_us, ivs[0].end_us, ivs[0].name
    pairs: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    big_idle, big_n = 0.0, 0
    for iv in ivs[1:]:
        if iv.start_us <= cur_end:  # overlaps the merged run (another stream, or back to back)
            if iv.end_us > cur_end:
                cur_end, cur_last = iv.end_us, iv.name
            continue
        busy += cur_end - cur_start
        gap = iv.start_us - cur_end
        if gap >= min_gap_us:
            key = f"{_short(cur_last)} -> {_short(iv.name)}"
            pairs[key][0] += gap
            pairs[key][1] += 1
            big_idle += gap
            big_n += 1
        cur_start, cur_end, cur_last = iv.start_us, iv.end_us, iv.name
    busy += cur_end - cur_start
    span = max(iv.end_us for iv in ivs) - ivs[0].start_us
    ranked = sorted(pairs.items(), key=lambda kv: -kv[1][0])[:top]
    return {"span_s": round(span / 1e6, 4), "busy_s": round(busy / 1e6, 4), "idle_s": round((span - busy) / 1e6, 4),
            "idle_in_gaps_over_min_s": round(big_idle / 1e6, 4), "gaps_over_min": big_n,
            "top_pairs": [[k, round(v[0] / 1e3, 2), int(v[1])] for k, v in ranked]}
