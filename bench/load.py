"""Checkpoint loading cost: wall time, load rate and peak device memory against the resident weights.

    python -m bench.load --model DIR --device cuda
    python -m bench.load --preset flash --layers 8 --write-to /tmp/f8 --device cuda   # write, then load

With --preset the synthetic checkpoint (FP8 linears + MXFP4 experts, no MTP) is first written with its
random draws and quantization on --device (models.synthetic), and that time is reported too; an
existing complete checkpoint in --write-to is reused. The load is models.loading.load_model (lean
loading: meta build, resident storage decided before allocation, host tensors copied into place).
The last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.split("\n")[0])
    ap.add_argument("--model", help="checkpoint directory to load")
    ap.add_argument("--preset", help="write a synthetic quantized checkpoint of this preset first (flash, pro, tiny)")
    ap.add_argument("--layers", type=int, default=8, help="main layers of the synthetic checkpoint")
    ap.add_argument("--write-to", help="directory of the synthetic checkpoint (with --preset)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--include-mtp", action="store_true", help="also load the MTP block(s)")
    args = ap.parse_args(argv)
    if (args.model is None) == (args.preset is None):
        ap.error("give exactly one of --model DIR or --preset NAME --write-to DIR")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    out: dict = {"device": args.device, "dtype": args.dtype}
    model_dir = args.model
    if args.preset is not None:
        if args.write_to is None:
            ap.error("--preset needs --write-to DIR")
        from models.config import PRESETS

        if args.preset not in PRESETS:
            ap.error(f"--preset must be one of {sorted(PRESETS)}")
        cfg = PRESETS[args.preset]()
        if not 1 <= args.layers <= cfg.num_hidden_layers:
            ap.error(f"--layers must be in [1, {cfg.num_hidden_layers}] for preset {args.preset}")
        model_dir = args.write_to
        out["write_s"] = _write(cfg.with_layers(args.layers), Path(model_dir), args.device)
    from models.loading import load_model

    model = load_model(model_dir, args.device, getattr(torch, args.dtype), include_mtp=args.include_mtp)
    s = model.load_stats
    out.update(model_dir=str(model_dir), layers=model.cfg.num_hidden_layers,
               resident_gb=round(s.resident_bytes / 1e9, 3), load_s=round(s.seconds, 2),
               load_gb_per_s=round(s.gb_per_s, 3), quantized_resident=s.quantized_resident)
    if s.peak_device_bytes is not None:
        out["peak_device_gib"] = round(s.peak_device_bytes / 2**30, 3)
        out["peak_over_resident_gib"] = round((s.peak_device_bytes - s.resident_bytes) / 2**30, 3)
    print(json.dumps(out))
    return out


def _write(cfg, path: Path, device: str) -> float | None:
    """Write the synthetic checkpoint on `device` unless a complete one is there; -> seconds or None."""
    from models.synthetic import write_synthetic_checkpoint

    if (path / "model.safetensors.index.json").is_file():
        logging.info("reusing the checkpoint in %s", path)
        return None
    t0 = time.perf_counter()
    write_synthetic_checkpoint(cfg, path, seed=0, quantize=True, include_mtp=False, device=device)
    return round(time.perf_counter() - t0, 1)


if __name__ == "__main__":
    main()
