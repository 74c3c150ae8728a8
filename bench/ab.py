"""Run one benchmark command under several environment variants, one process each, and compare their final
JSON lines.

The kernels' experiment switches (`V4SERVE_FP8_SCALED_MM_MIN_M`, `V4SERVE_FP8_ACT_MIN_M`, `V4_TOPK_PREFILL`,
`V4_IDX_ROWS`, `V4_IDX_SCORE_MB`, ...) are read when their modules load, so each variant needs its own
process. Every benchmark in bench/ ends with one JSON line; this collects them side by side:

    python -m bench.ab --variant base= --variant act128=V4SERVE_FP8_ACT_MIN_M=128 \\
        --keys summary_step_ms_pct_roofline -- python -m bench.e2e --model /tmp/f8 --batches 256 --prefill ''

`--variant NAME=K1=V1,K2=V2` (an empty assignment list: the environment as it is). `--keys a.b,c`: the
fields (dotted paths) printed per variant; the last line holds every variant's whole JSON, its exit status
and wall time.
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


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    if "--" not in argv:
        raise SystemExit("usage: python -m bench.ab --variant NAME=K=V,... [--keys a.b,c] -- COMMAND ...")
    split = argv.index("--")
    ap = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__.splitlines()[0])
    ap.add_argument("--variant", action="append", required=True, help="NAME=K1=V1,K2=V2 (repeat)")
    ap.add_argument("--keys", default="", help="comma-separated dotted JSON fields to print per variant")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per variant")
    args = ap.parse_args(argv[:split])
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
    for name, env in variants:
        t0 = time.perf_counter()
        try:
            p = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True, timeout=args.timeout)
            rc, out, err = p.returncode, p.stdout, p.stderr
        except subprocess.TimeoutExpired as e:
            rc, out, err = "timeout", e.stdout or "", e.stderr or ""
            out, err = (x.decode() if isinstance(x, bytes) else x for x in (out, err))
        res = last_json(out)
        report["variants"][name] = {"env": env, "rc": rc, "wall_s": round(time.perf_counter() - t0, 1),
                                    "result": res, **({} if rc == 0 else {"stderr_tail": err[-2000:]})}
        shown = {k: pick(res, k) for k in keys} if res is not None else "no JSON line"
        print(f"# {name} rc={rc}: {json.dumps(shown)}", flush=True)
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
