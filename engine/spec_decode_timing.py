"""Where a speculative graph step's time goes (bench/spec.py): host marks and CUDA events recorded by
engine/spec_decode_graph_step.py when `SpecDecoder.timer` is set (None by default: no cost).

Host segments (ms between consecutive marks, in step order):
  plan        checks, block allocations, draft padding, the verify plan
  verify_fill staging the verify inputs (one pinned host -> device copy) and launching the verify graph
  rejection   rejection sampling: waits for the verify graph (its device -> host copy), then the host walk
  draft_fill  accept bookkeeping, staging the draft inputs, launching the draft graph
  draft_wait  the drafts' device -> host copy (waits for the draft graph)
  append      scheduler update, emitted tokens appended (detokenizer, stop checks), bookkeeping
Device segments (CUDA events): verify_gpu, draft_gpu (graph replays), gpu_gap (verify end -> draft start:
the device idles while the host samples).
"""

from __future__ import annotations

import statistics
import time

import torch


class StepTimer:
    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.steps: list[dict] = []
        self._host: list[tuple[str, float]] = []
        self._ev: dict[str, torch.cuda.Event] = {}

    def begin(self) -> None:
        self._host = [("begin", time.perf_counter())]
        self._ev = {}

    def host(self, name: str) -> None:
        self._host.append((name, time.perf_counter()))

    def event(self, name: str) -> None:
        if self.cuda:
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            self._ev[name] = e

    def end(self) -> None:
        self.host("append")
        self.steps.append({"host": self._host, "ev": self._ev})

    def summary(self, skip: int = 2) -> dict[str, float]:
        """Median ms of every segment over the recorded steps (the first `skip` left out)."""
        if self.cuda:
            torch.cuda.synchronize()
        seg: dict[str, list[float]] = {}
        for st in self.steps[skip:]:
            h = st["host"]
            for (_, t0), (name, t1) in zip(h, h[1:]):
                seg.setdefault(name, []).append((t1 - t0) * 1e3)
            seg.setdefault("host_total", []).append((h[-1][1] - h[0][1]) * 1e3)
            ev = st["ev"]
            for name, a, b in (("verify_gpu", "v0", "v1"), ("gpu_gap", "v1", "d0"), ("draft_gpu", "d0", "d1")):
                if a in ev and b in ev:
                    seg.setdefault(name, []).append(ev[a].elapsed_time(ev[b]))
        return {name: round(statistics.median(v), 4) for name, v in seg.items()}
