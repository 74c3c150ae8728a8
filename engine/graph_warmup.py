"""Parallel kernel compilation before CUDA-graph capture.

Capturing the decode graphs first runs each batch bucket once eagerly, and that first run JIT-compiles
every Triton kernel variant the bucket needs (tile configs differ by batch size). Done bucket after
bucket, a start with an empty kernel cache spends most of its time compiling, one variant at a time.
Triton's compiler releases the GIL while it runs its MLIR/LLVM passes and ptxas, so running the buckets'
first forwards from a pool of threads compiles their variants side by side; the capture that follows
then finds every variant in the cache.

Safe to run concurrently: every bucket's inputs are the graphs' static buffers, first set to padding
(token 0, position 0, the cache manager's scratch slot and block) by one serial run of the largest
bucket, and no thread writes them; each forward writes only the scratch slot's
state and its own freshly allocated activations; all threads enqueue on the same (default) stream, so
the GPU runs the kernels one after another and split-K counters and workspaces see no overlap.
The outputs are discarded.
"""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext

import torch

log = logging.getLogger("v4serve.cuda_graph")

WORKERS_ENV = "V4SERVE_COMPILE_WORKERS"  # threads for the pre-capture forwards; 1 = one bucket at a time


def compile_workers(num_buckets: int) -> int:
    """Threads to use: $V4SERVE_COMPILE_WORKERS if set (>= 1), else one per bucket up to the CPU count."""
    raw = os.environ.get(WORKERS_ENV)
    if raw is not None:
        try:
            n = int(raw)
        except ValueError:
            raise ValueError(f"{WORKERS_ENV} must be a positive integer, got {raw!r}") from None
        if n < 1:
            raise ValueError(f"{WORKERS_ENV} must be a positive integer, got {raw!r}")
        return n
    return max(1, min(num_buckets, os.cpu_count() or 1))


def precompile_buckets(graphs, workers: int | None = None, force: bool = False) -> float:
    """Run every bucket's sections once from `workers` threads (graphs: an engine.graph_buckets.BucketGraphs,
    before `capture()`; sections labelled "stage" unpack the shared staging buffer and run only in the
    serial pass). -> seconds taken (0.0 when capture is off or one worker; `force`
    runs it anyway, which is how CPU tests check that it leaves every real slot untouched)."""
    if not (graphs.capture_enabled or force):
        return 0.0
    n = compile_workers(len(graphs.sizes)) if workers is None else workers
    if n <= 1 and not force:
        return 0.0
    device = graphs.device
    t0 = time.monotonic()
    # Every static row back to padding: each bucket's host mirrors, then the device buffers through the
    # largest bucket's "stage" sections (serial: they unpack the shared staging buffer); then every bucket's
    # forward sections in parallel, the largest (most distinct kernel variants) first. (Until 2026-12-02 the
    # largest bucket's whole forward ran serially here: with the large-batch kernel tables it compiled its
    # variants alone for most of the start.)
    for bp in graphs.sizes:
        graphs._fill_idle(bp)
    graphs._fill_idle(graphs.max_bs)
    top = graphs.buckets[graphs.max_bs]
    with torch.inference_mode():
        for name in graphs.graph_names:
            for label, fn in graphs._sections(top, name, {}):
                if label == "stage":
                    fn()

    def one(bp: int) -> None:
        bk, out = graphs.buckets[bp], {}
        with torch.inference_mode(), (torch.cuda.device(device) if device.type == "cuda" else nullcontext()):
            for name in graphs.graph_names:
                for label, fn in graphs._sections(bk, name, out):
                    if label != "stage":  # the shared staging buffer is laid out for the largest bucket
                        fn()

    with ThreadPoolExecutor(max_workers=max(1, n), thread_name_prefix="v4serve-compile") as pool:
        for fut in [pool.submit(one, bp) for bp in reversed(graphs.sizes)]:
            fut.result()  # re-raises a failed forward
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    dt = time.monotonic() - t0
    log.info("compiled the decode kernels of %d batch buckets with %d threads in %.1fs", len(graphs.sizes), n, dt)
    return dt
