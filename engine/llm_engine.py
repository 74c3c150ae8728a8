"""The synchronous engine: owns the model, the KV-cache manager, the scheduler, the runner and the
sampler. `add_request` / `abort_request` / `step()`; one step = schedule -> run -> sample ->
append tokens -> check stop conditions -> free finished sequences -> outputs of changed requests
(each in its request's `OutputKind`: cumulative snapshot, delta, or only the finished output).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from kernels.kv_format import check_kernel_dims
from kvcache.manager import KVCacheManager
from kvcache.sizing import (choose_block_size, gpu_kv_budget, log_cache_plan, num_blocks_for_budget,
                            num_snapshot_rows, prefix_snapshot_interval)
from models.config import ModelConfig
from models.loading import load_model, weight_bytes

from .async_step import LaunchedStep
from .config import EngineArgs, SchedulerConfig
from .detokenizer import IncrementalDetokenizer
from .h2d import h2d
from .eager_warmup import run_eager_warmup, warmup_prompt_lens
from .kernel_compiles import serving_watch
from .guided.grammar import GuideCompiler, GuideCursor
from .model_runner import ModelRunner, RunnerOutput
from .outputs import OutputKind, RequestOutput
from .request_state import RequestState, SampleState
from .sampler import Sampler, SamplingMetadata, gather_logprobs, make_generator
from .sampling_params import SamplingParams
from .scheduler import Scheduler, SchedulerOutput
from .sequence import Sequence, SequenceStatus, reached_length, token_stop
from .step_stats import StepStats
from .tokenizer import Tokenizer

log = logging.getLogger("v4serve.engine")

CPU_DEFAULT_KV_BYTES = 256 << 20  # CPU serving is for small models; --kv-cache-memory raises it


@dataclass
class EngineStats:
    num_running: int  # sequences
    num_waiting: int  # sequences (incl. preempted)
    kv_cache_usage: float  # fraction of KV blocks in use, 0..1
    num_preemptions_total: int
    prompt_tokens_total: int  # prompt tokens of finished + running requests' prefills (counted once)
    generation_tokens_total: int
    num_requests: int  # unfinished requests
    prefix_cache_queries_total: int = 0  # prompt tokens looked up in the prefix cache
    prefix_cache_hits_total: int = 0  # of those, tokens reused
    spec_decode: object = None  # engine.spec_decode.SpecDecodeStats when speculative decoding is on
    steps: StepStats | None = None  # steps and their wall seconds by kind (engine/step_stats.py), a copy
    kernel_compiles_total: int = 0  # Triton compiles (or on-disk cache loads) after start-up: steps waited for them
    kernel_compile_seconds_total: float = 0.0


def _step_size(sched: SchedulerOutput) -> str:
    """A step's size for the slow-step log line (built only for a slow step)."""
    return f"{len(sched.chunks)} sequences, {sched.num_batched_tokens} tokens"


class LLMEngine:
    def __init__(self, args: EngineArgs):
        args.validate()
        self.args = args
        self.device = args.resolve_device()
        self.dtype = args.resolve_dtype(self.device)
        model_dir = args.model
        if model_dir is None:
            from models.demo import ensure_demo_model

            model_dir = ensure_demo_model()
        self.model_dir = Path(model_dir)
        self.model_config = ModelConfig.from_json(self.model_dir)
        # before any weight loads: a KV format the device's kernels cannot store is a clear error here
        check_kernel_dims(args.kv_format, self.model_config.head_dim, self.model_config.qk_rope_head_dim, self.device)
        self.tokenizer = Tokenizer.from_dir(self.model_dir)
        t0 = time.monotonic()
        self.executor = None  # tensor parallel: rank 0's driver of the N-1 worker processes
        if args.tensor_parallel_size > 1:
            from .distributed.executor import TPExecutor

            self.executor = TPExecutor(self.model_dir, args.tensor_parallel_size, self.device, self.dtype,
                                       include_mtp=args.spec_config is not None)  # speculative decoding
            self.model = self.executor.model
        else:
            spec = args.spec_config  # speculative decoding (engine/spec_decode.py): the MTP block loads too
            self.model = load_model(self.model_dir, device=self.device, dtype=self.dtype, include_mtp=spec is not None)
        weights_bytes = weight_bytes(self.model)  # parameters and buffers (resident FP8/MXFP4 scales too)
        cfg = self.model_config
        self.block_size = choose_block_size(cfg, args.block_size)
        budget_tokens = args.resolve_max_num_batched_tokens(self.device)  # tokens per step
        num_slots = args.max_num_seqs
        snap_interval = None  # prefix caching: tokens between slot-state snapshots (kvcache/sizing.py)
        if args.enable_prefix_caching:
            snap_interval = prefix_snapshot_interval(cfg, self.block_size, self.dtype, args.kv_format,
                                                     args.prefix_snapshot_interval, budget_tokens)
        if args.num_kv_blocks is not None:
            num_blocks = args.num_kv_blocks
        else:
            if args.kv_cache_memory is not None:
                budget = args.kv_cache_memory
            elif self.device.type == "cuda":
                budget = gpu_kv_budget(args.gpu_memory_utilization, self.device)
            else:
                budget = CPU_DEFAULT_KV_BYTES
            num_blocks = num_blocks_for_budget(cfg, budget, num_slots, self.block_size, self.dtype, args.kv_format,
                                               snapshot_interval=snap_interval)
        num_snaps = num_snapshot_rows(num_blocks, self.block_size, snap_interval, num_slots) if snap_interval else 0
        use_graphs = (self.device.type == "cuda" and not args.enforce_eager and self.executor is None
                      and args.spec_config is None)  # speculation: its own graphs (engine/spec_decode_graphs.py)
        self.kv = KVCacheManager(cfg, num_blocks=num_blocks, num_slots=num_slots, block_size=self.block_size,
                                 dtype=self.dtype, device=self.device, kv_format=args.kv_format,
                                 pad_row=use_graphs or args.spec_config is not None,  # + speculative graphs
                                 enable_prefix_caching=args.enable_prefix_caching, num_snapshots=num_snaps,
                                 snapshot_interval=snap_interval)
        if self.executor is not None:
            self.executor.init_state(num_slots, num_blocks, self.block_size, args.kv_format, num_snaps)
        capacity = num_blocks * self.block_size
        self.max_model_len = args.max_model_len or min(cfg.max_position_embeddings, capacity)
        if self.max_model_len > cfg.max_position_embeddings:
            raise ValueError(f"max_model_len {self.max_model_len} exceeds the model's "
                             f"max_position_embeddings {cfg.max_position_embeddings}")
        self.scheduler = Scheduler(SchedulerConfig(
            max_num_seqs=args.max_num_seqs, max_num_batched_tokens=budget_tokens,
            max_model_len=self.max_model_len, max_queued_requests=args.max_queued_requests,
            delay_factor=args.scheduler_delay_factor), self.kv)
        self.runner = ModelRunner(self.model, self.kv, self.device, self.tokenizer.vocab_size, executor=self.executor)
        self.load_s = time.monotonic() - t0  # load + cache allocation (start-up before the graph capture)
        if use_graphs:  # decode CUDA graphs (engine/cuda_graph.py); --enforce-eager skips them
            self.runner.capture_graphs(args.max_num_seqs, self.max_model_len)
        self.sampler = Sampler()
        self.spec = None  # speculative decoding (engine/spec_decode.py): MTP drafts, synchronous steps
        if args.spec_config is not None:
            from .spec_decode import SpecDecoder

            self.spec = SpecDecoder(self, args.spec_config.num_speculative_tokens)
        # overlapped loop (engine/async_step.py): the launched step whose tokens the host has not seen
        self.async_scheduling = args.resolve_async_scheduling(self.device) and self.executor is None
        self._inflight: LaunchedStep | None = None
        self.guides = GuideCompiler(self.tokenizer, self.model_config.vocab_size)  # structured outputs
        self.requests: dict[str, RequestState] = {}
        # decode([token_id]) per skip_special_tokens setting, shared by every detokenizer
        self._token_texts: dict[bool, dict[int, str]] = {True: {}, False: {}}
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0
        self.step_stats = StepStats()
        self._inflight_kind: tuple[str, SchedulerOutput] | None = None  # (step kind, its schedule) of `_inflight`
        self.kernel_compiles = None
        self._compiles_at_start = (0, 0.0)
        if args.resolve_eager_warmup(self.device):  # the eager steps' kernel variants compiled before serving
            self._eager_warmup(budget_tokens, args.seed)
        # kernels compiled after start-up (a specialization the warm-up did not meet): counted and logged (GPU;
        # the process's one watch, counted from here)
        self.kernel_compiles = serving_watch() if self.device.type == "cuda" else None
        self._compiles_at_start = (self.kernel_compiles.count, self.kernel_compiles.seconds) \
            if self.kernel_compiles is not None else (0, 0.0)
        kv_bytes = sum(t.numel() * t.element_size() for layer in self.kv.state.layers for t in layer.values())
        log_cache_plan(log, weights_bytes=weights_bytes, kv_bytes=kv_bytes, num_blocks=num_blocks,
                       block_size=self.block_size, num_slots=num_slots, max_model_len=self.max_model_len)
        log.info("engine ready in %.1fs: %s on %s (%s), %d tokens a step", time.monotonic() - t0, self.model_dir,
                 self.device, self.dtype, budget_tokens)

    def _eager_warmup(self, budget_tokens: int, seed: int) -> None:
        """engine/eager_warmup.py, then the state as a fresh engine's: no prefix cache entries, zero counters."""
        lens = warmup_prompt_lens(budget_tokens, self.max_model_len)
        w = run_eager_warmup(self, lens, seed)
        self.reset_prefix_cache()
        if self.kv.prefix is not None:
            self.kv.prefix.stats = type(self.kv.prefix.stats)()
        self.prompt_tokens_total = self.generation_tokens_total = 0
        self.scheduler.num_preemptions_total = 0
        self.runner.num_graph_steps = 0
        self.step_stats = StepStats()
        log.info("eager warm-up: %d of %d prompts (%d-%d tokens) and a crowd of %d sequences, %d steps in %.1fs",
                 w["prompts"], len(lens), lens[0] if lens else 0, lens[-1] if lens else 0, w["crowd"], w["steps"],
                 w["s"])

    def shutdown(self) -> None:
        """Stop the tensor-parallel workers (no-op for a single-process engine)."""
        if self.executor is not None:
            self.executor.shutdown()

    # ---- requests ----------------------------------------------------------------------------
    def add_request(self, request_id: str, prompt: str | list[int], params: SamplingParams,
                    arrival_time: float | None = None, output_kind: OutputKind = OutputKind.CUMULATIVE) -> None:
        """Queue a request. `output_kind` says what step() reports for it: a cumulative snapshot or a
        delta whenever it advanced, or (FINAL_ONLY) only its finished output."""
        if request_id in self.requests:
            raise ValueError(f"duplicate request id {request_id!r}")
        if isinstance(prompt, str):
            text, ids = prompt, self.tokenizer.encode(prompt)
        else:
            text, ids = None, [int(t) for t in prompt]
        vocab = self.model_config.vocab_size
        bad = [t for t in ids if not 0 <= t < vocab]
        if bad:
            raise ValueError(f"prompt token ids out of range [0, {vocab}): {bad[:5]}")
        # the one admission decision (empty prompt, lengths, KV capacity, queue cap); raises
        max_tokens = self.scheduler.admit(len(ids), params.max_tokens, params.n, params.min_tokens)
        for name, toks in (("logit_bias", params.logit_bias or ()), ("allowed_token_ids", params.allowed_token_ids or ()),
                           ("bad_words_token_ids", [t for s in params.bad_words_token_ids or () for t in s]),
                           ("guided_choice", [t for s in params.choice_token_ids or () for t in s])):
            out_of_range = [t for t in toks if t >= vocab]
            if out_of_range:
                raise ValueError(f"{name} token ids out of range [0, {vocab}): {out_of_range[:5]}")
        if params.guided_choice and params.choice_token_ids is None:
            params = params.with_updates(choice_token_ids=[self.tokenizer.encode(c) for c in params.guided_choice])
        if params.choice_token_ids is not None and self.tokenizer.eos_token_id is None:
            raise ValueError("guided_choice needs a tokenizer with an EOS token")
        spec = params.guide_spec()
        if spec is not None:
            if self.tokenizer.eos_token_id is None:
                raise ValueError(f"guided decoding ({spec[0]}) needs a tokenizer with an EOS token")
            if params.guide is None:
                params = params.with_updates(guide=self.guides.compile(*spec))
        if params.bad_words and params.bad_words_token_ids is None:
            params = params.with_updates(bad_words_token_ids=self._bad_word_sequences(params.bad_words))
        if params.allowed_token_ids is not None and params.min_tokens > 0:
            held_back = set(params.stop_token_ids) | {self.tokenizer.eos_token_id}
            if set(params.allowed_token_ids) <= held_back:
                raise ValueError("allowed_token_ids holds only EOS / stop tokens, which min_tokens masks: "
                                 "nothing could be sampled")
        now = arrival_time if arrival_time is not None else time.monotonic()
        samples = []
        for k in range(params.n):
            seq = Sequence(seq_id=f"{request_id}#{k}", request_id=request_id, sample_index=k,
                           prompt_token_ids=ids, max_tokens=max_tokens, arrival_time=now,
                           prefix_lookup=params.prompt_logprobs is None)  # cached positions have no logits
            gen = None
            if params.seed is not None and not params.greedy:
                gen = make_generator(params.seed + k * 1_000_003, self.device)
            detok = IncrementalDetokenizer(self.tokenizer, ids, skip_special_tokens=params.skip_special_tokens,
                                           stop=params.stop, include_stop_str_in_output=params.include_stop_str_in_output,
                                           min_tokens=params.min_tokens,
                                           token_text_cache=self._token_texts[params.skip_special_tokens])
            guide = GuideCursor(params.guide, params.guided_start_token_id) if params.guide is not None else None
            samples.append(SampleState(seq, detok, gen, [] if params.logprobs is not None else None, guide=guide))
        self.scheduler.enqueue([s.seq for s in samples])
        st = RequestState(request_id, text, ids, params, samples, arrival_time=now, output_kind=output_kind)
        st.mark("arrival", now)
        if params.prompt_logprobs is not None:
            st.prompt_logprobs = [None] * len(ids)
            st.prompt_logprob_ranks = [None] * len(ids)
        self.requests[request_id] = st

    def abort_request(self, request_id: str) -> RequestOutput | None:
        st = self.requests.pop(request_id, None)
        if st is None:
            return None
        self.scheduler.abort_request(request_id)
        for k, s in enumerate(st.samples):
            if s.finish_reason is None:
                s.detok.flush()
                st.finish_sample(k, "abort")
        return st.make_output()

    def has_unfinished(self) -> bool:
        return bool(self.requests)

    def stats(self) -> EngineStats:
        pc = self.kv.prefix.stats if self.kv.prefix is not None else None
        return EngineStats(self.scheduler.num_running, self.scheduler.num_waiting, self.kv.usage,
                           self.scheduler.num_preemptions_total, self.prompt_tokens_total,
                           self.generation_tokens_total, len(self.requests),
                           pc.queries if pc else 0, pc.hits if pc else 0,
                           self.spec.stats if self.spec is not None else None, self.step_stats.snapshot(),
                           *self._compiles_since_start())

    def reset_prefix_cache(self) -> int:
        """Drop every cached block no running sequence holds (and its state snapshot) -> blocks dropped."""
        return self.kv.reset_prefix_cache()

    # ---- one step ----------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """One engine step -> outputs of the requests it advanced (FINAL_ONLY ones: once finished).

        Synchronous: schedule -> forward -> sample -> process this step's tokens. Async scheduling
        (engine/async_step.py): schedule step N+1 and launch its forward (decode inputs = step N's
        tokens, on the device), process step N on the host while it runs, then sample N+1 with the
        host state complete (grammar masks, penalties, ...) and leave it in flight; the outputs are
        step N's."""
        t0, compile_s0 = time.perf_counter(), self._compile_seconds()
        if self.spec is not None:  # speculative decoding: verify + rollback + drafting, synchronous
            sched = self.scheduler.schedule()
            if sched.is_empty:
                return []
            outputs = self.spec.step(self, sched)
            self._charge(("speculative", sched), t0, compile_s0)
            return outputs
        prev, self._inflight = self._inflight, None
        prev_kind, self._inflight_kind = self._inflight_kind, None
        sched = self.scheduler.schedule()
        graph_steps = self.runner.num_graph_steps
        fwd = self._forward(sched, prev) if not sched.is_empty else None
        kind = (self._step_kind(sched, graph_steps), sched) if fwd is not None else None
        outputs = self._process(prev) if prev is not None else []
        if fwd is not None:
            cur = self._sample(sched, *fwd)
            if self.async_scheduling:
                self._inflight, self._inflight_kind = cur, kind
            else:
                outputs += self._process(cur)
        # overlapped: this call waited for the previous step's tokens, i.e. for that step (engine/step_stats.py)
        self._charge(prev_kind if self.async_scheduling else kind, t0, compile_s0)
        return outputs

    def _compile_seconds(self) -> float:
        return self.kernel_compiles.seconds if self.kernel_compiles is not None else 0.0

    def _compiles_since_start(self) -> tuple[int, float]:
        """(kernel compiles, their seconds) in this process since this engine's start-up ended."""
        kc = self.kernel_compiles
        if kc is None:
            return 0, 0.0
        return kc.count - self._compiles_at_start[0], kc.seconds - self._compiles_at_start[1]

    def _charge(self, kind: tuple[str, SchedulerOutput] | None, t0: float, compile_s0: float) -> None:
        """Record the step this call waited for: (kind, its schedule) and the kernel compiles inside the call."""
        if kind is None:
            return
        compiled = self._compile_seconds() - compile_s0
        self.step_stats.record(kind[0], time.perf_counter() - t0, lambda: _step_size(kind[1]) + (
            f"; {compiled:.2f} s of kernel compiles in this call" if compiled > 0 else ""))

    def _step_kind(self, sched: SchedulerOutput, graph_steps_before: int) -> str:
        """The kind (engine/step_stats.py) of the step just launched."""
        if self.runner.num_graph_steps != graph_steps_before:
            return "graph_decode"
        return "eager_decode" if all(c.num_tokens == 1 and c.sample for c in sched.chunks) else "prefill"

    def _forward(self, sched: SchedulerOutput, prev: LaunchedStep | None) -> tuple[list[RequestState], RunnerOutput]:
        """Launch the model on one scheduled step (inputs still pending on the host come from `prev`'s
        sampled tokens, on the device) -> (request of each chunk, runner output)."""
        states = [self.requests[c.seq.request_id] for c in sched.chunks]
        want_prompt = [st.prompt_logprobs is not None and c.start < c.seq.num_prompt_tokens
                       and c.seq.sample_index == 0 for st, c in zip(states, sched.chunks)]
        scheduled = time.monotonic()
        for st in states:  # before the model runs: queue time ends here, prefill time starts
            st.mark("first_scheduled", scheduled)
        dev_tokens = prev.device_tokens(sched.chunks, self.device) if prev is not None else None
        res = self.runner.execute(sched, want_prompt, dev_tokens)
        self._count_prompt_tokens(sched, states)
        self.scheduler.update_after_step(sched)
        return states, res

    def _count_prompt_tokens(self, sched: SchedulerOutput, states: list[RequestState]) -> None:
        """prompt_tokens_total: every prompt token once (a preemption, even mid-prefill, recomputes from 0)."""
        for c, st in zip(sched.chunks, states):
            end = min(c.start + c.num_tokens, c.seq.num_prompt_tokens)
            if c.seq.sample_index == 0 and end > st.num_prompt_tokens_counted:
                self.prompt_tokens_total += end - st.num_prompt_tokens_counted
                st.num_prompt_tokens_counted = end

    def _sample(self, sched: SchedulerOutput, states: list[RequestState], res: RunnerOutput) -> LaunchedStep:
        """Prompt logprobs (host dicts: they wait for the forward) and sampling of a launched forward,
        left on the device. Rows of sequences that finished meanwhile (found in the previous step's
        tokens) are not sampled."""
        self._record_prompt_logprobs(states, res.prompt_logits)
        rows = [(states[i], states[i].samples[sched.chunks[i].seq.sample_index]) for i in res.sample_chunk_idx]
        logits = res.sample_logits
        live = [j for j, (_, s) in enumerate(rows) if not s.seq.is_finished]
        if len(live) < len(rows):
            rows = [rows[j] for j in live]
            logits = logits.index_select(0, h2d(torch.tensor(live, dtype=torch.long), logits.device))
        if not rows:
            return LaunchedStep.start([], None)
        meta = SamplingMetadata.build(
            [st.params for st, _ in rows], [s.seq.output_token_ids for _, s in rows],
            [s.seq.prompt_token_ids for _, s in rows], [s.generator for _, s in rows],
            self.tokenizer.eos_token_id, self.model_config.vocab_size, logits.device,
            guides=[s.guide for _, s in rows])
        out = self.sampler(logits, meta)  # tokens + logprob pack on the device, read together in _process
        for _, s in rows:
            s.seq.num_pending_tokens += 1
        return LaunchedStep.start(rows, out.token_ids, out.num_logprobs, out.logprob_pack)

    @staticmethod
    def _record_prompt_logprobs(states: list[RequestState], prompt_logits: dict[int, tuple[int, torch.Tensor]]) -> None:
        """Prompt logprobs of the chunks that asked for them (host dicts: they wait for the forward);
        `prompt_logits`: chunk index -> (chunk start, its logits rows), as RunnerOutput.prompt_logits."""
        for i, (start, logits) in prompt_logits.items():
            st = states[i]
            nxt = torch.tensor(st.prompt_token_ids[start + 1:start + 1 + logits.shape[0]], device=logits.device)
            ranks: list[int] = []
            lps = gather_logprobs(logits.log_softmax(-1), nxt, [st.params.prompt_logprobs] * len(nxt), ranks)
            st.prompt_logprobs[start + 1:start + 1 + len(lps)] = lps
            st.prompt_logprob_ranks[start + 1:start + 1 + len(ranks)] = ranks

    def _process(self, step: LaunchedStep) -> list[RequestOutput]:
        """Host side of a sampled step: append its tokens (detokenize, stop checks, free finished
        sequences) -> outputs. Rows of requests aborted after the step was sampled are dropped."""
        tokens = step.tokens()
        logprobs = step.logprobs()
        now = time.monotonic()
        changed: dict[str, RequestState] = {}
        for j, (st, s) in enumerate(step.rows):
            s.seq.num_pending_tokens -= 1
            if s.seq.is_finished:
                continue
            st.mark("first_token", now)
            if logprobs is not None and s.logprobs is not None:
                s.logprobs.append(logprobs[j])
            self._append(st, s, tokens[j])
            changed[st.request_id] = st
        outputs = []
        for rid, st in changed.items():
            if st.finished:
                del self.requests[rid]
                outputs.append(st.make_output())
            elif st.output_kind is not OutputKind.FINAL_ONLY:
                outputs.append(st.make_output())
        return outputs

    def _bad_word_sequences(self, words: list[str]) -> list[list[int]]:
        """Token sequences of each bad word as it would appear mid-text and at the start (vLLM)."""
        seqs: list[list[int]] = []
        for w in words:
            for variant in (w.lstrip(), " " + w.lstrip()):
                ids = self.tokenizer.encode(variant)
                if ids and ids not in seqs:
                    seqs.append(ids)
        return seqs

    def _append(self, st: RequestState, s: SampleState, token: int) -> None:
        """Append a sampled token, detokenize, and finish the sequence on a stop condition."""
        seq, p = s.seq, st.params
        seq.append_token(token)
        self.generation_tokens_total += 1
        if s.guide is not None:
            s.guide.advance(token)
        k = seq.sample_index
        stop = token_stop(token, p, self.tokenizer.eos_token_id)
        if stop == "eos":
            s.detok.flush()
            return self._finish(st, k, SequenceStatus.FINISHED_STOPPED, None)
        if stop == "stop_token":
            if p.include_stop_str_in_output:
                s.detok.add_token(token)
            s.detok.flush()
            return self._finish(st, k, SequenceStatus.FINISHED_STOPPED, token)
        step = s.detok.add_token(token)
        if step.stop_str is not None:
            return self._finish(st, k, SequenceStatus.FINISHED_STOPPED, step.stop_str)
        if reached_length(seq, self.max_model_len):
            s.detok.flush()
            return self._finish(st, k, SequenceStatus.FINISHED_LENGTH, None)

    def _finish(self, st: RequestState, k: int, status: SequenceStatus, stop_reason) -> None:
        self.scheduler.finish(st.samples[k].seq.seq_id, status)
        st.finish_sample(k, status.finish_reason, stop_reason)
