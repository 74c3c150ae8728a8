"""Rank 0 of a tensor-parallel engine: spawns and drives the N-1 worker processes (issue 7).

    engine process (rank 0)                         worker process r (1..N-1)
    scheduler, KV-cache accounting, sampling        its model shard + a replica of the KV state
    TPExecutor(...)  -- spawn ------------------->  worker_main: load_model_sharded (own slices)
    load_model_sharded (rank 0 slices)              <-- ("loaded", r, bytes)
    process group (gloo on CPU / NCCL on CUDA)  <=> process group
    init_state(...)  -- ("state", ...) -------->    allocate_state; <-- ("ready", r)
    every step: send_step(host batch) ---------->   ForwardBatch on its device
    model(batch, state) + compute_logits   <==collectives==>  model(batch, state) + compute_logits
    (rank 0 gets the full logits and samples)

The control plane (step descriptions) goes over one pipe per worker: an idle engine can wait forever
for requests, while the data plane's collectives carry a timeout (V4SERVE_TP_TIMEOUT_S, default 300 s),
so a hung peer turns into an error instead of a hang. A watchdog thread waits on the workers' process
sentinels; a dead worker, a worker exception or a failed / timed-out collective stops the engine with
`EngineDeadError` naming the rank, its exit code and its traceback when it sent one.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import multiprocessing.connection as mpc
import os
import shutil
import tempfile
import threading
import time
import weakref
from pathlib import Path

import numpy as np
import torch

from models.config import ModelConfig
from models.parallel import ParallelConfigError, ParallelContext, check_divisibility, default_timeout

from ..errors import EngineDeadError
from .worker import abort_group, make_group, worker_main

log = logging.getLogger("v4serve.tp")


def _startup_timeout() -> float:
    return float(os.environ.get("V4SERVE_TP_STARTUP_TIMEOUT_S", "1800"))


def _start_method(device: torch.device) -> str:
    m = os.environ.get("V4SERVE_TP_START_METHOD")
    if m:
        return m
    return "spawn"  # CUDA needs spawn; on CPU it also keeps the workers free of the parent's threads


def _cleanup(procs, conns, tmpdir, groups) -> None:
    for c in conns:
        try:
            c.send(("shutdown",))
        except Exception:  # noqa: BLE001
            pass
    deadline = time.monotonic() + 5.0
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.terminate()
            p.join(2.0)
        if p.is_alive():
            p.kill()
            p.join(1.0)
    for c in conns:
        with contextlib.suppress(Exception):
            c.close()
    for g in groups:
        abort_group(g)
    groups.clear()
    shutil.rmtree(tmpdir, ignore_errors=True)


class TPExecutor:
    """Spawns workers 1..N-1, loads rank 0's shard in this process and joins the process group."""

    def __init__(self, model_dir: str | Path, world_size: int, device: torch.device, dtype: torch.dtype, *,
                 timeout: datetime.timedelta | None = None, worker_options: dict | None = None,
                 include_mtp: bool = False):
        cfg = ModelConfig.from_json(model_dir)
        check_divisibility(cfg, world_size)  # before anything is spawned
        if world_size < 2:
            raise ParallelConfigError("TPExecutor needs tensor_parallel_size >= 2")
        if device.type == "cuda" and torch.cuda.device_count() < world_size:
            raise ParallelConfigError(f"tensor_parallel_size={world_size} needs {world_size} GPUs, "
                                      f"{torch.cuda.device_count()} visible")
        self.world_size = world_size
        self.device = device
        self.timeout = timeout or default_timeout()
        self.dead: str | None = None
        self._lock = threading.Lock()
        self._tmpdir = tempfile.mkdtemp(prefix="v4serve-tp-")
        store_path = os.path.join(self._tmpdir, "store")
        init_timeout = datetime.timedelta(seconds=_startup_timeout())
        spec = {"model_dir": str(model_dir), "device": device.type, "dtype": dtype, "timeout": self.timeout,
                "init_timeout": init_timeout, "log_level": logging.getLogger().getEffectiveLevel(),
                "include_mtp": include_mtp}  # speculative decoding: the MTP block's shard too
        spec.update(worker_options or {})
        mp = torch.multiprocessing.get_context(_start_method(device))
        if mp.get_start_method() == "forkserver":  # torch + the model code imported once, in the server
            mp.set_forkserver_preload(["engine.distributed.worker", "models.sharded_loader"])
        self.procs, self.conns, self._groups = [], [], []
        self._finalizer = weakref.finalize(self, _cleanup, self.procs, self.conns, self._tmpdir, self._groups)
        t0 = time.monotonic()
        try:
            for r in range(1, world_size):
                parent, child = mp.Pipe(duplex=True)
                p = mp.Process(target=worker_main, args=(r, world_size, spec, child, store_path), daemon=True,
                               name=f"v4serve-tp{r}")
                p.start()
                child.close()
                self.procs.append(p)
                self.conns.append(parent)
            self.ctx = ParallelContext(0, world_size)
            from models.sharded_loader import load_model_sharded

            self.model = load_model_sharded(model_dir, self.ctx, device, dtype, include_mtp=include_mtp)
            self._wait_all("loaded", _startup_timeout())
            self.ctx.group = make_group(store_path, 0, world_size, device, init_timeout, self.timeout)
            self._groups.append(self.ctx.group)
        except BaseException:
            self.shutdown()
            raise
        self._watchdog = threading.Thread(target=self._watch, name="v4serve-tp-watchdog", daemon=True)
        self._watchdog.start()
        log.info("tensor parallel: %d ranks (%s, %s) up in %.1fs", world_size,
                 "nccl" if device.type == "cuda" else "gloo", device.type, time.monotonic() - t0)

    # ---- lifecycle -----------------------------------------------------------------------------
    def _worker_failure(self, i: int, exited: bool = False) -> str:
        """Why worker i (rank i+1) is gone: its traceback if it sent one, else its exit code."""
        rank, p, c = i + 1, self.procs[i], self.conns[i]
        tb = None
        with contextlib.suppress(Exception):
            while c.poll(0):
                msg = c.recv()
                if msg[0] == "error":
                    tb = msg[2]
        if tb is not None:
            return f"tensor-parallel worker rank {rank} (pid {p.pid}) failed:\n{tb.rstrip()}"
        if exited or not p.is_alive():
            p.join(1.0)  # reap it (another thread may be joining it too: the exit code can stay unknown)
            code = "unknown" if p.exitcode is None else p.exitcode
            return f"tensor-parallel worker rank {rank} (pid {p.pid}) died with exit code {code}"
        return ""

    def _wait_all(self, kind: str, timeout: float) -> None:
        """Wait for message `kind` from every worker, failing fast when one dies or reports an error."""
        pending = dict(enumerate(self.conns))
        deadline = time.monotonic() + timeout
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                ranks = sorted(i + 1 for i in pending)
                raise EngineDeadError(f"tensor-parallel workers {ranks} did not report {kind!r} within {timeout:.0f}s")
            ready = mpc.wait(list(pending.values()) + [self.procs[i].sentinel for i in pending], min(left, 1.0))
            for i, c in list(pending.items()):
                if c in ready or self.procs[i].sentinel in ready:
                    try:
                        msg = c.recv() if c.poll(0) else None
                    except (EOFError, OSError):
                        msg = None
                    if msg is not None and msg[0] == kind:
                        del pending[i]
                        continue
                    if msg is not None and msg[0] == "error":
                        raise EngineDeadError(f"tensor-parallel worker rank {i + 1} failed during {kind!r}:\n"
                                              f"{msg[2].rstrip()}")
                    if not self.procs[i].is_alive():
                        raise EngineDeadError(self._worker_failure(i) or f"worker rank {i + 1} died")

    def _watch(self) -> None:
        """Watchdog: the first worker exit marks the executor dead (and aborts NCCL so no rank hangs)."""
        sentinels = {p.sentinel: i for i, p in enumerate(self.procs)}
        while sentinels and self.dead is None:
            ready = mpc.wait(list(sentinels), 1.0)
            if self._finalizer.alive is False or getattr(self, "_closing", False):
                return
            for s in ready:
                i = sentinels.pop(s)
                reason = self._worker_failure(i, exited=True)
                self._mark_dead(reason)
                return

    def _mark_dead(self, reason: str) -> None:
        if self.dead is None:
            self.dead = reason
            log.error("tensor-parallel engine stopped: %s", reason)
            g = getattr(self.ctx, "group", None)
            if self.device.type == "cuda" and g is not None and hasattr(g, "abort"):
                with contextlib.suppress(Exception):
                    g.abort()  # unblock a collective waiting on the dead rank

    def shutdown(self) -> None:
        self._closing = True
        self._finalizer()

    # ---- steps ---------------------------------------------------------------------------------
    def check_alive(self) -> None:
        if self.dead is not None:
            raise EngineDeadError(self.dead)
        for i, p in enumerate(self.procs):
            if not p.is_alive():
                self._mark_dead(self._worker_failure(i) or f"tensor-parallel worker rank {i + 1} exited")
                raise EngineDeadError(self.dead)

    def init_state(self, num_slots: int, num_blocks: int, block_size: int, kv_format: str = "bf16",
                   num_snapshots: int = 0) -> None:
        """Every worker allocates its replica of the KV state tensors (same shapes as rank 0's) and of the
        prefix cache's slot snapshots (each step description carries the restores / saves to apply)."""
        for c in self.conns:
            c.send(("state", num_slots, num_blocks, block_size, kv_format, num_snapshots))
        self._wait_all("ready", _startup_timeout())

    multi_process = True  # no CUDA graphs, every input id on the host (no async scheduling)

    def forward(self, batch, state, host, ops) -> torch.Tensor:
        """One step: the workers get its host description (engine.model_runner.HostBatch) and the
        prefix-cache state ops, then rank 0 runs its shard; the collectives join the ranks."""
        self.send_step(host.worker_step(ops))
        return self.model(batch, state)

    def send_step(self, host: dict, kind: str = "step") -> None:
        """Hand one step's batch description to every worker (they start the same forward). `kind`:
        "step", or a speculative-decoding command (engine/spec_decode_tp.py; host may then be any value)."""
        self.check_alive()
        if isinstance(host, dict):
            host = {k: (np.asarray(v, dtype=np.int64) if isinstance(v, (list, np.ndarray)) and not k.endswith("items")
                        else v) for k, v in host.items()}
        msg = (kind, host)
        try:
            for c in self.conns:
                c.send(msg)
        except (BrokenPipeError, OSError) as e:
            self.check_alive()
            self._mark_dead(f"lost the pipe to a tensor-parallel worker: {e}")
            raise EngineDeadError(self.dead) from e

    @contextlib.contextmanager
    def guard(self):
        """Run rank 0's part of a step; a failed or timed-out collective becomes EngineDeadError."""
        try:
            yield
        except EngineDeadError:
            raise
        except Exception as e:
            time.sleep(0.2)  # let a crashing worker's report / exit arrive
            reason = next((r for r in (self._worker_failure(i) for i in range(len(self.procs))) if r), None)
            self._mark_dead(reason or f"tensor-parallel collective failed on rank 0: {type(e).__name__}: {e}")
            raise EngineDeadError(self.dead) from e
