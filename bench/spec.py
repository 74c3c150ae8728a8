"""Cost of MTP speculative decoding steps (issue 13) on a V4-Flash-shaped synthetic checkpoint (GPU).

    python -m bench.spec                          # 8 layers + the MTP block, drawn on the GPU into --ckpt-dir
    python -m bench.spec --batches 1,8,64 --ks 1,2,3 --kv fp8_fp4idx

Synthetic weights make acceptance meaningless, so this measures costs: B greedy requests decode
(--in-len prompt, ignore_eos) and the median wall time of LLMEngine.step() is taken once all B decode:
  plain_graph   the default engine (CUDA-graph decode, async scheduling) -- what speculation competes with
  plain_eager   (--plain-eager) the speculative engine's own loop with speculation off (eager, synchronous)
  spec_k        a speculative step with k drafts: verify forward of k+1 tokens per sequence, rejection
                sampling, rollback, MTP catch-up + k-1 chained MTP passes (the MTP's own drafts: almost
                always rejected on random weights, so every step is a full-cost step); pure-decode
                steps replay the speculative CUDA graphs (engine/spec_decode_graphs.py; greedy requests:
                the one `greedy` graph; `graph_steps` / `greedy_graph_steps` count them; --eager-spec:
                without), captured for the --batches sizes only; k = 2 runs first, batch-major
  eager_draft_ms  of an eager spec_k step, the MTP part alone (synchronized around it)
  breakdown     median ms per segment of the graph steps (engine/spec_decode_timing.py): host segments
                (plan, verify_fill, rejection, draft_fill, draft_wait, append, host_total) and device
                segments (verify_gpu, draft_gpu, gpu_gap = device idle while the host samples);
                sched_ms = step wall - host_total (scheduler, LLMEngine.step around it)
  sections_ms   device ms of every section of the graphs the steps ran (greedy rows: the one `greedy` graph
                = verify + accept + draft; else `verify` and `draft`): rowlog_save / forward / lm_head /
                accept / rowlog_restore / mtp_catchup / mtp_head / mtp_chain*..., each captured alone and
                replayed on an all-padding batch of random tokens (short context); plain_sections_ms the
                same for the plain decode graph (decode.forward / head)
  lm_head       (--head-costs) device ms of the LM head + argmax at B rows (as a draft pass runs it): the
                resident bf16 head vs an FP8 block-scaled copy (what an FP8 draft head would save per pass)
  projected_43  a PROJECTION, not a measurement: the ratio at V4-Flash's 43 layers, from the measured
                per-layer forward times (plain decode.forward / L, verify.forward / L) -- the main forward
                scales with layers, the MTP passes, LM heads and host work do not
Implied tokens/s at accept length A (tokens emitted per step per sequence, published V4 figures 1.9 /
2.5) = B x A / spec step; speedup = that / (B / plain_graph step).
The last printed line is one JSON object with everything.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from bench import ckpt_util
from engine.spec_decode_timing import StepTimer

VOCAB_LO = 1000


def log(obj) -> None:
    print(json.dumps(obj), flush=True)


def build(args, model_dir, kv, spec, cached, eager=False):
    from engine.config import EngineArgs

    # cached: the weights (incl. the MTP block) an earlier engine loaded; a new cache and graphs
    eng = ckpt_util.engine_on_weights(EngineArgs(
        model=model_dir, device=args.device, dtype="bfloat16" if args.device == "cuda" else "float32",
        max_num_seqs=max(args.batch_list),
        max_num_batched_tokens=args.budget, num_kv_blocks=args.blocks, kv_cache_dtype=kv,
        max_model_len=args.in_len + args.out_len + 8, enable_prefix_caching=False,
        speculative_config=spec, enforce_eager=eager), cached)
    if args.cpu_graphs:  # smoke test: the static-buffer graph bodies run eagerly
        if eng.spec is not None:
            eng.spec.enable_graphs(capture=False)
        elif eng.kv.pad_slot is not None:
            eng.runner.capture_graphs(max(args.batch_list), eng.max_model_len, capture=False)
    return eng


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


def project(plain_ms: float, spec_ms: float, plain_fwd: float, verify_fwd: float, layers: int,
            target: int = 43) -> dict:
    """Step times at `target` layers: the measured step + (target - layers) x the measured per-layer forward
    time (plain: decode.forward / layers at q=1; spec: verify.forward / layers at q=k+1)."""
    extra = target - layers
    p = plain_ms + extra * plain_fwd / layers
    s = spec_ms + extra * verify_fwd / layers
    return {"what": f"PROJECTION to {target} layers (measured step + per-layer forward x {extra})",
            "per_layer_plain_ms": round(plain_fwd / layers, 4), "per_layer_verify_ms": round(verify_fwd / layers, 4),
            "plain_ms": round(p, 3), "spec_ms": round(s, 3), "ratio": round(s / p, 3)}


def graph_ms(fn, iters: int = 20) -> float:
    """Device ms of fn() captured in a CUDA graph (mean of `iters` replays)."""
    fn()
    g = torch.cuda.CUDAGraph()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
        torch.cuda.synchronize()
        with torch.cuda.graph(g, stream=s):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    g.replay()
    a.record()
    for _ in range(iters):
        g.replay()
    b.record()
    torch.cuda.synchronize()
    return round(a.elapsed_time(b) / iters, 4)


@torch.inference_mode()
def head_costs(model, batches: list[int]) -> dict:
    """The LM head (+ argmax, as a draft pass runs it) at B rows: the resident head vs an FP8 block-scaled copy
    (what an FP8 draft head would cost; drafts are proposals, so the output stays exact either way)."""
    import kernels
    from kernels.codecs import quant_fp8_block
    from kernels.quant_weight import QuantWeight

    w = model.head.weight
    if not torch.cuda.is_available() or w.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        return {}
    q = QuantWeight(*quant_fp8_block(w), "fp8")
    out = {"head_bytes_bf16": w.numel() * w.element_size(), "head_bytes_fp8": q.nbytes()}
    for B in batches:
        h = torch.randn(B, w.shape[1], device=w.device, dtype=w.dtype)
        out[str(B)] = {"bf16_argmax_ms": graph_ms(lambda: model.compute_logits(h).argmax(-1)),
                       "fp8_argmax_ms": graph_ms(lambda: kernels.linear(h, q).float().argmax(-1))}
    del q
    return out


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
    ap.add_argument("--eager-spec", action="store_true", help="speculative steps without their CUDA graphs")
    ap.add_argument("--spec-graphs", choices=("greedy", "all"), default="greedy",
                    help="speculative graphs to capture (greedy: the one-graph greedy path the benchmark's greedy "
                         "requests take; all: + verify/draft, as the engine does)")
    ap.add_argument("--cpu-graphs", action="store_true", help=argparse.SUPPRESS)  # CPU smoke test of the graph path
    ap.add_argument("--plain-eager", action="store_true", help="also time plain eager decode (vs_plain_eager)")
    ap.add_argument("--head-costs", action="store_true", help="also time the LM head + argmax, bf16 vs FP8")
    ap.add_argument("--no-breakdown", action="store_true", help="skip the step breakdown and section profile")
    ap.add_argument("--device", default="cuda", help="cuda (the benchmark); cpu only to smoke-test the script")
    args = ap.parse_args(argv)
    args.batch_list = [int(b) for b in args.batches.split(",")]
    ks = [int(k) for k in args.ks.split(",")]
    accepts = [float(a) for a in args.accept.split(",")]
    model_dir, _ = ckpt_util.ensure_checkpoint(args.model, args.ckpt_dir, preset=args.preset, layers=args.layers,
                                               tag="spec", mtp=True, device=args.device)

    def spec_engine(k, cached):
        # graphs captured here, for the measured batch sizes only (start-up time): greedy requests need the
        # one-graph greedy path; --spec-graphs all also captures verify + draft (the engine default)
        eng = build(args, model_dir, args.kv, {"method": "mtp", "num_speculative_tokens": k}, cached, eager=True)
        if not args.eager_spec and eng.device.type == "cuda":
            eng.spec.enable_graphs(buckets=args.batch_list,
                                   names=None if args.spec_graphs == "all" else ("greedy",))
        return eng

    order = sorted(ks, key=lambda k: (k != 2, ks.index(k)))  # the target (k = 2) first
    engines = {order[0]: spec_engine(order[0], None)}  # loads the weights (incl. the MTP block) once
    model = engines[order[0]].model
    plain_eng = build(args, model_dir, args.kv, None, model)
    pg = plain_eng.runner.graphs
    L = plain_eng.model_config.num_hidden_layers
    results = {"layers": L, "kv": args.kv, "spec_graphs": not args.eager_spec, "batches": {}}
    rows = {}
    draft_times: dict[int, list[float]] = {}
    # batch-major, so that a run cut by a time limit has the small batches complete (k = 2 first)
    for B in args.batch_list:
        row = rows[B] = {"plain_graph_ms": median_ms(timed_decode(plain_eng, B, args, "g"))}
        if pg is not None and not args.no_breakdown:
            row["plain_sections_ms"] = pg.time_sections(pg.bucket_for(B))
        log({"batch": B, **row})
        for k in order:
            if k not in engines:
                engines[k] = spec_engine(k, model)
            eng = engines[k]
            sd = eng.spec
            if k not in draft_times:
                draft_times[k] = []

                def timed_draft(*a, _inner=sd._draft, _times=draft_times[k], **kw):
                    sync()
                    t = time.perf_counter()
                    _inner(*a, **kw)
                    sync()
                    _times.append(time.perf_counter() - t)
                sd._draft = timed_draft  # the eager step's MTP part (the graph step's is inside its replay)
            if args.plain_eager and "plain_eager_ms" not in row:
                eng.spec = None  # the same engine, speculation off: eager synchronous decode
                row["plain_eager_ms"] = median_ms(timed_decode(eng, B, args, "e"))
                eng.spec = sd
            sd.drafts.clear()
            draft_times[k].clear()
            g0 = sd.graphs.num_steps if sd.graphs is not None else 0
            gg0 = sd.graphs.num_greedy_steps if sd.graphs is not None else 0
            sd.timer = StepTimer(eng.device) if not args.no_breakdown else None
            walls = timed_decode(eng, B, args, f"s{k}")
            st = median_ms(walls)
            dt = draft_times[k][2:]
            r = {"step_ms": st, "graph_steps": (sd.graphs.num_steps - g0) if sd.graphs is not None else 0,
                 "eager_draft_ms": median_ms(dt) if dt else None,
                 "vs_plain_graph": round(st / row["plain_graph_ms"], 3)}
            if "plain_eager_ms" in row:
                r["vs_plain_eager"] = round(st / row["plain_eager_ms"], 3)
            if sd.timer is not None and sd.timer.steps:
                bd = sd.timer.summary()
                bd["sched_ms"] = round(st - bd.get("host_total", 0.0), 4)
                r["breakdown"] = bd
                sd.timer = None
                gr = sd.graphs
                names = ("greedy",) if gr is not None and gr.num_greedy_steps else ("verify", "draft")
                sec = gr.time_sections(gr.bucket_for(B), names=names) if gr is not None else {}
                r["greedy_graph_steps"] = gr.num_greedy_steps - gg0 if gr is not None else 0
                r["sections_ms"] = sec
                r["mtp_sections_ms"] = round(sum(v for n, v in sec.items() if ".mtp_" in n), 4)
                r["rowlog_sections_ms"] = round(sum(v for n, v in sec.items() if "rowlog" in n), 4)
                pf = row.get("plain_sections_ms", {}).get("decode.forward")
                vf = next((v for n, v in sec.items() if n.endswith(".forward")), None)
                if pf and vf:
                    r["projected_43"] = project(row["plain_graph_ms"], st, pf, vf, L)
            sd.timer = None
            for a in accepts:
                tok_s = B * a / st * 1e3
                r[f"tok_s@{a}"] = round(tok_s, 1)
                r[f"speedup@{a}"] = round(tok_s / (B / row["plain_graph_ms"] * 1e3), 3)
            row[f"spec_k{k}"] = r
            log({"batch": B, "k": k, **r})
    for B in args.batch_list:
        results["batches"][str(B)] = rows[B]
    if args.head_costs:
        try:
            results["lm_head"] = head_costs(model, args.batch_list)
        except Exception as e:  # noqa: BLE001 - a side measurement
            results["lm_head"] = {"error": repr(e)[:300]}
        log({"lm_head": results["lm_head"]})

    log({"bench": "spec", **results})


if __name__ == "__main__":
    main()
