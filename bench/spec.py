"""Cost of MTP speculative decoding steps (issue 13) on a V4-Flash-shaped synthetic checkpoint (GPU).

    python -m bench.spec                          # 8 layers + the MTP block, drawn on the GPU into --ckpt-dir
    python -m bench.spec --batches 1,8,64 --ks 1,2,3 --kv fp8_fp4idx

Synthetic weights make acceptance meaningless, so this measures costs: B greedy requests decode
(--in-len prompt, ignore_eos) and the median wall time of LLMEngine.step() is taken once all B decode:
  plain_graph   the default engine (CUDA-graph decode, async scheduling) -- what speculation competes with
  plain_eager   the speculative engine's own loop with speculation switched off (eager, synchronous)
  spec_k        a speculative step with k drafts: verify forward of k+1 tokens per sequence, rejection
                sampling, rollback, MTP catch-up + k-1 chained MTP passes (the MTP's own drafts: almost
                always rejected on random weights, so every step is a full-cost step)
  draft_ms      of spec_k, the MTP part alone (synchronized around it)
Implied tokens/s at accept length A (tokens emitted per step per sequence, published V4 figures 1.9 /
2.5) = B x A / spec step; speedup = that / (B / plain_graph step). `depth43` re-scales the main-model
part to V4-Flash's 43 layers ((step - draft) x 43 / layers + draft; plain x 43 / layers): a rough
full-depth estimate, the MTP block and LM head being one layer-equivalent either way.
The last printed line is one JSON object with everything.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

VOCAB_LO = 1000


def log(obj) -> None:
    print(json.dumps(obj), flush=True)


def ensure_checkpoint(args) -> str:
    if args.model:
        return args.model
    out = Path(args.ckpt_dir or f"/tmp/v4serve_spec_{args.preset}_L{args.layers}")
    if not (out / "config.json").exists():
        from models import synthetic

        synthetic.main(["--preset", args.preset, "--layers", str(args.layers), "--quantize", "--device",
                        args.device, "--out", str(out)])
    return str(out)


def build(args, model_dir, kv, spec, cached):
    import engine.llm_engine as le
    from engine.config import EngineArgs

    orig = le.load_model
    if cached is not None:  # same weights (incl. the MTP block), a new cache
        le.load_model = lambda *a, **k: cached
    try:
        return le.LLMEngine(EngineArgs(
            model=model_dir, device=args.device, dtype="bfloat16" if args.device == "cuda" else "float32", max_num_seqs=max(args.batch_list),
            max_num_batched_tokens=args.budget, num_kv_blocks=args.blocks, kv_cache_dtype=kv,
            max_model_len=args.in_len + args.out_len + 8, enable_prefix_caching=False,
            speculative_config=spec))
    finally:
        le.load_model = orig


def timed_decode(eng, B: int, args, tag: str) -> list[float]:
    from engine.sampling_params import SamplingParams

    g = torch.Generator().manual_seed(B)
    vocab_hi = eng.model_config.vocab_size
    lo = min(VOCAB_LO, vocab_hi // 2)
    for i in range(B):
        eng.add_request(f"{tag}-{B}-{i}", torch.randint(lo, vocab_hi, (args.in_len,), generator=g).tolist(),
                        SamplingParams(temperature=0.0, max_tokens=args.out_len, ignore_eos=True))
    steps = []
    while eng.has_unfinished():
        sch = eng.scheduler
        full = not sch.waiting and sch.num_running == B and all(
            s.num_computed_tokens >= s.num_prompt_tokens for s in sch.running)
        t = time.perf_counter()
        eng.step()
        if full:
            steps.append(time.perf_counter() - t)
    sync()
    return steps[2:]


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def median_ms(xs) -> float:
    return round(statistics.median(xs) * 1e3, 3) if xs else float("nan")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="checkpoint dir with MTP weights (default: draw one)")
    ap.add_argument("--preset", default="flash")
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--ckpt-dir", default=None)
    ap.add_argument("--kv", default="fp8_fp4idx", help="KV cache format (auto = bf16)")
    ap.add_argument("--batches", default="1,8,64")
    ap.add_argument("--ks", default="1,2,3")
    ap.add_argument("--accept", default="1.9,2.5", help="accept lengths (tokens per step) for tokens/s")
    ap.add_argument("--in-len", type=int, default=128)
    ap.add_argument("--out-len", type=int, default=40)
    ap.add_argument("--blocks", type=int, default=256)
    ap.add_argument("--budget", type=int, default=8192)
    ap.add_argument("--device", default="cuda", help="cuda (the benchmark); cpu only to smoke-test the script")
    args = ap.parse_args(argv)
    args.batch_list = [int(b) for b in args.batches.split(",")]
    ks = [int(k) for k in args.ks.split(",")]
    accepts = [float(a) for a in args.accept.split(",")]
    model_dir = ensure_checkpoint(args)

    spec_eng = build(args, model_dir, args.kv, {"method": "mtp", "num_speculative_tokens": max(ks)}, None)
    sd = spec_eng.spec
    draft_times: list[float] = []
    inner = sd._draft

    def timed_draft(*a, **kw):
        sync()
        t = time.perf_counter()
        inner(*a, **kw)
        sync()
        draft_times.append(time.perf_counter() - t)
    sd._draft = timed_draft
    results = {"layers": spec_eng.model_config.num_hidden_layers, "kv": args.kv, "batches": {}}
    plain_eng = build(args, model_dir, args.kv, None, spec_eng.model)
    for B in args.batch_list:
        row = {"plain_graph_ms": median_ms(timed_decode(plain_eng, B, args, "g"))}
        spec_eng.spec = None  # the same engine, speculation off: eager synchronous decode
        row["plain_eager_ms"] = median_ms(timed_decode(spec_eng, B, args, "e"))
        spec_eng.spec = sd
        for k in ks:
            sd.k = k
            sd.drafts.clear()
            draft_times.clear()
            st = median_ms(timed_decode(spec_eng, B, args, f"s{k}"))
            dr = median_ms(draft_times[2:])
            r = {"step_ms": st, "draft_ms": dr, "vs_plain_graph": round(st / row["plain_graph_ms"], 3),
                 "vs_plain_eager": round(st / row["plain_eager_ms"], 3)}
            L = results["layers"]
            main_ms = st - dr
            est_spec, est_plain = main_ms * 43 / L + dr, row["plain_graph_ms"] * 43 / L
            for a in accepts:
                tok_s = B * a / st * 1e3
                r[f"tok_s@{a}"] = round(tok_s, 1)
                r[f"speedup@{a}"] = round(tok_s / (B / row["plain_graph_ms"] * 1e3), 3)
                r[f"depth43_speedup@{a}"] = round(a * est_plain / est_spec, 3)
            row[f"spec_k{k}"] = r
            log({"batch": B, "k": k, **r})
        results["batches"][str(B)] = row
        log({"batch": B, **{k: v for k, v in row.items() if not k.startswith("spec_")}})
    log({"bench": "spec", **results})


if __name__ == "__main__":
    main()
