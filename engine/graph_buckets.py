"""What the decode CUDA graphs (engine/cuda_graph.py) and the speculative ones (engine/spec_decode_graphs.py)
share: batch buckets, bodies written as named sections, warm-up + capture of every bucket into one memory
pool, replay (or the eager run of the same sections on CPU / capture=False), and a per-section device-time
profile (bench/spec.py).

A subclass lists its graphs (`graph_names`, run in that order within a step), builds one bucket object per
batch size (`.size`, `.graphs` name -> CUDAGraph, `.out` dict of the bodies' outputs) and implements
`_sections(bucket, name, out)` -> [(label, fn)] (each fn reads the static buffers and earlier entries of
`out`, writes its results into `out`) and `_fill_idle(bp, gen=None)` (stage an all-padding batch: only
scratch rows are written; with a generator the padding tokens are random ids, so a profiled MoE routes
like a real batch instead of sending every row to token 0's experts).
"""

from __future__ import annotations

import time
from typing import Callable

import torch

Section = tuple[str, Callable[[], None]]


def batch_buckets(max_num_seqs: int) -> list[int]:
    """1, 2, 4, 8, 16, 32, 64, then every 64 (and max_num_seqs itself), ascending. Few buckets: each costs
    start-up (warm-up + capture, ~2.5 s measured for 8 V4-Flash layers) and a padded row costs little in
    a decode step (the weights dominate; padding rows share token 0's experts)."""
    out = [b for b in (1, 2, 4, 8, 16, 32, 64) if b < max_num_seqs]
    b = 128
    while b < max_num_seqs:
        out.append(b)
        b += 64
    out.append(max_num_seqs)
    return out


def pinned_int64(size: int, device: torch.device) -> torch.Tensor:
    """A host staging buffer (pinned on CUDA: its non-blocking copy never waits for the step in flight; the
    caching host allocator keeps it until the copy ran)."""
    return torch.empty(size, dtype=torch.int64, pin_memory=device.type == "cuda")


class BucketGraphs:
    graph_names: tuple[str, ...] = ()

    def _init_buckets(self, device: torch.device, max_num_seqs: int, capture: bool | None,
                      buckets: list[int] | None) -> None:
        self.device = device
        self.capture_enabled = device.type == "cuda" if capture is None else capture
        self.sizes = sorted(buckets or batch_buckets(max_num_seqs))
        self.max_bs = self.sizes[-1]
        self.capture_s = 0.0
        self._pool = None

    def bucket_for(self, n: int) -> int | None:
        return next((b for b in self.sizes if b >= n), None)

    # ---- subclass hooks ----------------------------------------------------------------------
    def _sections(self, bk, name: str, out: dict) -> list[Section]:
        raise NotImplementedError

    def _fill_idle(self, bp: int, gen: torch.Generator | None = None) -> None:
        raise NotImplementedError

    def _out(self, bk, name: str) -> dict:
        """The output dict graph `name` writes (graphs that read each other's outputs share one; a graph
        captured into another's dict would re-point its entries at the last capture's buffers)."""
        return bk.out

    # ---- run ---------------------------------------------------------------------------------
    def _run_eager(self, bk, name: str, out: dict) -> None:
        for _, fn in self._sections(bk, name, out):
            fn()

    def _run(self, bk, name: str) -> None:
        """Replay the bucket's graph `name` (captured) or run its sections eagerly into its output dict."""
        g = bk.graphs.get(name)
        if g is not None:
            g.replay()
        else:
            self._run_eager(bk, name, self._out(bk, name))

    @torch.inference_mode()
    def capture(self) -> float:
        """Warm up (compiles every kernel variant) and capture every bucket, largest first, into one memory
        pool. -> seconds taken. No-op (0.0) when capture is disabled (CPU)."""
        if not self.capture_enabled:
            return 0.0
        t0 = time.monotonic()
        self._pool = torch.cuda.graph_pool_handle()
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for bp in reversed(self.sizes):
                bk = self.buckets[bp]
                self._fill_idle(bp)  # all rows padding: writes only the scratch slot / block
                for _ in range(2 if bp == self.max_bs else 1):  # compiles this bucket's kernel variants
                    for name in self.graph_names:
                        self._run_eager(bk, name, self._out(bk, name))
                torch.cuda.synchronize(self.device)
                for name in self.graph_names:
                    g = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(g, pool=self._pool, stream=stream):
                        self._run_eager(bk, name, self._out(bk, name))
                    bk.graphs[name] = g
        torch.cuda.current_stream(self.device).wait_stream(stream)
        torch.cuda.synchronize(self.device)
        self.capture_s = time.monotonic() - t0
        return self.capture_s

    @torch.inference_mode()
    def time_sections(self, bp: int, iters: int = 20, names: tuple[str, ...] | None = None) -> dict[str, float]:
        """Device time (ms, mean over `iters`) of every section of bucket `bp`, each captured as its own graph
        (CUDA; events between back-to-back replays) or run eagerly with host timers (CPU). Runs an
        all-padding batch of random token ids: only scratch rows are written, so call it between steps.
        Attention reads the scratch rows' short context (positions 0..q-1): context-length effects are not in it."""
        bk = self.buckets[bp]
        out: dict = {}
        secs = [(f"{name}.{label}", fn) for name in names or self.graph_names
                for label, fn in self._sections(bk, name, out)]
        self._fill_idle(bp, torch.Generator().manual_seed(bp))
        if not self.capture_enabled:
            tot = {label: 0.0 for label, _ in secs}
            for _ in range(iters):
                for label, fn in secs:
                    t = time.perf_counter()
                    fn()
                    tot[label] += time.perf_counter() - t
            return {label: round(v / iters * 1e3, 4) for label, v in tot.items()}
        for _, fn in secs:  # warm
            fn()
        pool = torch.cuda.graph_pool_handle()
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        graphs = []
        with torch.cuda.stream(stream):
            torch.cuda.synchronize(self.device)
            for _, fn in secs:
                g = torch.cuda.CUDAGraph()
                with torch.cuda.graph(g, pool=pool, stream=stream):
                    fn()
                graphs.append(g)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        torch.cuda.synchronize(self.device)
        ev = [torch.cuda.Event(enable_timing=True) for _ in range(len(secs) + 1)]
        tot = [0.0] * len(secs)
        for _ in range(iters):
            ev[0].record()
            for i, g in enumerate(graphs):
                g.replay()
                ev[i + 1].record()
            torch.cuda.synchronize(self.device)
            for i in range(len(secs)):
                tot[i] += ev[i].elapsed_time(ev[i + 1])
        del graphs
        return {label: round(t / iters, 4) for (label, _), t in zip(secs, tot)}
