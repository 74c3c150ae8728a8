"""Prefill and decode throughput of the offline engine at several tensor-parallel sizes (issue 7).

    python -m bench.tp_throughput --model /tmp/f2 --tp 1,2 --num-prompts 32 --input-len 1024 \\
        --decode-seqs 64 --output-len 64 --num-kv-blocks 1024

For every TP size: build `LLM(model, tensor_parallel_size=N)`, warm up, then
  prefill: --num-prompts random prompts of --input-len tokens with max_tokens=1 -> prompt tokens / s
           (run twice, the second timed: the first pays one-time kernel compilation for new shapes);
  decode:  --decode-seqs prompts of 32 tokens generating --output-len tokens each (ignore_eos); the
           engine is stepped until every sequence has its first token, then the remaining (pure decode)
           steps are timed -> generated tokens / s (also run twice); `e2e_tok_s` = all generated tokens
           over the whole run's wall time;
  parity:  greedy tokens of 4 short prompts, compared with the first TP size (bf16: may drift).
One JSON line per TP size, then a summary line.
"""

from __future__ import annotations

import argparse
import gc
import json
import time

import torch


def _prompts(n: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(10, vocab - 10, (n, length), generator=g).tolist()


def _timed(llm, prompts, params) -> tuple[float, list]:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    outs = llm.generate(prompts, params)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t0, outs


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _decode(llm, prompts, out_len: int) -> tuple[float, float, int, int]:
    """-> (whole run s, pure-decode steps s, tokens generated in those steps, all generated tokens)."""
    from engine.sampling_params import SamplingParams

    eng = llm.engine
    params = SamplingParams(max_tokens=out_len, temperature=0.0, ignore_eos=True)
    _sync()
    t0 = time.perf_counter()
    g0 = eng.generation_tokens_total
    for i, p in enumerate(prompts):
        eng.add_request(f"bench-{time.monotonic_ns()}-{i}", p, params)
    started: set[str] = set()
    while len(started) < len(prompts) and eng.has_unfinished():
        started.update(o.request_id for o in eng.step())
    _sync()
    t1 = time.perf_counter()
    g1 = eng.generation_tokens_total
    while eng.has_unfinished():
        eng.step()
    _sync()
    t2 = time.perf_counter()
    return t2 - t0, t2 - t1, eng.generation_tokens_total - g1, eng.generation_tokens_total - g0


def bench_one(args, tp: int) -> dict:
    from engine.llm import LLM
    from engine.sampling_params import SamplingParams

    t0 = time.perf_counter()
    llm = LLM(args.model, device=args.device, tensor_parallel_size=tp, max_num_seqs=args.max_num_seqs,
              max_num_batched_tokens=args.max_num_batched_tokens, num_kv_blocks=args.num_kv_blocks,
              max_model_len=args.max_model_len)
    startup = time.perf_counter() - t0
    vocab = llm.engine.model_config.vocab_size
    try:
        one = SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True)
        _timed(llm, _prompts(4, 64, vocab, 99), SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True))
        pre = _prompts(args.num_prompts, args.input_len, vocab, 1)
        for _ in range(2):
            t_pre, _ = _timed(llm, pre, one)
        dec = _prompts(args.decode_seqs, 32, vocab, 2)
        for _ in range(2):
            t_dec, t_steps, n_steps_tok, n_gen = _decode(llm, dec, args.output_len)
        _, par = _timed(llm, _prompts(4, 48, vocab, 3), SamplingParams(max_tokens=16, temperature=0.0))
        res = {
            "tp": tp, "startup_s": round(startup, 1),
            "prefill_tok_s": round(args.num_prompts * args.input_len / t_pre, 1), "prefill_s": round(t_pre, 3),
            "decode_tok_s": round(n_steps_tok / t_steps, 1), "decode_steps_s": round(t_steps, 3),
            "e2e_tok_s": round(n_gen / t_dec, 1), "decode_s": round(t_dec, 3), "decode_seqs": args.decode_seqs,
            "parity_tokens": [o.outputs[0].token_ids for o in par],
            "gpu_mem_gb_rank0": round(torch.cuda.max_memory_allocated() / 2**30, 1) if torch.cuda.is_available() else None,
        }
    finally:
        llm.engine.shutdown()
        del llm
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
    return res


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.tp_throughput", description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--tp", default="1,2", help="comma-separated tensor-parallel sizes")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--num-prompts", type=int, default=32)
    ap.add_argument("--input-len", type=int, default=1024)
    ap.add_argument("--decode-seqs", type=int, default=64)
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--max-num-seqs", type=int, default=64)
    ap.add_argument("--max-num-batched-tokens", type=int, default=8192)
    ap.add_argument("--num-kv-blocks", type=int, default=None)
    ap.add_argument("--max-model-len", type=int, default=None)
    args = ap.parse_args(argv)
    results = []
    for tp in [int(x) for x in args.tp.split(",")]:
        try:
            r = bench_one(args, tp)
        except Exception as e:  # noqa: BLE001 - report and go on with the other sizes
            r = {"tp": tp, "error": f"{type(e).__name__}: {e}"[:2000]}
        print(json.dumps(r), flush=True)
        results.append(r)
    ok = [r for r in results if "error" not in r]
    if ok:
        base = ok[0]
        summary = {"summary": [{"tp": r["tp"], "prefill_x": round(r["prefill_tok_s"] / base["prefill_tok_s"], 2),
                                "decode_x": round(r["decode_tok_s"] / base["decode_tok_s"], 2),
                                "parity_same_tokens": r["parity_tokens"] == base["parity_tokens"]} for r in ok]}
        print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
