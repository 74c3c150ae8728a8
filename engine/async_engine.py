"""Async front of the engine for the HTTP server.

The synchronous `LLMEngine` runs in one background thread ("engine loop"); the asyncio side never
touches engine state directly. Commands (add / abort) go through a thread-safe queue that the loop
drains before every step; a step's outputs come back through one `loop.call_soon_threadsafe` into one
asyncio.Queue per request. The event loop is never blocked by model work. A DELTA consumer that falls
behind (the event loop busy streaming) takes the outputs waiting in its queue as one merged output
(`outputs.merge_deltas`): fewer events to serialize when the loop cannot keep up, the same text.

    event loop thread                       engine thread
    generate() --("add", ...)-->  cmds  -->  engine.add_request
    abort()    --("abort", id)->  cmds  -->  engine.abort_request (frees cache at this step)
    queue.get() <--- call_soon_threadsafe ---  engine.step() outputs (cumulative, delta or final-only)

The engine thread and the event loop share one interpreter, so every step waits for the GIL while the
loop serializes streamed chunks. Python hands the GIL over every 5 ms by default, about half a decode step
on an H200; while the engine loop runs, the switch interval is ENGINE_GIL_SWITCH_INTERVAL_S (0.5 ms),
restored at shutdown. Measured with the 8-layer V4-Flash checkpoint, 256 chat requests at concurrency 64
(bench/serve.py, docs/benchmarks.md): 2,666 -> 3,574 output tok/s, mean TTFT 614 -> 360 ms.

An exception inside a step kills the engine (vLLM's EngineDeadError): every open stream gets an
`EngineDeadError`, `is_ready` turns False and `on_death(exc)` runs on the event loop (the server
exits non-zero so an orchestrator restarts it). `fault_hook` (tests; `V4SERVE_FAULT_AFTER_STEPS=N`
in the environment) runs before every step and may raise to inject such a fault.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import queue
import sys
import threading
import time
from pathlib import Path
from typing import AsyncIterator, Callable

from models.config import ModelConfig
from models.loader import validate_checkpoint

from .admission import admit
from .config import EngineArgs
from .errors import EngineDeadError
from .guided.grammar import GuideCompiler
from .llm_engine import EngineStats, LLMEngine
from .outputs import OutputKind, RequestOutput, merge_deltas
from .tokenizer import Tokenizer
from .sampling_params import SamplingParams

log = logging.getLogger("v4serve.async")

_IDLE_WAIT_S = 0.05
ENGINE_GIL_SWITCH_INTERVAL_S = 5e-4  # sys.setswitchinterval while the engine loop runs (module docstring)


class AsyncLLM:
    """`AsyncLLM(engine)` wraps a built engine; `AsyncLLM.from_engine_args(args, defer_load=True)`
    resolves the checkpoint, tokenizer and config now and builds the engine (weights, KV cache) in
    `start()`, so an HTTP server can answer /health with 503 while the model loads."""

    def __init__(self, engine: LLMEngine | None, model_name: str | None = None, *,
                 deferred_args: EngineArgs | None = None, owns_engine: bool = False):
        if (engine is None) == (deferred_args is None):
            raise ValueError("pass either a built engine or deferred_args")
        self.engine = engine
        # an engine built here is shut down here (TP workers); a caller's engine stays the caller's
        self._owns_engine = owns_engine or engine is None
        self._args = engine.args if engine is not None else deferred_args
        if engine is not None:
            self.tokenizer, self.model_config = engine.tokenizer, engine.model_config
            self.max_model_len, model_dir = engine.max_model_len, engine.model_dir
            self._stats = engine.stats()
        else:
            model_dir = Path(self._args.model)
            self.model_config = ModelConfig.from_json(model_dir)
            validate_checkpoint(model_dir, self.model_config)  # fail fast on a bad checkpoint
            self.tokenizer = Tokenizer.from_dir(model_dir)
            # provisional until the cache is sized in start()
            self.max_model_len = self._args.max_model_len or self.model_config.max_position_embeddings
            self._stats = EngineStats(0, 0, 0.0, 0, 0, 0, 0)
        self.model_name = model_name or model_dir.name
        # structured-output grammars, compiled by the server off the event loop (engine/guided)
        self.guides = GuideCompiler(self.tokenizer, self.model_config.vocab_size)
        self.is_ready = False
        self._cmds: queue.SimpleQueue = queue.SimpleQueue()
        self._wake = threading.Event()
        self._streams: dict[str, asyncio.Queue] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._saved_switch_interval: float | None = None  # the host's GIL switch interval while ours is set
        self._stop = threading.Event()
        self._dead: BaseException | None = None
        self._num_pending_adds = 0
        self.on_death: Callable[[BaseException], None] | None = None  # called on the event loop
        self.fault_hook: Callable[[], None] | None = _env_fault_hook()  # before every step (tests)

    @classmethod
    def from_engine_args(cls, args: EngineArgs, defer_load: bool = False) -> "AsyncLLM":
        if not defer_load:
            return cls(LLMEngine(args), model_name=args.served_model_name, owns_engine=True)
        args.validate()
        if args.model is None:
            from models.demo import ensure_demo_model

            args = dataclasses.replace(args, model=str(ensure_demo_model()))
        return cls(None, model_name=args.served_model_name, deferred_args=args)

    # ---- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Build the engine if deferred (in a worker thread), then start the engine loop."""
        if self._thread is not None:
            return
        self._loop = asyncio.get_running_loop()
        if self.engine is None:
            self.engine = await asyncio.to_thread(LLMEngine, self._args)
            self.max_model_len = self.engine.max_model_len
            self._stats = self.engine.stats()
        self._saved_switch_interval = None
        if sys.getswitchinterval() > ENGINE_GIL_SWITCH_INTERVAL_S:  # never raise a shorter one the host chose
            self._saved_switch_interval = sys.getswitchinterval()
            sys.setswitchinterval(ENGINE_GIL_SWITCH_INTERVAL_S)
        self._thread = threading.Thread(target=self._run, name="v4serve-engine", daemon=True)
        self._thread.start()
        self.is_ready = True

    async def shutdown(self, timeout: float = 10.0) -> None:
        """Abort everything in flight, stop the loop and wait for it (at most `timeout` s)."""
        self.is_ready = False
        for rid in list(self._streams):
            self._cmds.put(("abort", rid))
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, timeout)
            self._thread = None
            if self._saved_switch_interval is not None:
                sys.setswitchinterval(self._saved_switch_interval)
        if self.engine is not None and self._owns_engine:
            self.engine.shutdown()  # stops tensor-parallel workers, if any

    # ---- requests ----------------------------------------------------------------------------
    def check_request(self, prompt_len: int, params: SamplingParams) -> None:
        """The admission rule (engine/admission.py) on the last published counts, synchronously, so
        HTTP can answer 400/429 before streaming; the engine thread decides again with live counts."""
        if self._dead is not None:
            raise EngineDeadError(f"the engine stopped after an internal error: {self._dead}")
        admit(prompt_len, params.max_tokens, params.n, max_model_len=self.max_model_len,
              kv_capacity=self.engine.kv.capacity_tokens if self.engine is not None else None,
              num_waiting=self._stats.num_waiting + self._num_pending_adds,
              max_queued=self._args.max_queued_requests, min_tokens=params.min_tokens)

    async def generate(self, prompt_token_ids: list[int], params: SamplingParams,
                       request_id: str, output_kind: OutputKind = OutputKind.CUMULATIVE
                       ) -> AsyncIterator[RequestOutput]:
        """Outputs until the finished one: cumulative snapshots, deltas (streaming callers) or only
        the finished one (FINAL_ONLY, non-streaming callers); closing the iterator aborts the request."""
        if not self.is_ready or self._loop is None:
            raise EngineDeadError("the engine is not running")
        self.check_request(len(prompt_token_ids), params)
        if request_id in self._streams:
            raise ValueError(f"duplicate request id {request_id!r}")
        q: asyncio.Queue = asyncio.Queue()
        self._streams[request_id] = q
        self._num_pending_adds += params.n
        self._cmds.put(("add", request_id, list(prompt_token_ids), params, time.monotonic(), output_kind))
        self._wake.set()
        finished = False
        held: BaseException | None = None  # an error found while merging: raised after the merged output
        try:
            while True:
                item = held if held is not None else await q.get()
                held = None
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                # a consumer behind the engine takes every DELTA output already waiting as one (fewer SSE
                # events when the event loop cannot keep up; the text is the same)
                while item.kind is OutputKind.DELTA and not item.finished and not q.empty():
                    nxt = q.get_nowait()
                    if isinstance(nxt, BaseException):
                        held = nxt
                        break
                    item = merge_deltas(item, nxt)
                yield item
                if item.finished:
                    finished = True
                    return
        finally:
            self._streams.pop(request_id, None)
            if not finished:
                self._cmds.put(("abort", request_id))
                self._wake.set()

    async def abort(self, request_id: str) -> None:
        self._cmds.put(("abort", request_id))
        self._wake.set()

    async def abort_all(self) -> None:
        """Abort every request in flight: each consumer gets its final "abort" output."""
        for rid in list(self._streams):
            self._cmds.put(("abort", rid))
        self._wake.set()

    async def reset_prefix_cache(self) -> int:
        """Drop every unreferenced cached block (on the engine thread, between steps) -> blocks dropped."""
        fut = asyncio.get_running_loop().create_future()
        self._cmds.put(("reset_prefix_cache", fut))
        self._wake.set()
        return await fut

    def stats(self) -> EngineStats:
        return self._stats

    # ---- engine thread -----------------------------------------------------------------------
    def _deliver(self, request_id: str, item) -> None:
        q = self._streams.get(request_id)
        if q is not None:
            q.put_nowait(item)

    def _deliver_all(self, outs: list[RequestOutput]) -> None:
        for out in outs:
            self._deliver(out.request_id, out)

    def _post(self, request_id: str, item) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._deliver, request_id, item)

    def _drain_commands(self) -> None:
        eng = self.engine
        while True:
            try:
                cmd = self._cmds.get_nowait()
            except queue.Empty:
                return
            if cmd[0] == "add":
                _, rid, ids, params, arrival, output_kind = cmd
                self._loop.call_soon_threadsafe(self._added, params.n)
                try:
                    eng.add_request(rid, ids, params, arrival_time=arrival, output_kind=output_kind)
                except Exception as e:  # admission errors reach the caller's first __anext__
                    self._post(rid, e)
            elif cmd[0] == "reset_prefix_cache":
                fut = cmd[1]
                try:
                    res = eng.reset_prefix_cache()
                    self._loop.call_soon_threadsafe(lambda r=res: fut.done() or fut.set_result(r))
                except Exception as e:  # noqa: BLE001 - the HTTP caller gets it
                    self._loop.call_soon_threadsafe(lambda e=e: fut.done() or fut.set_exception(e))
            else:
                out = eng.abort_request(cmd[1])
                if out is not None:
                    log.info("aborted %s", cmd[1])
                    # a consumer still iterating (abort() from outside) gets the final "abort"
                    # output instead of waiting forever; a closed stream has no queue: dropped
                    self._post(cmd[1], out)

    def _added(self, n: int) -> None:
        self._num_pending_adds -= n

    def _run(self) -> None:
        eng = self.engine
        try:
            while not self._stop.is_set():
                self._drain_commands()
                if not eng.has_unfinished():
                    self._stats = eng.stats()
                    self._wake.wait(_IDLE_WAIT_S)
                    self._wake.clear()
                    continue
                if self.fault_hook is not None:
                    self.fault_hook()
                outs = eng.step()
                if outs:  # one hand-over per step, not one per request (each wakes the event loop)
                    self._loop.call_soon_threadsafe(self._deliver_all, outs)
                self._stats = eng.stats()
            self._drain_commands()
            for rid in list(eng.requests):
                out = eng.abort_request(rid)
                if out is not None:
                    self._post(rid, out)
            self._stats = eng.stats()
        except BaseException as e:  # noqa: BLE001 - a dead engine must fail every stream loudly
            log.exception("engine loop died")
            self._dead = e
            self.is_ready = False
            err = EngineDeadError(f"the engine stopped after an internal error: {e}")
            for rid in list(self._streams):
                self._post(rid, err)
            if self.on_death is not None and self._loop is not None:  # after the errors: FIFO
                self._loop.call_soon_threadsafe(self.on_death, e)


def _env_fault_hook() -> Callable[[], None] | None:
    """`V4SERVE_FAULT_AFTER_STEPS=N`: the (N+1)-th engine step raises (fault-injection tests)."""
    raw = os.environ.get("V4SERVE_FAULT_AFTER_STEPS")
    if not raw:
        return None
    left = [int(raw)]

    def hook() -> None:
        if left[0] <= 0:
            raise RuntimeError("injected engine fault (V4SERVE_FAULT_AFTER_STEPS)")
        left[0] -= 1
    return hook
