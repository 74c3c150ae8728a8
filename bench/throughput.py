"""Offline throughput of the engine with random prompts, and the engine's host overhead per step.

    python -m bench.throughput --num-prompts 64 --input-len 32:256 --output-len 16:64
    python -m bench.throughput --preset flash --layers 2 --device cuda --num-prompts 256 \\
        --input-len 512:1024 --output-len 128:256
    python -m bench.throughput --overhead-only            # 256 running sequences, model stubbed out
    python -m bench.throughput --overhead-only --output-kind delta   # ... as streamed by the server
    python -m bench.throughput --async-scheduling / --no-async-scheduling   # overlapped loop on / off
    python -m bench.throughput --model DIR --device cuda --serve-workload chat --num-prompts 256 \
        --max-num-seqs 64 --input-len 128:128 --output-len 128:128    # = bench.serve --max-concurrency 64

Prompts are random token ids (fixed --seed; special tokens excluded) with lengths drawn uniformly
from --input-len MIN:MAX; each request generates exactly its --output-len draw (ignore_eos).
All requests are queued at once and the engine is stepped until every one finishes.

--serve-workload chat|completions runs bench/serve.py's workload offline instead (bench/workload.py:
same --seed, --num-prompts, prompt WORDS in --input-len, output lengths in --output-len), tokenized as
the server does (chat: one user message in the V4 chat format at --reasoning-effort, as
server/chat_plan.py renders it; completions: the text with BOS) and sampled as bench.serve asks
(temperature 0, min_tokens = max_tokens, ignore_eos, streamed deltas). bench.serve with all requests
at once (--request-rate inf) and --max-concurrency C against a server with the same engine flags is
this run with --max-num-seqs C: the offline bound for the server's output throughput.

Every phase of `LLMEngine.step()` is timed with `time.perf_counter` (CUDA is synchronized around the
model and the sampler, so device time lands in those phases):

    schedule       Scheduler.schedule (token budget, cache allocation, preemption)
    build_batch    ModelRunner.build_batch (flat ids/positions, block tables, slots, logit rows)
    model          model forward + compute_logits (the stub in --overhead-only)
    sampling_meta  SamplingMetadata.build
    sampler        Sampler.__call__ (device work on CUDA)
    post           the rest of step(): logit slicing, stop checks, detokenization, outputs

host overhead = step - model - sampler (all of the engine's Python work per step); sched_batch =
schedule + build_batch (the issue's target: <= 2 ms per decode step with 256 running sequences).
The last line of output is one JSON object.

--overhead-only replaces the model with a function that returns random logits of the right shape,
fills the engine with --overhead-seqs running sequences (prefill done), and times decode steps that
each carry one token for every one of them.

--output-kind picks what every request asks the engine for (engine/outputs.py): `cumulative` (a full
snapshot per step, the engine's default), `delta` (what the HTTP server streams), or `final_only`
(what non-streaming HTTP requests and `LLM.generate` use). Outputs are built inside step(), so their
cost lands in `post`. `--overhead-warmup N` lets outputs grow N tokens before the timed steps.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import torch

from bench.engine_counters import counters_delta, from_stats

PHASES = ("schedule", "build_batch", "model", "sampling_meta", "sampler", "post")


def parse_range(s: str) -> tuple[int, int]:
    parts = s.split(":")
    try:
        lo, hi = (int(parts[0]), int(parts[0])) if len(parts) == 1 else (int(parts[0]), int(parts[1]))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN:MAX (or N), got {s!r}") from None
    if len(parts) > 2 or lo < 1 or hi < lo:
        raise argparse.ArgumentTypeError(f"expected 1 <= MIN <= MAX, got {s!r}")
    return lo, hi


class PhaseTimer:
    """Wraps the engine's phases with perf_counter; per-step records of every phase's seconds."""

    def __init__(self, engine, sync: bool):
        self.engine = engine
        self.sync = sync
        self.cur: dict[str, float] = defaultdict(float)
        self.steps: list[dict[str, float]] = []
        self._install()

    def _now(self, sync: bool = False) -> float:
        if sync and self.sync:
            torch.cuda.synchronize()
        return time.perf_counter()

    def _wrap(self, fn, phase: str, sync: bool = False):
        def timed(*args, **kwargs):
            t0 = self._now(sync)
            try:
                return fn(*args, **kwargs)
            finally:
                self.cur[phase] += self._now(sync) - t0
        return timed

    def _install(self) -> None:
        import engine.llm_engine as le

        eng = self.engine
        eng.scheduler.schedule = self._wrap(eng.scheduler.schedule, "schedule")
        eng.runner.build_batch = self._wrap(eng.runner.build_batch, "build_batch")
        eng.runner.model = _TimedModel(eng.runner.model, self)
        eng.sampler = self._wrap(eng.sampler, "sampler", sync=True)
        self._le, self._orig_meta = le, le.SamplingMetadata

        class _TimedMetadata:  # step() only calls SamplingMetadata.build (looked up in the module globals)
            build = staticmethod(self._wrap(le.SamplingMetadata.build, "sampling_meta"))

        le.SamplingMetadata = _TimedMetadata

    def uninstall(self) -> None:
        self._le.SamplingMetadata = self._orig_meta

    @contextmanager
    def step(self):
        self.cur = defaultdict(float)
        t0 = self._now(True)
        yield
        total = self._now(True) - t0
        rec = {p: self.cur.get(p, 0.0) for p in PHASES}
        rec["post"] = max(0.0, total - sum(rec[p] for p in PHASES if p != "post"))
        rec["step"] = total
        rec["host"] = total - rec["model"] - rec["sampler"]
        self.steps.append(rec)


class _TimedModel:
    """Proxy of the model for the runner: times forward and compute_logits (with CUDA sync)."""

    def __init__(self, model, timer: PhaseTimer):
        self._model, self._timer = model, timer

    def __call__(self, *args, **kwargs):
        return self._timer._wrap(self._model, "model", sync=True)(*args, **kwargs)

    def compute_logits(self, h):
        return self._timer._wrap(self._model.compute_logits, "model", sync=True)(h)

    def __getattr__(self, name):
        return getattr(self._model, name)


class RandomLogitsModel:
    """Stands in for the model: no state update, random fp32 logits [rows, V] for the rows asked."""

    def __init__(self, model, device: torch.device):
        self.cfg = model.cfg
        self.vocab = model.cfg.vocab_size
        self.device = device

    def __call__(self, batch, state):
        return batch.logits_indices

    def compute_logits(self, rows: torch.Tensor) -> torch.Tensor:
        return torch.randn(rows.numel(), self.vocab, device=self.device)


def use_random_logits(eng) -> None:
    """Swap `eng`'s model for RandomLogitsModel where the step reaches it: the runner (LM head) and its one-process
    executor (the forward). The runner alone was swapped before, so the real forward kept running."""
    if eng.runner.executor.multi_process:
        raise ValueError("--overhead-only needs a one-process engine (tensor parallel workers hold the model)")
    fake = RandomLogitsModel(eng.model, eng.device)
    eng.runner.model = eng.runner.executor.model = fake


def summarize(steps: list[dict[str, float]]) -> dict[str, float]:
    """Mean per step of every phase, in milliseconds (+ p50/p90 of host overhead, p50 of post)."""
    if not steps:
        return {}
    out = {f"{k}_ms": 1e3 * statistics.fmean(s[k] for s in steps) for k in (*PHASES, "step", "host")}
    host = sorted(s["host"] for s in steps)
    out["host_p50_ms"] = 1e3 * host[len(host) // 2]
    out["host_p90_ms"] = 1e3 * host[min(len(host) - 1, int(0.9 * len(host)))]
    out["post_p50_ms"] = 1e3 * sorted(s["post"] for s in steps)[len(steps) // 2]
    out["sched_batch_ms"] = out["schedule_ms"] + out["build_batch_ms"]  # scheduler + batch building only
    out["host_incl_sampler_ms"] = out["host_ms"] + out["sampler_ms"]
    out["num_steps"] = len(steps)
    return out


def resolve_model(args) -> str:
    if args.model is not None:
        return args.model
    if args.preset is not None:
        from models.config import PRESETS
        from models.synthetic import write_synthetic_checkpoint

        cfg = PRESETS[args.preset]()
        if args.layers is not None:
            cfg = cfg.with_layers(args.layers)
        out = Path(tempfile.mkdtemp(prefix=f"v4bench-{args.preset}-"))
        print(f"writing a synthetic {args.preset} checkpoint ({cfg.num_hidden_layers} layers) to {out}",
              file=sys.stderr)
        write_synthetic_checkpoint(cfg, out, seed=args.seed, quantize=args.quantize)
        return str(out)
    from models.demo import ensure_demo_model

    return str(ensure_demo_model())


def make_engine(args, model_dir: str, **overrides):
    from engine.config import EngineArgs
    from engine.llm_engine import LLMEngine

    kw = dict(model=model_dir, device=args.device, dtype=args.dtype, max_num_seqs=args.max_num_seqs,
              max_num_batched_tokens=args.max_num_batched_tokens, max_model_len=args.max_model_len,
              num_kv_blocks=args.num_kv_blocks, kv_cache_memory=args.kv_cache_memory,
              block_size=args.block_size, seed=args.seed, async_scheduling=args.async_scheduling,
              kv_cache_dtype=args.kv_cache_dtype, enforce_eager=args.enforce_eager,
              enable_prefix_caching=args.enable_prefix_caching, usage=args.usage,
              scheduler_delay_factor=args.scheduler_delay_factor)
    kw.update(overrides)
    return LLMEngine(EngineArgs(**kw))


def random_prompts(engine, n: int, in_range: tuple[int, int], out_range: tuple[int, int], seed: int):
    g = torch.Generator().manual_seed(seed)
    vocab = engine.tokenizer.vocab_size
    special = torch.tensor(sorted(engine.tokenizer.all_special_ids))
    allowed = torch.ones(vocab, dtype=torch.bool)
    allowed[special[special < vocab]] = False
    pool = allowed.nonzero().squeeze(1)
    reqs = []
    for _ in range(n):
        lin = int(torch.randint(in_range[0], in_range[1] + 1, (1,), generator=g))
        lout = int(torch.randint(out_range[0], out_range[1] + 1, (1,), generator=g))
        ids = pool[torch.randint(0, len(pool), (lin,), generator=g)].tolist()
        reqs.append((ids, lout))
    return reqs


def serve_workload(engine, args) -> list[tuple[list[int], int]]:
    """bench/serve.py's workload as (prompt ids, output length) pairs, tokenized as the server does."""
    from bench.workload import conversations
    from chat.encoder import render_messages
    from chat.reasoning import resolve_reasoning

    tok = engine.tokenizer
    rc = resolve_reasoning(args.reasoning_effort, None, None, None)
    reqs = []
    for (text,), out_len in conversations(args.seed, args.num_prompts, args.input_len, args.output_len):
        if args.serve_workload == "chat":  # content never becomes special tokens (Tokenizer.encode_segments)
            ids = tok.encode_segments(render_messages([{"role": "user", "content": text}], thinking=rc.thinking,
                                                      reasoning_effort=rc.encoder_effort, tools=None))
        else:
            ids = tok.encode(text, add_special_tokens=True)
        reqs.append((ids, out_len))
    return reqs


def params_for(args, out_len: int):
    from engine.sampling_params import SamplingParams

    if args.serve_workload:  # what bench.serve asks for (the chat server keeps special tokens in the text)
        return SamplingParams(temperature=0.0, max_tokens=out_len, min_tokens=out_len, ignore_eos=True,
                              skip_special_tokens=args.serve_workload != "chat")
    return SamplingParams(temperature=args.temperature, top_p=args.top_p, max_tokens=out_len, min_tokens=0,
                          ignore_eos=True)


def output_kind(args):
    from engine.outputs import OutputKind

    return OutputKind(args.output_kind)


def run_throughput(args) -> dict:
    model_dir = resolve_model(args)
    eng = make_engine(args, model_dir)
    if args.serve_workload:
        reqs = serve_workload(eng, args)
    else:
        reqs = random_prompts(eng, args.num_prompts, args.input_len, args.output_len, args.seed)
    from bench.workload import WARMUP_SEED_OFFSET
    if args.warmup_prompts:  # the workload's own shapes (other prompts): the mixed steps' kernels compile here
        warm = argparse.Namespace(**{**vars(args), "num_prompts": args.warmup_prompts,
                                     "seed": args.seed + WARMUP_SEED_OFFSET})
        wreqs = serve_workload(eng, warm) if args.serve_workload else random_prompts(
            eng, warm.num_prompts, args.input_len, args.output_len, warm.seed)
        for i, (ids, lout) in enumerate(wreqs):
            eng.add_request(f"warm{i}", ids, params_for(args, lout), output_kind=output_kind(args))
        while eng.has_unfinished():
            eng.step()
    elif args.warmup:
        for i, (ids, _) in enumerate(reqs[:min(4, len(reqs))]):
            eng.add_request(f"warm{i}", ids[:16], params_for(args, 4))
        while eng.has_unfinished():
            eng.step()
    # the overlapped loop on CUDA: no synchronization inside step() (it would remove the overlap), so the
    # model / sampler phases are host launch times and elapsed wall time is the measure
    timer = PhaseTimer(eng, sync=eng.device.type == "cuda" and not eng.async_scheduling)
    for i, (ids, lout) in enumerate(reqs):
        eng.add_request(f"r{i}", ids, params_for(args, lout), output_kind=output_kind(args))
    n_in = sum(len(ids) for ids, _ in reqs)
    gen0 = eng.generation_tokens_total
    stats0 = eng.stats()  # step kinds and kernel compiles around the timed run (bench.serve reports the same)
    decode_steps = []
    t0 = time.perf_counter()
    while eng.has_unfinished():
        sch = eng.scheduler
        decode_only = not sch.waiting and all(s.num_computed_tokens >= s.num_prompt_tokens for s in sch.running)
        with timer.step():
            eng.step()
        if decode_only:
            decode_steps.append(timer.steps[-1])
    elapsed = time.perf_counter() - t0
    timer.uninstall()
    n_gen = eng.generation_tokens_total - gen0
    assert n_gen == sum(lout for _, lout in reqs)
    res = {
        "mode": "throughput", "output_kind": args.output_kind, "model": model_dir, "device": str(eng.device),
        "workload": f"bench.serve {args.serve_workload} (seed {args.seed})" if args.serve_workload else "random ids",
        "async_scheduling": eng.async_scheduling,
        "dtype": str(eng.dtype).replace("torch.", ""),
        "num_prompts": len(reqs), "warmup_prompts": args.warmup_prompts, "input_len": list(args.input_len), "output_len": list(args.output_len),
        "max_num_seqs": args.max_num_seqs, "usage": args.usage, "scheduler_delay_factor": args.scheduler_delay_factor,
        "max_num_batched_tokens": eng.scheduler.config.max_num_batched_tokens,  # resolved: the engine's default if unset
        "elapsed_s": elapsed, "requests_per_s": len(reqs) / elapsed, "input_tokens": n_in,
        "mean_input_tokens": n_in / len(reqs), "enable_prefix_caching": eng.kv.prefix is not None,
        "output_tokens": n_gen, "input_tokens_per_s": n_in / elapsed, "output_tokens_per_s": n_gen / elapsed,
        "total_tokens_per_s": (n_in + n_gen) / elapsed, "num_preemptions": eng.scheduler.num_preemptions_total,
        "per_step": summarize(timer.steps), "per_decode_step": summarize(decode_steps),
        "engine": counters_delta(from_stats(eng.stats()), from_stats(stats0)),
    }
    return res


def run_overhead(args) -> dict:
    model_dir = resolve_model(args)
    n = args.overhead_seqs
    lo, hi = args.input_len
    out_len = args.overhead_warmup + args.overhead_steps + 2
    bs = args.block_size or 64
    blocks = n * (-(-(hi + out_len) // bs) + 1) + 8
    eng = make_engine(args, model_dir, max_num_seqs=n, max_num_batched_tokens=max(args.max_num_batched_tokens or 2048, n * hi),
                      num_kv_blocks=args.num_kv_blocks or blocks, kv_cache_memory=None,
                      max_model_len=args.max_model_len or hi + out_len)
    use_random_logits(eng)
    reqs = random_prompts(eng, n, args.input_len, (out_len, out_len), args.seed)
    for i, (ids, lout) in enumerate(reqs):
        eng.add_request(f"r{i}", ids, params_for(args, lout), output_kind=output_kind(args))
    timer = PhaseTimer(eng, sync=eng.device.type == "cuda")
    steps = 0
    while eng.scheduler.waiting or any(c.num_computed_tokens < c.num_prompt_tokens for c in eng.scheduler.running):
        eng.step()
        steps += 1
        assert steps < 1000
    for _ in range(args.overhead_warmup):
        eng.step()
    for _ in range(args.overhead_steps):
        assert eng.scheduler.num_running == n, "a sequence finished or was preempted during the measurement"
        with timer.step():
            eng.step()
    timer.uninstall()
    s = summarize(timer.steps)
    return {"mode": "overhead", "output_kind": args.output_kind, "model": model_dir, "device": str(eng.device),
            "running_seqs": n,
            "vocab_size": eng.model_config.vocab_size, "temperature": args.temperature,
            "per_decode_step": s, "target_ms": 2.0, "host_overhead_ms": s["host_ms"],
            "sched_batch_ms": s["sched_batch_ms"], "sched_batch_meets_target": s["sched_batch_ms"] <= 2.0,
            "host_meets_target": s["host_ms"] <= 2.0}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m bench.throughput", description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="checkpoint dir (default: the embedded demo model)")
    ap.add_argument("--preset", choices=("tiny", "flash", "pro"), default=None,
                    help="write a synthetic checkpoint of this preset into a temp dir")
    ap.add_argument("--layers", type=int, default=None, help="with --preset: keep the first N main layers")
    ap.add_argument("--quantize", action="store_true", help="with --preset: FP8/MXFP4 checkpoint")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--max-num-seqs", type=int, default=64)
    ap.add_argument("--max-num-batched-tokens", type=int, default=None,
                    help="tokens per step (default: the engine's for --usage, as LLM() / `v4serve serve` would pick)")
    ap.add_argument("--scheduler-delay-factor", type=float, default=0.0, help="as the server's flag")
    ap.add_argument("--usage", choices=("offline", "server"), default="offline",
                    help="whose default token budget to take: the offline LLM class's or the server's (compare the "
                         "server with `--usage server`: the same budget)")
    ap.add_argument("--max-model-len", type=int, default=None)
    ap.add_argument("--num-kv-blocks", type=int, default=None)
    ap.add_argument("--kv-cache-memory", type=int, default=None, help="KV cache bytes")
    ap.add_argument("--block-size", type=int, default=None)
    ap.add_argument("--num-prompts", type=int, default=64)
    ap.add_argument("--input-len", type=parse_range, default=(32, 256), help="MIN:MAX prompt tokens")
    ap.add_argument("--output-len", type=parse_range, default=(16, 64), help="MIN:MAX generated tokens")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-warmup", dest="warmup", action="store_false")
    ap.add_argument("--warmup-prompts", type=int, default=0,
                    help="untimed prompts of the same workload (seed + 1000) before the timed run, instead of the "
                         "4 short warm-up requests (bench.serve's flag of the same name: compare like with like)")
    ap.add_argument("--async-scheduling", action=argparse.BooleanOptionalAction, default=None,
                    help="overlapped engine loop (default: the engine's: on with CUDA, off on CPU)")
    ap.add_argument("--overhead-only", action="store_true",
                    help="model replaced by random logits: host overhead per decode step")
    ap.add_argument("--overhead-seqs", type=int, default=256)
    ap.add_argument("--overhead-steps", type=int, default=50)
    ap.add_argument("--overhead-warmup", type=int, default=5)
    ap.add_argument("--output-kind", choices=("cumulative", "delta", "final_only"), default=None,
                    help="per-request output mode: cumulative snapshots (default), deltas (streaming server; "
                         "the default with --serve-workload), final only")
    ap.add_argument("--serve-workload", choices=("chat", "completions"), default=None,
                    help="bench/serve.py's workload (--input-len in words, its seed and sampling), offline")
    ap.add_argument("--reasoning-effort", default="none", help="with --serve-workload chat (bench.serve's default)")
    ap.add_argument("--kv-cache-dtype", default="auto", help="as the server's --kv-cache-dtype")
    ap.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs (as the server's flag)")
    ap.add_argument("--no-enable-prefix-caching", dest="enable_prefix_caching", action="store_false",
                    help="as the server's flag (prefix caching is on by default in both)")
    args = ap.parse_args(argv)
    if args.output_kind is None:
        args.output_kind = "delta" if args.serve_workload else "cumulative"
    if args.serve_workload and args.overhead_only:
        ap.error("--serve-workload and --overhead-only are different modes")
    if args.warmup_prompts < 0:
        ap.error("--warmup-prompts must be >= 0")
    if args.overhead_only and "--input-len" not in " ".join(argv if argv is not None else sys.argv):
        args.input_len = (16, 64)
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(args.seed)
    res = run_overhead(args) if args.overhead_only else run_throughput(args)
    _print_human(res)
    print(json.dumps(res))
    return res


def _print_human(res: dict) -> None:
    if res["mode"] == "throughput":
        print(f"{res['num_prompts']} requests in {res['elapsed_s']:.2f}s: {res['requests_per_s']:.2f} req/s, "
              f"input {res['input_tokens_per_s']:.1f} tok/s, output {res['output_tokens_per_s']:.1f} tok/s "
              f"({res['num_preemptions']} preemptions)")
    for key in ("per_step", "per_decode_step"):
        s = res.get(key)
        if s:
            phases = "  ".join(f"{p} {s[p + '_ms']:.3f}" for p in PHASES)
            print(f"{key} ({res['output_kind']} outputs; ms, mean over {s['num_steps']}): "
                  f"step {s['step_ms']:.3f}  {phases}  "
                  f"| sched+batch {s['sched_batch_ms']:.3f}  host overhead {s['host_ms']:.3f} "
                  f"(p50 {s['host_p50_ms']:.3f}, p90 {s['host_p90_ms']:.3f})")


if __name__ == "__main__":
    main()
