"""Tensor-parallel worker process (rank r >= 1): holds its shard of the model and its own copy of the
replicated KV state tensors; runs the same forward as rank 0 on every step description it receives.

Protocol over the duplex pipe to rank 0 (see executor.py):
    worker -> ("loaded", rank, weight_bytes) | ("ready", rank) | ("error", rank, traceback)
    rank 0 -> ("state", num_slots, num_blocks, block_size, kv_format, num_snapshots) | ("step", host batch)
              | ("spec_*", ...) (speculative decoding, engine/spec_decode_tp.py) | ("shutdown",)
A step's "restores" / "saves" (prefix caching, kvcache/snapshots.py) are applied to this rank's state
replica before / after its forward, exactly as rank 0 does.
The model collectives (all-reduce / gather) run over the process group built by `make_group`.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import multiprocessing as mp
import os
import traceback

import numpy as np
import torch

log = logging.getLogger("v4serve.tp.worker")


def make_group(store_path: str, rank: int, world_size: int, device: torch.device,
               init_timeout: datetime.timedelta, timeout: datetime.timedelta):
    """A standalone process group (no global torch.distributed state, so several engines can live in
    one process): NCCL on CUDA devices, gloo on CPU. `init_timeout` bounds the rendezvous, `timeout`
    every collective afterwards."""
    import torch.distributed as dist

    store = dist.FileStore(store_path, world_size)
    if device.type == "cuda":
        opts = dist.ProcessGroupNCCL.Options()
        opts._timeout = timeout
        return dist.ProcessGroupNCCL(dist.PrefixStore("nccl", store), rank, world_size, opts)
    pg = dist.ProcessGroupGloo(dist.PrefixStore("gloo", store), rank, world_size, init_timeout)
    if hasattr(pg, "_set_default_timeout"):
        pg._set_default_timeout(timeout)
    return pg


def abort_group(g) -> None:
    """Tear a process group down without a collective (a NCCL group left to the garbage collector
    blocked in its destructor for minutes in the GPU run)."""
    for name in ("abort", "shutdown"):
        fn = getattr(g, name, None)
        if fn is not None:
            with contextlib.suppress(Exception):
                fn()
                return


def batch_from_host(host: dict, device: torch.device):
    """The ForwardBatch a step description (numpy arrays + lists) stands for, on `device`."""
    from models.state import ForwardBatch

    def t(a):
        return torch.from_numpy(np.asarray(a, dtype=np.int64)).to(device)

    return ForwardBatch(input_ids=t(host["input_ids"]), positions=t(host["positions"]), slot_ids=t(host["slot_ids"]),
                        block_tables=t(host["block_tables"]), logits_indices=t(host["logits_indices"]),
                        query_start=list(host["query_start"]), context_lens=list(host["context_lens"]))


def worker_main(rank: int, world_size: int, spec: dict, conn, store_path: str) -> None:
    from models.parallel import ParallelContext
    from models.loading import weight_bytes
    from models.sharded_loader import load_model_sharded
    from kvcache.prefix_cache import apply_state_ops
    from kvcache.snapshots import allocate_snapshots
    from models.state import allocate_state

    logging.basicConfig(level=spec.get("log_level", logging.WARNING),
                        format=f"%(asctime)s %(levelname)s [tp rank {rank}] %(name)s: %(message)s")
    parent = mp.parent_process()
    try:
        device = torch.device(spec["device"])
        if device.type == "cuda":
            device = torch.device("cuda", rank)
            torch.cuda.set_device(device)
        if spec.get("crash_at_load"):  # tests: a worker that fails while loading
            raise RuntimeError("injected load failure")
        ctx = ParallelContext(rank, world_size)
        model = load_model_sharded(spec["model_dir"], ctx, device, spec["dtype"],
                                   include_mtp=spec.get("include_mtp", False))
        conn.send(("loaded", rank, weight_bytes(model)))
        ctx.group = make_group(store_path, rank, world_size, device, spec["init_timeout"], spec["timeout"])
        state = None
        snaps: list = []  # prefix caching: this rank's slot-state snapshots
        spec_w = None  # speculative decoding's worker side (engine/spec_decode_tp.py), made on first use
        while True:
            if not conn.poll(0.5):
                if parent is not None and not parent.is_alive():
                    log.warning("engine process is gone; worker exits")
                    return
                continue
            msg = conn.recv()
            kind = msg[0]
            if kind == "step":
                host = msg[1]
                batch = batch_from_host(host, device)
                if "spec_streams" in host:  # a speculative verify step
                    from engine.spec_decode_tp import SpecWorker

                    spec_w = spec_w or SpecWorker()
                    spec_w.step(host, batch, model, state, snaps, apply_state_ops)
                    continue

                def forward():
                    hidden = model(batch, state)
                    if batch.logits_indices.numel():
                        model.compute_logits(hidden)  # joins the vocabulary gather to rank 0

                with torch.inference_mode():
                    apply_state_ops(state, snaps, host.get("restores", ()), host.get("saves", ()), forward)
            elif kind == "state":
                _, num_slots, num_blocks, block_size, kv_format, num_snapshots = msg
                state = None
                kw = {} if kv_format == "bf16" else {"kv_format": kv_format}
                state = allocate_state(model.cfg, num_slots, num_blocks, block_size, spec["dtype"], device, **kw)
                snaps = (allocate_snapshots(model.cfg, num_snapshots, block_size, spec["dtype"], device, kv_format)
                         if num_snapshots else [])
                conn.send(("ready", rank))
            elif kind.startswith("spec_"):
                spec_w.handle(msg, model, state, device, batch_from_host)
            elif kind == "shutdown":
                if device.type == "cuda":  # no collective on the way out; see abort_group
                    abort_group(ctx.group)
                return
            else:
                raise RuntimeError(f"unknown command {kind!r}")
    except (EOFError, BrokenPipeError, KeyboardInterrupt):
        return  # the engine went away
    except BaseException:  # noqa: BLE001 - report, then die loudly
        tb = traceback.format_exc()
        log.error("tensor-parallel worker failed:\n%s", tb)
        try:
            conn.send(("error", rank, tb))
        except Exception:  # noqa: BLE001
            pass
        os._exit(1)
