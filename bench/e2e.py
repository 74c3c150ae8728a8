"""End-to-end GPU benchmark of the engine on a V4-Flash-shaped synthetic checkpoint (issue 17).

    python -m bench.e2e                                  # 8 layers, drawn on the GPU into --ckpt-dir
    python -m bench.e2e --model DIR --kv bf16,fp8_fp4idx --compare-eager
    python -m bench.e2e --enforce-eager                  # the eager engine only ("before" numbers)

Per KV format (the model is loaded once and reused):
  decode     B requests (--in-len prompt, --out-len new tokens, greedy, ignore_eos); step = wall time of
             LLMEngine.step() while all B decode (no extra synchronization: async scheduling keeps its
             overlap); median. Roofline step = (dense weight bytes + expected
             distinct experts for B tokens x expert bytes) / HBM read bandwidth measured in this run.
  prefill    N x L prompts (--prefill 8x4096) through the engine (eager by design): tok/s and MFU
             (FLOPs from the parameter count + attention over the window / top-k / compressed entries,
             over the bf16 matmul rate measured in this run, and over the 989 TFLOP/s datasheet peak).
  context    one sequence decoding at position L for every L in --contexts, state filled with random
             entries (no L-token prefill: the step's cost does not depend on the values): runner + argmax.
  profile    torch.profiler over --profile-steps decode steps at --profile-batch: host launch calls,
             GPU ops per step, GPU-busy fraction (device time / profiled wall, and device time / the
             unprofiled step of the same batch when it was measured), MoE kernels' share.
Graph ("graph") and eager ("eager") decode are measured on the same engine with --compare-eager
(the eager numbers toggle the runner's graphs off). Start-up: load (engine build before capture) and
capture seconds. The last printed line is one JSON object with everything.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from bench import ckpt_util
from bench.profile_summary import profile_summary
from engine.kernel_compiles import JitWatch

VOCAB_LO = 1000


def log(obj) -> None:
    print(json.dumps(obj), flush=True)


# ---- ceilings ------------------------------------------------------------------------------------
def hbm_read_gbps() -> float:
    """Read bandwidth: a reduction over 4 GiB of random bf16 (bytes read / time)."""
    x = torch.empty(2 * 2**30, dtype=torch.bfloat16, device="cuda").normal_()
    for _ in range(3):
        x.sum()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(10):
        x.sum()
    torch.cuda.synchronize()
    bw = 10 * x.numel() * 2 / (time.perf_counter() - t) / 1e9
    del x
    torch.cuda.empty_cache()
    return bw


def matmul_tflops(n: int = 8192) -> float:
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(10):
        a @ b
    torch.cuda.synchronize()
    return 10 * 2 * n ** 3 / (time.perf_counter() - t) / 1e12


# ---- checkpoint ----------------------------------------------------------------------------------
def ensure_checkpoint(args) -> tuple[str, float]:
    """--model, or the synthetic checkpoint in --ckpt-dir (drawn on the GPU the first time)."""
    return ckpt_util.ensure_checkpoint(args.model, args.ckpt_dir, preset=args.preset, layers=args.layers, tag="e2e")


# ---- model accounting ----------------------------------------------------------------------------
def model_bytes(model) -> dict:
    total = experts = embed = 0
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        b = t.numel() * t.element_size()
        total += b
        if ".experts_w" in name:
            experts += b
        elif "embed" in name:
            embed += b
    return {"total": total, "experts": experts, "embed": embed}


def flops_per_token(model, ctx: int) -> float:
    """2 x active weights (experts scaled by k/E, MXFP4 bytes = 2 weights) + attention at context ctx."""
    cfg = model.cfg
    dense = routed = 0
    for name, p in model.named_parameters():
        if "embed" in name or p.dim() < 2:
            continue
        n = p.numel() * (2 if p.dtype == torch.int8 else 1)
        if ".experts_w" in name:
            routed += n
        else:
            dense += n
    f = 2.0 * (dense + routed * cfg.num_experts_per_tok / cfg.n_routed_experts)
    h, c = cfg.num_attention_heads, cfg.head_dim
    for r in cfg.compress_ratios:
        entries = cfg.sliding_window
        if r == 4:
            entries += min(cfg.index_topk, ctx // 8)
            f += 2.0 * cfg.index_n_heads * cfg.index_head_dim * ctx / 8  # indexer scores (causal mean)
        elif r:
            entries += ctx / (2 * r)
        f += 4.0 * h * c * entries  # QK^T and PV
    return f


# ---- cases ---------------------------------------------------------------------------------------
def rand_ids(g, n, vocab_hi):
    return torch.randint(VOCAB_LO, vocab_hi, (n,), generator=g).tolist()


def run_decode(eng, B, in_len, out_len, tag, vocab_hi) -> dict:
    from engine.sampling_params import SamplingParams

    g = torch.Generator().manual_seed(B)
    for i in range(B):
        eng.add_request(f"{tag}{B}-{i}", rand_ids(g, in_len, vocab_hi),
                        SamplingParams(temperature=0.0, max_tokens=out_len, ignore_eos=True))
    steps = []
    while eng.has_unfinished():
        sch = eng.scheduler
        full = not sch.waiting and sch.num_running == B and all(
            s.num_computed_tokens >= s.num_prompt_tokens for s in sch.running)
        t = time.perf_counter()
        eng.step()  # no synchronize: an overlapped (async) engine keeps its overlap; each step waits for
        if full:    # the previous step's tokens, so step-to-step wall time is the steady-state step
            steps.append(time.perf_counter() - t)
    steps = steps[2:]
    med = statistics.median(steps)
    return {"batch": B, "steps": len(steps), "step_ms": round(med * 1e3, 3),
            "step_ms_p10": round(sorted(steps)[len(steps) // 10] * 1e3, 3), "tok_s": round(B / med, 1)}


def run_mixed(eng, B: int, L: int, n: int, vocab_hi: int, tag: str, profile_pairs: int = 0) -> dict:
    """What a prompt arriving among B decoding sequences costs: one L-token prompt (max_tokens 1) is added
    before every other step, so steps alternate mixed (decodes + the prompt's chunk, eager) and pure decode.
    An overlapped engine launches a step in one step() call and waits for it in the next, so the cost is read
    over the pair of calls: `pair_ms` (the call that launched the mixed step + the one that waited for it)
    against `decode_ms` (one call of the decode-only stretch before); `extra_ms` = pair - 2 x decode.
    profile_pairs > 0: that many more pairs under torch.profiler, summarized per pair as run_profile does
    (`profile`: GPU busy, host launch calls, syncs, top kernels, and the top host ops by self CPU time)."""
    from engine.sampling_params import SamplingParams

    g = torch.Generator().manual_seed(1000 + B)
    ids = [f"{tag}mix{B}-{i}" for i in range(B)]
    for rid in ids:
        eng.add_request(rid, rand_ids(g, 64, vocab_hi), SamplingParams(temperature=0.0, max_tokens=4 * n + 64,
                                                                         ignore_eos=True))
    sch = eng.scheduler
    while sch.waiting or any(s.num_computed_tokens < s.num_prompt_tokens for s in sch.running):
        eng.step()
    decode = []
    for _ in range(n + 2):
        t = time.perf_counter()
        eng.step()
        decode.append(time.perf_counter() - t)
    pairs = []
    for i in range(n):
        eng.add_request(f"{tag}mixp{B}-{i}", rand_ids(g, L, vocab_hi),
                        SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True))
        t = time.perf_counter()
        eng.step()
        eng.step()
        pairs.append(time.perf_counter() - t)
    prof = None
    if profile_pairs:
        from torch.profiler import ProfilerActivity, profile

        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            t = time.perf_counter()
            for i in range(profile_pairs):
                eng.add_request(f"{tag}mixprof{B}-{i}", rand_ids(g, L, vocab_hi),
                                SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True))
                eng.step()
                eng.step()
            torch.cuda.synchronize()
            wall = (time.perf_counter() - t) / profile_pairs
    for rid in ids:
        eng.abort_request(rid)
    while eng.has_unfinished():
        eng.step()
    dec, pair = statistics.median(decode[2:]), statistics.median(pairs[1:])
    out = {"batch": B, "prompt_len": L, "prompts": n, "decode_ms": round(dec * 1e3, 3),
           "pair_ms": round(pair * 1e3, 3), "extra_ms": round((pair - 2 * dec) * 1e3, 3)}
    if prof is not None:
        out["profile"] = profile_summary(prof, profile_pairs, wall, host_top=20)
    return out


def run_prefill(eng, n, L, vocab_hi, tag, seed: int = 7) -> float:
    from engine.sampling_params import SamplingParams

    g = torch.Generator().manual_seed(seed)  # other seeds for warm-ups: no prefix-cache hits
    reqs = [rand_ids(g, L, vocab_hi) for _ in range(n)]
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i, r in enumerate(reqs):
        eng.add_request(f"{tag}p{i}", r, SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True))
    while eng.has_unfinished():
        eng.step()
    torch.cuda.synchronize()
    return time.perf_counter() - t0


def fill_random(kv, seq_id: str) -> None:
    """Random entries in the sequence's slot and blocks (bf16/fp32 normal; packed FP8/MXFP4 bytes & 0x37:
    finite small values in every field)."""
    slot, blocks = kv.slot(seq_id), torch.tensor(kv.block_table(seq_id), device=kv.device)
    for layer in kv.state.layers:
        for name, t in layer.items():
            rows = t[slot:slot + 1] if name in ("window", "kv_tail", "score_tail", "idx_kv_tail",
                                                  "idx_score_tail") else None
            for i0 in range(0, len(blocks) if rows is None else 1, 512):
                idx = blocks[i0:i0 + 512] if rows is None else torch.tensor([slot], device=kv.device)
                shape = (idx.numel(), *t.shape[1:])
                if t.dtype == torch.uint8:
                    v = torch.randint(0, 256, shape, dtype=torch.uint8, device=kv.device) & 0x37
                else:
                    v = (torch.randn(shape, device=kv.device) * 0.5).to(t.dtype)
                t.index_copy_(0, idx, v)


def run_context(eng, L: int, iters: int, use_graphs: bool) -> float:
    """Median ms of one decode step (runner + argmax + token to host) of one sequence at position L."""
    from engine.scheduler import ScheduledChunk, SchedulerOutput
    from engine.sequence import Sequence

    runner, kv = eng.runner, eng.kv
    seq = Sequence(seq_id=f"ctx{L}", request_id=f"ctx{L}", sample_index=0, prompt_token_ids=[VOCAB_LO] * (L + 1),
                   max_tokens=1)
    if not kv.allocate(seq.seq_id, L + 1):
        raise RuntimeError(f"cache too small for a {L}-token context (raise --blocks)")
    try:
        fill_random(kv, seq.seq_id)
        chunk = ScheduledChunk(seq=seq, start=L, num_tokens=1, sample=True)
        out = SchedulerOutput(chunks=[chunk], num_batched_tokens=1)
        saved = runner.graphs
        runner.graphs = saved if use_graphs else None
        times = []
        for i in range(iters + 3):
            torch.cuda.synchronize()
            t = time.perf_counter()
            res = runner.execute(out, [False])
            res.sample_logits.argmax(-1).tolist()
            if i >= 3:
                times.append(time.perf_counter() - t)
        runner.graphs = saved
        return statistics.median(times) * 1e3
    finally:
        kv.free(seq.seq_id)


def run_profile(eng, B, steps, in_len, vocab_hi) -> dict:
    from torch.profiler import ProfilerActivity, profile

    from engine.sampling_params import SamplingParams

    g = torch.Generator().manual_seed(0)
    for i in range(B):
        eng.add_request(f"prof{B}-{i}", rand_ids(g, in_len, vocab_hi),
                        SamplingParams(temperature=0.0, max_tokens=steps + 12, ignore_eos=True))
    while eng.has_unfinished() and any(s.num_computed_tokens < s.num_prompt_tokens for s in eng.scheduler.running) \
            or eng.scheduler.waiting:
        eng.step()
    for _ in range(4):
        eng.step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t = time.perf_counter()
        for _ in range(steps):
            eng.step()
        torch.cuda.synchronize()
        wall = (time.perf_counter() - t) / steps
    while eng.has_unfinished():
        eng.step()
    return {"batch": B, **profile_summary(prof, steps, wall)}


# ---- driver --------------------------------------------------------------------------------------
def cache_plan(batches: list[int], prof_b: list[int], contexts: list[int], prefill: str, in_len: int,
               out_len: int, bs: int, max_pos: int, mixed: str = "") -> tuple[int, int, int, int, int]:
    """-> (prompts n, prompt length L, max_num_seqs, max_model_len, KV blocks) for the cases asked. max_num_seqs
    covers every decode batch and every prompt of the prefill case (with --batches '' it once came from the
    decode batches only: the 8 x 4,096 prompts ran one at a time, 4,096-token steps, 36K instead of 52K tok/s)."""
    n, L = (int(x) for x in prefill.split("x")) if prefill else (0, 0)
    mix = [tuple(int(v) for v in spec.split(":")) for spec in mixed.split(",")] if mixed else []
    # run_mixed: B decoders of 64 + 4 x 16 + 64 tokens, and up to two of its prompts at once (async: a finished
    # prompt's sequence is freed a step later)
    max_b = max(batches + prof_b + [n, 1] + [b + 2 for b, _ in mix])
    # long enough for every decode position and every prompt (+1 generated token), also with --contexts ''
    max_len = min(max_pos, max(contexts + [4096, L + 1] + [length + 1 for _, length in mix]) + 2 * bs)
    num_blocks = (max(contexts + [0]) // bs + 2) + max_b * -(-(in_len + out_len + 16) // bs) \
        + n * -(-(L + 1) // bs) + 64 + sum(b * -(-(64 + 4 * 16 + 64 + 16) // bs) + 2 * -(-(length + 1) // bs)
                                           for b, length in mix)
    return n, L, max_b, max_len, num_blocks


def build_engine(args, model_dir, kv, num_blocks, max_len, max_b, cached_model):
    """cached_model: the first KV format's weights; a later format gets a new cache + graphs on them."""
    from engine.config import EngineArgs

    return ckpt_util.engine_on_weights(EngineArgs(
        model=model_dir, device="cuda", dtype="bfloat16", max_num_seqs=max_b, max_num_batched_tokens=args.budget,
        num_kv_blocks=num_blocks, kv_cache_dtype=kv, max_model_len=max_len, enforce_eager=args.enforce_eager,
        async_scheduling={"auto": None, "on": True, "off": False}[args.async_scheduling]),
        cached_model)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="checkpoint dir (default: draw one on the GPU into --ckpt-dir)")
    ap.add_argument("--preset", default="flash")
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--ckpt-dir", default=None)
    ap.add_argument("--kv", default="bf16,fp8_fp4idx", help="KV formats, comma-separated (bf16 = auto)")
    ap.add_argument("--batches", default="1,8,64,256")
    ap.add_argument("--in-len", type=int, default=128)
    ap.add_argument("--out-len", type=int, default=48)
    ap.add_argument("--prefill", default="8x4096", help="N x L prompts ('' = skip)")
    ap.add_argument("--prefill-warmup-len", type=int, default=0,
                    help="warm-up prompt length before the timed prefill (0 = the measured L)")
    ap.add_argument("--prefill-kv", default="bf16", help="KV formats that run the prefill case")
    ap.add_argument("--contexts", default="4096,131072,1048000", help="decode positions ('' = skip)")
    ap.add_argument("--context-iters", type=int, default=20)
    ap.add_argument("--profile-batch", default="1,64", help="profiled decode batches ('' = skip)")
    ap.add_argument("--mixed", default="", help="B:L[,B:L...]: the cost of one L-token prompt's step among B "
                    "decoding sequences (run_mixed; '' = skip), e.g. 64:349 = bench.serve's chat prompts")
    ap.add_argument("--profile-steps", type=int, default=3)
    ap.add_argument("--profile-mixed", type=int, default=0,
                    help="after each --mixed case, this many more pairs under torch.profiler (its `profile`)")
    ap.add_argument("--budget", type=int, default=None,
                    help="max_num_batched_tokens (default: the engine's, 16384 on an H200; sessions <= 8 used 8192)")
    ap.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs at all (the 'before' engine)")
    ap.add_argument("--async-scheduling", choices=("auto", "on", "off"), default="auto",
                    help="the overlapped loop (auto: on for one CUDA device, as the engine resolves it)")
    ap.add_argument("--compare-eager", action="store_true", help="also time eager decode on the same engine")
    ap.add_argument("--preload", default=None, help="python file executed before loading (workarounds)")
    args = ap.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    if args.preload:
        sys.path.insert(0, os.path.dirname(os.path.abspath(args.preload)))
        __import__(Path(args.preload).stem)
    batches = [int(b) for b in args.batches.split(",") if b]
    contexts = [int(c) for c in args.contexts.split(",") if c]
    kvs = ["auto" if k == "bf16" else k for k in args.kv.split(",") if k]
    prefill_kvs = {"auto" if k == "bf16" else k for k in args.prefill_kv.split(",") if k}
    prof_b = [int(b) for b in args.profile_batch.split(",") if b]
    result: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "argv": sys.argv[1:]}
    result["hbm_read_gbps"] = bw = round(hbm_read_gbps(), 1)
    result["matmul_tflops"] = peak = round(matmul_tflops(), 1)
    model_dir, gen_s = ensure_checkpoint(args)
    result["checkpoint"] = {"dir": model_dir, "generate_s": round(gen_s, 1)}
    log({"case": "setup", **result})

    from kvcache.sizing import choose_block_size
    from models.config import ModelConfig

    cfg = ModelConfig.from_json(model_dir)
    bs = choose_block_size(cfg)
    n, L, max_b, max_len, num_blocks = cache_plan(batches, prof_b, contexts, args.prefill, args.in_len,
                                                  args.out_len, bs, cfg.max_position_embeddings, args.mixed)
    result["cache"] = {"block_size": bs, "num_blocks": num_blocks, "max_model_len": max_len}
    cached_model = None
    result["formats"] = {}
    for kv in kvs:
        torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        eng = build_engine(args, model_dir, kv, num_blocks, max_len, max_b, cached_model)
        build_s = time.perf_counter() - t
        graphs = eng.runner.graphs
        fmt = {"kv": kv, "startup": {"engine_s": round(build_s, 1), "load_s": round(eng.load_s, 1),
                                     "capture_s": round(graphs.capture_s, 1) if graphs else None,
                                     "reused_weights": cached_model is not None,
                                     "graph_buckets": graphs.sizes if graphs else None},
               "gpu_mem_gb": round(torch.cuda.memory_allocated() / 2**30, 1),
               "budget": eng.scheduler.config.max_num_batched_tokens}
        cached_model = eng.model
        vocab_hi = min(120000, eng.tokenizer.vocab_size - 300)
        global VOCAB_LO
        VOCAB_LO = min(VOCAB_LO, vocab_hi // 4)
        mb = model_bytes(eng.model)
        fmt["weight_gb"] = round(mb["total"] / 1e9, 2)
        E, K = cfg.n_routed_experts, cfg.num_experts_per_tok
        run_decode(eng, min(4, max_b), 64, 8, f"warm{kv}", vocab_hi)
        modes = ["eager"] if graphs is None else (["graph", "eager"] if args.compare_eager else ["graph"])
        fmt["decode"] = {}
        for mode in modes:
            eng.runner.graphs = graphs if mode == "graph" else None
            rows = []
            for B in batches:
                r = run_decode(eng, B, args.in_len, args.out_len, f"{kv}{mode}", vocab_hi)
                frac = 1 - (1 - K / E) ** B
                ideal = (mb["total"] - mb["experts"] - mb["embed"]) + mb["experts"] * frac
                r["roofline_ms"] = round(ideal / (bw * 1e9) * 1e3, 3)
                r["pct_roofline"] = round(100 * r["roofline_ms"] / r["step_ms"], 1)
                log({"case": "decode", "kv": kv, "mode": mode, **r})
                rows.append(r)
            fmt["decode"][mode] = rows
        eng.runner.graphs = graphs
        if args.mixed:
            fmt["mixed"] = []
            for spec in args.mixed.split(","):
                b, length = (int(v) for v in spec.split(":"))
                run_mixed(eng, b, length, 4, vocab_hi, f"warm{kv}")  # compiles of the mixed shapes land here
                with JitWatch() as jw:
                    r = {**run_mixed(eng, b, length, 16, vocab_hi, f"{kv}", args.profile_mixed),
                         "jit_in_timed": jw.summary()["count"]}
                log({"case": "mixed", "kv": kv, **r})
                fmt["mixed"].append(r)
        if n and kv in prefill_kvs:
            # warm-up at the measured shapes (other tokens): every kernel config of the run compiles here
            # (--prefill-warmup-len: a shorter warm-up prompt for very long ones, e.g. 131072 before 1M)
            run_prefill(eng, n, min(L, args.prefill_warmup_len or L), vocab_hi, f"warm{kv}", seed=11)
            with JitWatch() as jw:  # the compiles the warm-up missed (other specializations) land here
                dt = run_prefill(eng, n, L, vocab_hi, f"{kv}")
            fl = flops_per_token(eng.model, L) * n * L
            fmt["prefill"] = {"n": n, "len": L, "s": round(dt, 3), "tok_s": round(n * L / dt, 1),
                              "tflops": round(fl / dt / 1e12, 1), "mfu_measured_peak": round(fl / dt / 1e12 / peak, 4),
                              "mfu_datasheet_989": round(fl / dt / 1e12 / 989, 4), "jit_in_timed": jw.summary()}
            log({"case": "prefill", "kv": kv, **fmt["prefill"]})
        fmt["context"] = {}
        for mode in modes:
            row = {}
            for c in contexts:
                row[c] = round(run_context(eng, c, args.context_iters, mode == "graph"), 3)
            if contexts:
                row["ratio_max_vs_first"] = round(row[contexts[-1]] / row[contexts[0]], 3)
            fmt["context"][mode] = row
            log({"case": "context", "kv": kv, "mode": mode, **{str(k): v for k, v in row.items()}})
        fmt["profile"] = {}
        for mode in modes:
            eng.runner.graphs = graphs if mode == "graph" else None
            try:
                fmt["profile"][mode] = [run_profile(eng, B, args.profile_steps, args.in_len, vocab_hi) for B in prof_b]
            except Exception as e:  # the profiler is a diagnostic: keep the other numbers
                fmt["profile"][mode] = {"error": repr(e)[:300]}
                log({"case": "profile", "kv": kv, "mode": mode, "error": repr(e)[:300]})
                continue
            steps = {r["batch"]: r["step_ms"] for r in fmt["decode"].get(mode, [])}
            for p in fmt["profile"][mode]:
                if p["batch"] in steps:  # the profiler stretches the wall time: GPU time vs the unprofiled step
                    p["gpu_busy_vs_unprofiled_step"] = round(min(1.0, p["gpu_ms"] / steps[p["batch"]]), 3)
                log({"case": "profile", "kv": kv, "mode": mode, **p})
        eng.runner.graphs = graphs
        fmt["peak_gpu_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
        result["formats"][kv] = fmt
        del eng, graphs
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
    summary = {}
    for kv, fmt in result["formats"].items():
        for mode, rows in fmt["decode"].items():
            summary[f"{kv}/{mode}"] = {r["batch"]: (r["step_ms"], r["pct_roofline"]) for r in rows}
    result["summary_step_ms_pct_roofline"] = summary
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
