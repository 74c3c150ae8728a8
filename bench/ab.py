"""Run one benchmark command under several environment variants, one process each, and compare their final
JSON lines.

The kernels' experiment switches (`V4SERVE_FP8_SCALED_MM_MIN_M`, `V4SERVE_FP8_ACT_MIN_M`, `V4_TOPK_PREFILL`,
`V4_IDX_ROWS`, `V4_IDX_SCORE_MB`, ...) are read when their modules load, so each variant needs its own
process. Every benchmark in bench/ ends with one JSON line; this collects them side by side:

    python -m bench.ab --variant base= --variant act128=V4SERVE_FP8_ACT_MIN_M=128 \\
        --keys summary_step_ms_pct_roofline -- python -m bench.e2e --model /tmp/f8 --batches 256 --prefill ''

`--variant NAME=K1=V1,K2=V2` (an empty assignment list: the environment as it is). `--keys a.b,c`: the
fields (dotted paths) printed per variant; the last line holds every variant's whole JSON, its exit status
and wall time. `--prime`: run the command once in the plain environment first, outside the comparison (the first
process on a fresh machine pays the Triton compiles: 48.5 against 40.0 s for the same 1M-token prompt in
session 9); its whole run is kept under `prime` and its `--keys` printed. `--rounds N`: the variants in
turn N times (A B A B ...); each variant then reports `rounds` (every run's rc, wall time and result) and
`median` of each `--keys` field, and `result` is its last run's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    """'name=K1=V1,K2=V2' -> (name, {K1: V1, K2: V2}); 'name=' -> (name, {})."""
    name, sep, rest = text.partition("=")
    if not sep or not name:
        raise ValueError(f"variant {text!r} is not NAME=K1=V1,K2=V2 (or NAME= for the plain environment)")
    env = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ValueError(f"variant {name!r}: {item!r} is not KEY=VALUE")
        env[key] = value
    return name, env


def last_json(text: str) -> dict | None:
    """The last line of `text` that parses as a JSON object, or None."""
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    return None


def pick(obj, path: str):
    for part in path.split("."):
        if not isinstance(obj, dict) or part not in obj:
            return None
        obj = obj[part]
    return obj


def _run(cmd: list[str], env: dict[str, str], timeout: float | None) -> dict:
    """One process of `cmd` with `env` over the current environment -> {rc, wall_s, result[, stderr_tail]}."""
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout)
        rc, out, err = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as e:
        rc, out, err = "timeout", e.stdout or "", e.stderr or ""
        out, err = (x.decode() if isinstance(x, bytes) else x for x in (out, err))
    return {"rc": rc, "wall_s": round(time.perf_counter() - t0, 1), "result": last_json(out),
            **({} if rc == 0 else {"stderr_tail": err[-2000:]})}


def _median(values: list):
    """The median of the numbers among `values` (None when there are none)."""
    nums = sorted(v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool))
    if not nums:
        return None
    mid = len(nums) // 2
    return nums[mid] if len(nums) % 2 else (nums[mid - 1] + nums[mid]) / 2


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    if "--" not in argv:
        raise SystemExit("usage: python -m bench.ab --variant NAME=K=V,... [--keys a.b,c] -- COMMAND ...")
    split = argv.index("--")
    ap = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__.splitlines()[0])
    ap.add_argument("--variant", action="append", required=True, help="NAME=K1=V1,K2=V2 (repeat)")
    ap.add_argument("--keys", default="", help="comma-separated dotted JSON fields to print per variant")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per variant")
    ap.add_argument("--rounds", type=int, default=1, help="run the variants in turn this many times")
    ap.add_argument("--prime", action="store_true",
                    help="one run in the plain environment first, outside the comparison (kept under 'prime')")
    args = ap.parse_args(argv[:split])
    if args.rounds < 1:
        ap.error("--rounds must be >= 1")
    cmd = argv[split + 1:]
    if not cmd:
        ap.error("no command after --")
    try:
        variants = [parse_variant(v) for v in args.variant]
    except ValueError as e:
        ap.error(str(e))
    if len({n for n, _ in variants}) != len(variants):
        ap.error("variant names must differ")
    keys = [k for k in args.keys.split(",") if k]
    report = {"command": cmd, "variants": {}}
    if args.prime:
        run = _run(cmd, {}, args.timeout)
        report["prime"] = run  # kept whole: what the first process paid (e.g. e2e's jit_in_timed)
        shown = {k: pick(run["result"], k) for k in keys} if run["result"] is not None else "no JSON line"
        print(f"# prime rc={run['rc']} ({run['wall_s']} s, not a variant): {json.dumps(shown)}", flush=True)
    for rnd in range(args.rounds):
        for name, env in variants:
            run = _run(cmd, env, args.timeout)
            res = run["result"]
            earlier = report["variants"].get(name, {}).get("rounds", [])
            report["variants"][name] = {"env": env, **run, **({"rounds": earlier + [run]} if args.rounds > 1 else {})}
            shown = {k: pick(res, k) for k in keys} if res is not None else "no JSON line"
            tag = f"{name} (round {rnd + 1})" if args.rounds > 1 else name
            print(f"# {tag} rc={run['rc']}: {json.dumps(shown)}", flush=True)
    if args.rounds > 1:
        for entry in report["variants"].values():
            entry["median"] = {k: _median([pick(r["result"], k) for r in entry["rounds"] if r["result"] is not None])
                               for k in keys}
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
