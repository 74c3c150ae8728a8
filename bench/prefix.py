"""Prefix-cache benchmark on the offline engine (issue 12): TTFT of a prompt whose long prefix is
cached vs the same prompt cold, and the memory a cached token costs (state snapshots included).

    python -m bench.prefix                                   # 8-layer V4-Flash-shaped checkpoint (bench/e2e.py)
    python -m bench.prefix --model DIR --kv bf16,fp8_fp4idx --prefix-len 32768 --new-len 64

Per KV format, on one engine with prefix caching (and one without, sharing the weights):
  cold      prefix_i + new tokens, a fresh random prefix each time (a miss): TTFT, median of --repeats
  hit       prefix_0 + different new tokens after prefix_0 was served: TTFT, median of --repeats;
            `cached_tokens` and the first token must equal the cold run of the same prompt after
            `reset_prefix_cache` (exactness check)
  nocache   the cold prompt on the engine without prefix caching (what the snapshot cuts cost a miss)
  bytes     snapshot bytes, snapshot interval, paged bytes per token, snapshot bytes per cached token
            (all rows of the engine's pool / its token capacity) and the same for the full V4-Flash
            preset next to its 3,514 B/token (FP8 entries + MXFP4 indexer keys)
TTFT = wall time from add_request to the first token on the host (max_tokens=1). The last printed
line is one JSON object with everything.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time

import torch

from bench import ckpt_util

VOCAB_LO = 1000


def log(obj) -> None:
    print(json.dumps(obj), flush=True)


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def ttft(eng, rid: str, prompt: list[int]):
    """-> (seconds to the first token, its output)."""
    from engine.outputs import OutputKind
    from engine.sampling_params import SamplingParams

    _sync(eng.device)
    t = time.perf_counter()
    eng.add_request(rid, prompt, SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True),
                    output_kind=OutputKind.FINAL_ONLY)
    out = None
    while eng.has_unfinished():
        for o in eng.step():
            out = o
    return time.perf_counter() - t, out


def build(args, model_dir, kv: str, caching: bool, cached_model):
    """cached_model: an earlier engine's weights (same weights, a new cache)."""
    from engine.config import EngineArgs

    return ckpt_util.engine_on_weights(EngineArgs(
        model=model_dir, device=args.device, dtype=args.dtype, max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.budget, num_kv_blocks=args.num_blocks, kv_cache_dtype=kv,
        block_size=args.block_size, enable_prefix_caching=caching, prefix_snapshot_interval=args.interval,
        max_model_len=args.prefix_len + args.new_len + 8, enforce_eager=args.enforce_eager), cached_model)


def byte_report(eng) -> dict:
    from kvcache.sizing import prefix_cache_report

    kv = eng.kv
    rep = prefix_cache_report(eng.model_config, kv.block_size, eng.dtype, kv.kv_format, kv.prefix.interval,
                              kv.num_blocks, kv.num_slots)
    return {"snapshot_bytes": rep.snapshot_bytes, "interval": rep.interval,
            "snapshot_rows": kv.prefix.snapshots.num_rows,
            "block_bytes_per_token": round(rep.block_bytes_per_token, 2),
            "snapshot_bytes_per_cached_token": round(rep.snapshot_bytes_per_token, 2),
            "extra_fraction": round(rep.extra_fraction, 4)}


def flash_reference() -> dict:
    """The full 43-layer V4-Flash at the default interval, FP8 entries + MXFP4 indexer keys, 1M-token cache."""
    from kvcache.sizing import kv_size_report, prefix_cache_report, prefix_snapshot_interval
    from models.config import PRESETS

    cfg = PRESETS["flash"]()
    iv = prefix_snapshot_interval(cfg, 128, torch.bfloat16, "fp8_fp4idx")
    rep = prefix_cache_report(cfg, 128, torch.bfloat16, "fp8_fp4idx", iv, num_blocks=(1 << 20) // 128, num_slots=64)
    return {"compressed_bytes_per_token": round(kv_size_report(cfg, "fp8", "fp4").bytes_per_token, 2),
            "snapshot_bytes": rep.snapshot_bytes, "interval": iv,
            "snapshot_bytes_per_cached_token": round(rep.snapshot_bytes_per_token, 2),
            "extra_fraction": round(rep.extra_fraction, 4)}


def run_format(args, model_dir, kv: str, cached_model, vocab_hi: int) -> tuple[dict, object]:
    g = torch.Generator().manual_seed(0)

    def ids(n):
        return torch.randint(VOCAB_LO if vocab_hi > 2 * VOCAB_LO else 2, vocab_hi, (n,), generator=g).tolist()

    eng = build(args, model_dir, kv, True, cached_model)
    model = eng.model
    ttft(eng, "warm", ids(args.new_len + 2 * eng.block_size))  # kernels compiled / autotuned
    prefixes = [ids(args.prefix_len) for _ in range(args.repeats + 1)]
    cold = [ttft(eng, f"cold{i}", p + ids(args.new_len))[0] for i, p in enumerate(prefixes[1:])]
    ttft(eng, "seed", prefixes[0] + ids(args.new_len))  # prefix_0 is now cached
    hits, cached, probe = [], [], None
    for i in range(args.repeats):
        probe = prefixes[0] + ids(args.new_len)
        t, out = ttft(eng, f"hit{i}", probe)
        hits.append(t)
        cached.append(out.num_cached_tokens)
    first_hit = out.outputs[0].token_ids
    eng.reset_prefix_cache()
    t_reset, out_cold = ttft(eng, "check", probe)
    res = {"kv": "bf16" if kv == "auto" else kv, "ttft_cold_ms": round(statistics.median(cold) * 1e3, 2),
           "ttft_hit_ms": round(statistics.median(hits) * 1e3, 2),
           "hit_over_cold": round(statistics.median(hits) / statistics.median(cold), 4),
           "cached_tokens": cached, "prompt_tokens": len(probe),
           "same_first_token_as_cold": first_hit == out_cold.outputs[0].token_ids,
           "cold_after_reset_cached_tokens": out_cold.num_cached_tokens, **byte_report(eng)}
    del eng, out, out_cold
    gc.collect()  # the engine's cache, snapshots and graph pool go before the next engine allocates
    if args.device == "cuda":
        torch.cuda.empty_cache()
    if args.compare_nocache:
        ref = build(args, model_dir, kv, False, model)
        ttft(ref, "warm", ids(args.new_len + 2 * ref.block_size))
        nc = [ttft(ref, f"nc{i}", ids(args.prefix_len + args.new_len))[0] for i in range(args.repeats)]
        res["ttft_nocache_ms"] = round(statistics.median(nc) * 1e3, 2)
        del ref
    return res, model


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="checkpoint dir (default: bench/e2e.py's synthetic checkpoint)")
    ap.add_argument("--preset", default="flash")
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--ckpt-dir", default=None)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--kv", default="bf16,fp8_fp4idx", help="KV formats, comma-separated (bf16 = auto)")
    ap.add_argument("--prefix-len", type=int, default=32768)
    ap.add_argument("--new-len", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--budget", type=int, default=8192, help="max_num_batched_tokens")
    ap.add_argument("--num-blocks", type=int, default=None, help="KV blocks (default: enough for 2 x repeats prompts)")
    ap.add_argument("--block-size", type=int, default=None)
    ap.add_argument("--interval", type=int, default=None, help="snapshot interval (default: auto)")
    ap.add_argument("--max-num-seqs", type=int, default=8)
    ap.add_argument("--enforce-eager", action="store_true",
                    help="skip the decode CUDA graphs (TTFT is a prefill step either way; saves capture time)")
    ap.add_argument("--no-compare-nocache", dest="compare_nocache", action="store_false",
                    help="skip the engine without prefix caching")
    args = ap.parse_args(argv)
    args.model, _ = ckpt_util.ensure_checkpoint(args.model, args.ckpt_dir, preset=args.preset, layers=args.layers,
                                                tag="e2e", device=args.device)  # bench/e2e.py's checkpoint
    from kvcache.sizing import choose_block_size
    from models.config import ModelConfig

    cfg = ModelConfig.from_json(args.model)
    bs = choose_block_size(cfg, args.block_size)
    if args.num_blocks is None:
        args.num_blocks = (2 * args.repeats + 4) * -(-(args.prefix_len + args.new_len + 8) // bs)
    result: dict = {"device": torch.cuda.get_device_name() if args.device == "cuda" else args.device,
                    "argv": sys.argv[1:] if argv is None else argv, "model": args.model,
                    "prefix_len": args.prefix_len, "new_len": args.new_len, "block_size": bs,
                    "num_blocks": args.num_blocks, "formats": [], "flash_reference": flash_reference()}
    from engine.tokenizer import Tokenizer

    vocab_hi = min(cfg.vocab_size, Tokenizer.from_dir(args.model).vocab_size)
    model = None
    for kv in ["auto" if k == "bf16" else k for k in args.kv.split(",") if k]:
        res, model = run_format(args, args.model, kv, model, vocab_hi)
        log({"case": "format", **res})
        result["formats"].append(res)
    log(result)
    return result


if __name__ == "__main__":
    main()
