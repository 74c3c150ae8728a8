"""Profile the eager prefill of N x L prompts (GPU): wall vs GPU kernel time and the top kernels.

    python -m bench.prefill_profile --model DIR --n 8 --len 4096

Runs the prompts once to compile every kernel configuration, once timed, once under torch.profiler
(other random tokens each time: no prefix-cache hits). Prints the kernel tables and where the device idles
between activities (bench/gpu_gaps.py); the last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="checkpoint dir (e.g. python -m models.synthetic ... --device cuda)")
    ap.add_argument("--n", type=int, default=8, help="prompts")
    ap.add_argument("--len", type=int, default=4096, help="tokens per prompt")
    ap.add_argument("--budget", type=int, default=None, help="max_num_batched_tokens (default: the engine's)")
    ap.add_argument("--kv", default="auto", help="KV cache format")
    ap.add_argument("--rows", type=int, default=30, help="kernel table rows")
    ap.add_argument("--no-profile", action="store_true", help="only the warm-up and the timed run")
    ap.add_argument("--warmup-len", type=int, default=0,
                    help="tokens per warm-up prompt (0 = --len; a shorter one compiles the same kernels)")
    ap.add_argument("--no-timed", action="store_true",
                    help="skip the timed run: warm-up, then the profiled run (its wall is the one reported)")
    args = ap.parse_args(argv)
    from torch.profiler import ProfilerActivity, profile

    from engine.config import EngineArgs
    from engine.llm_engine import LLMEngine
    from engine.sampling_params import SamplingParams

    eng = LLMEngine(EngineArgs(model=args.model, device="cuda", dtype="bfloat16", max_num_seqs=max(8, args.n),
                               max_num_batched_tokens=args.budget, kv_cache_dtype=args.kv,
                               max_model_len=args.len + 64, enforce_eager=True))
    gen = torch.Generator().manual_seed(0)
    vocab = min(eng.tokenizer.vocab_size, eng.model_config.vocab_size)

    def run(tag: str, length: int = args.len) -> int:
        for i in range(args.n):
            ids = torch.randint(16, vocab, (length,), generator=gen).tolist()
            eng.add_request(f"{tag}{i}", ids, SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True))
        steps = 0
        while eng.has_unfinished():
            eng.step()
            steps += 1
        torch.cuda.synchronize()
        return steps

    if args.no_timed and args.no_profile:
        raise SystemExit("--no-timed with --no-profile leaves nothing to run")
    t = time.perf_counter()
    run("warm", args.warmup_len or args.len)
    print(f"# warm-up (compiles included): {time.perf_counter() - t:.1f} s", flush=True)
    steps, wall = None, None
    if not args.no_timed:
        t = time.perf_counter()
        steps = run("timed")
        wall = time.perf_counter() - t
        timed = {"n": args.n, "len": args.len, "steps": steps, "wall_s": round(wall, 3),
                 "tok_s": round(args.n * args.len / wall, 1)}
        print(f"# timed: {json.dumps(timed)}", flush=True)
    if args.no_profile:
        print(json.dumps(timed))
        return
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t = time.perf_counter()
        prof_steps = run("prof")
        prof_wall = time.perf_counter() - t
    from bench.gpu_gaps import NOT_DEVICE, device_intervals, idle_report

    ev = prof.key_averages()
    # device activity only: the key averages also give device time to runtime calls and "Command Buffer Full"
    gpu_s = sum(e.self_device_time_total for e in ev if not e.key.startswith(NOT_DEVICE)) / 1e6
    idle = idle_report(device_intervals(prof))
    print("# device idle between activities (gaps >= 20 us by the activities around them):", json.dumps(idle),
          flush=True)
    print(ev.table(sort_by="self_device_time_total", row_limit=args.rows, max_name_column_width=70))
    top = sorted((e for e in ev if e.self_device_time_total > 0), key=lambda e: -e.self_device_time_total)[:12]
    timed = ({"wall_s": round(wall, 3), "tok_s": round(args.n * args.len / wall, 1)} if wall else
             {"profiled_tok_s": round(args.n * args.len / prof_wall, 1)})
    print(json.dumps({"n": args.n, "len": args.len, "steps": steps or prof_steps, **timed,
                      "profiled_wall_s": round(prof_wall, 3),
                      "gpu_kernel_s": round(gpu_s, 3), "device_busy_s": idle["busy_s"], "device_idle_s": idle["idle_s"],
                      "top_kernels_ms": [[e.key, round(e.self_device_time_total / 1e3, 2), e.count] for e in top]}))


if __name__ == "__main__":
    main()
