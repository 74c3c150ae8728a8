"""Random-weight DeepSeek-V4 checkpoints in the official on-disk layout (tests, demos, benchmarks).

`write_synthetic_checkpoint` emits config.json, tokenizer files, `model-XXXXX-of-YYYYY.safetensors`
shards and `model.safetensors.index.json` holding exactly `expected_tensors(cfg, quantized)`.
Tensors are generated one at a time and a shard is flushed as soon as it reaches `shard_bytes`, so
host memory stays around one shard (plus the largest single tensor in float32) even for Flash/Pro.

Every tensor is drawn from its own generator seeded by (seed, name): a tensor does not depend on
which other tensors are written, so the quantized and BF16 checkpoints of one seed hold the same
underlying float weights (quantized = those floats through quant_fp8_block / pack_mxfp4; the
dequantized value is then "the" weight), and `--layers 2` shares its layers with the full model.

`device="cuda"` (`--device cuda`): the random draws and the quantization run on that device and only
the finished on-disk tensors come back to the host to be written (8 V4-Flash layers in about a minute
instead of many). The format is the CPU writer's (names, dtypes, shapes, scale layout); the values
differ, since CUDA generators draw other numbers than the CPU one for the same seed.

CLI: python -m models.synthetic --preset tiny|flash|pro [--layers N] [--quantize] [--seed S]
     [--device cpu|cuda] --out DIR
"""

from __future__ import annotations

import argparse
import json
import math
import time
import zlib
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import save_file

from models.checkpoint_spec import TensorSpec, expected_tensors, scale_name
from models.config import PRESETS, ModelConfig, QuantConfig
from kernels.codecs import pack_mxfp4, quant_fp8_block
from models.synthetic_tokenizer import write_tokenizer_files

DEFAULT_SHARD_BYTES = 4 * 2**30
ROW_CHUNK = 8192  # rows generated at once for tall matrices (a multiple of the 128-row FP8 tile)
INDEX_FILE = "model.safetensors.index.json"

# Init scales (std unless noted). Chosen so hidden states stay finite and O(1) through every layer:
LINEAR_GAIN = 1.0  # linear [out, in]: N(0, (gain / sqrt(in))^2)
OUT_PROJ_GAIN = 0.5  # wo_b and expert w2 write into the residual: smaller
NORM_NOISE = 0.02  # RMSNorm weights: 1 + N(0, 0.02^2)
HC_FN_GAIN = 0.1  # mHC fn [n, 4d]: N(0, (0.1 / sqrt(4d))^2) -> mixing logits ~ N(0, 0.01)
HC_BASE_STD = 0.1  # mHC base: near 0 (pre ~ 0.5, post ~ 1, comb ~ uniform before Sinkhorn)
HC_SCALE_NOISE = 0.1  # mHC scale: 1 + N(0, 0.1^2)
APE_STD = 0.02
GATE_BIAS_STD = 0.01


def _generator(seed: int, name: str, device: str | torch.device = "cpu") -> torch.Generator:
    # torch's CPU generator only uses the low 32 bits of a seed: hash seed and name together.
    return torch.Generator(device=device).manual_seed(zlib.crc32(f"{seed}/{name}".encode()))


def _matrix_std(kind: str, shape: tuple[int, ...]) -> float:
    if kind == "embed":
        return 1.0
    return (OUT_PROJ_GAIN if kind == "linear_out" else LINEAR_GAIN) / math.sqrt(shape[-1])


def float_weight(spec: TensorSpec, cfg: ModelConfig, seed: int, device: str | torch.device = "cpu") -> torch.Tensor:
    """The float32 value of one tensor (logical [out, in] shape for linears), drawn on `device`;
    int64 for tid2eid."""
    g = _generator(seed, spec.name, device)
    shape = spec.logical_shape or spec.shape
    randn = lambda: torch.randn(shape, generator=g, device=device)  # noqa: E731
    kind = spec.init
    if kind in ("linear", "linear_out", "embed"):
        return randn() * _matrix_std(kind, shape)
    if kind == "norm":
        return 1.0 + NORM_NOISE * randn()
    if kind == "hc_fn":
        return randn() * (HC_FN_GAIN / math.sqrt(shape[-1]))
    if kind == "hc_base":
        return randn() * HC_BASE_STD
    if kind == "hc_scale":
        return 1.0 + HC_SCALE_NOISE * randn()
    if kind == "sink":
        return randn()
    if kind == "ape":
        return randn() * APE_STD
    if kind == "gate_bias":
        return randn() * GATE_BIAS_STD
    if kind == "tid2eid":  # distinct experts per row, uniform over [0, E)
        rows, k = shape
        return torch.rand(rows, cfg.n_routed_experts, generator=g, device=device).topk(k, dim=1).indices.to(torch.int64)
    raise ValueError(f"no synthetic init for {spec.name} (init={kind!r})")


def make_tensors(spec: TensorSpec, cfg: ModelConfig, seed: int,
                 device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """The on-disk tensor(s) of one spec, drawn and encoded on `device`, returned on the host.
    Matrices taller than ROW_CHUNK (embed, head) are generated and encoded in row chunks into
    preallocated host outputs, so the float32 copy never exists whole."""
    shape = spec.logical_shape or spec.shape
    if spec.init not in ("linear", "linear_out", "embed") or shape[0] <= ROW_CHUNK:
        return {k: t.cpu() for k, t in encode_tensor(spec, float_weight(spec, cfg, seed, device)).items()}
    g = _generator(seed, spec.name, device)
    std = _matrix_std(spec.init, shape)
    rows, out, filled = shape[0], {}, {}
    for r0 in range(0, rows, ROW_CHUNK):
        n = min(ROW_CHUNK, rows - r0)
        for key, part in encode_tensor(spec, torch.randn(n, shape[1], generator=g, device=device) * std).items():
            if key not in out:  # output rows scale with input rows (1:1, or 1:128 for FP8 tile scales)
                total = -(-rows * part.shape[0] // n)
                out[key], filled[key] = torch.empty((total, *part.shape[1:]), dtype=part.dtype), 0
            out[key][filled[key]: filled[key] + part.shape[0]].copy_(part)  # device -> host
            filled[key] += part.shape[0]
    return out


def encode_tensor(spec: TensorSpec, w: torch.Tensor) -> dict[str, torch.Tensor]:
    """Float value -> the on-disk tensor(s): {name: tensor} (+ `.scale` for quantized linears)."""
    if spec.quant == "fp8":
        q, s = quant_fp8_block(w)
        return {spec.name: q, scale_name(spec.name): s}
    if spec.quant == "fp4":
        q, s = pack_mxfp4(w)
        return {spec.name: q, scale_name(spec.name): s}
    return {spec.name: w.to(spec.dtype).contiguous()}


def synthetic_config(cfg: ModelConfig, quantize: bool, include_mtp: bool = True) -> ModelConfig:
    """The config a synthetic checkpoint of `cfg` declares (quantization fields, MTP presence)."""
    if quantize:
        cfg = replace(cfg, quantization=cfg.quantization or QuantConfig(),
                      expert_dtype=cfg.expert_dtype if cfg.expert_dtype in ("fp4", "fp8") else "fp4")
    else:
        cfg = replace(cfg, quantization=None, expert_dtype=None)
    if not include_mtp:
        cfg = replace(cfg, num_nextn_predict_layers=0, mtp_compress_ratios=())
    return cfg


class _ShardWriter:
    """Buffers tensors and writes `model-XXXXX.tmp.safetensors` files of about `shard_bytes` each."""

    def __init__(self, out: Path, shard_bytes: int):
        self.out, self.shard_bytes = out, shard_bytes
        self.buf: dict[str, torch.Tensor] = {}
        self.buf_bytes = 0
        self.shards: list[list[str]] = []  # tensor names per written shard
        self.total_size = 0  # bytes of tensor data over all shards

    def add(self, tensors: dict[str, torch.Tensor]) -> None:
        for name, t in tensors.items():
            self.buf[name] = t
            self.buf_bytes += t.numel() * t.element_size()
        if self.buf_bytes >= self.shard_bytes:  # a weight and its scale always share a shard
            self.flush()

    def tmp_path(self, i: int) -> Path:
        return self.out / f"model-{i + 1:05d}.tmp.safetensors"

    def flush(self) -> None:
        if not self.buf:
            return
        save_file(self.buf, str(self.tmp_path(len(self.shards))), metadata={"format": "pt"})
        self.shards.append(list(self.buf))
        self.total_size += self.buf_bytes
        self.buf, self.buf_bytes = {}, 0

    def finish(self) -> dict[str, str]:
        """Rename to `model-XXXXX-of-YYYYY.safetensors`; returns the weight map."""
        self.flush()
        n, weight_map = len(self.shards), {}
        for i, names in enumerate(self.shards):
            final = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            self.tmp_path(i).rename(self.out / final)
            (self.out / final).chmod(0o644)  # safetensors creates 0600 files; keep them world-readable
            weight_map.update({name: final for name in names})
        return weight_map


def _remove_old_weights(out: Path) -> None:
    """Drop checkpoint files of an earlier write so shard sets never mix."""
    for p in [*out.glob("model-*.safetensors"), out / "model.safetensors", out / INDEX_FILE]:
        if p.is_file():
            p.unlink()


def write_synthetic_checkpoint(
    cfg: ModelConfig,
    out_dir: str | Path,
    *,
    seed: int = 0,
    quantize: bool = False,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    include_mtp: bool = True,
    device: str | torch.device = "cpu",
) -> ModelConfig:
    """Write a complete random-weight checkpoint of `cfg` into `out_dir`; returns the config written.
    `device`: where the draws and the quantization run (see the module docstring)."""
    cfg = synthetic_config(cfg, quantize, include_mtp)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _remove_old_weights(out)
    (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    write_tokenizer_files(out, cfg.vocab_size)
    writer = _ShardWriter(out, shard_bytes)
    for spec in expected_tensors(cfg, quantized=quantize, include_mtp=include_mtp).values():
        if spec.init == "scale":
            continue  # produced together with its weight
        writer.add(make_tensors(spec, cfg, seed, device))
    weight_map = writer.finish()
    index = {"metadata": {"total_size": writer.total_size}, "weight_map": weight_map}
    (out / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    return cfg


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m models.synthetic", description=__doc__.split("\n")[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), required=True)
    ap.add_argument("--layers", type=int, default=None, help="keep only the first N main layers")
    ap.add_argument("--quantize", action="store_true", help="FP8 block linears + MXFP4 experts (official format)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-mtp", action="store_true", help="omit the MTP block(s)")
    ap.add_argument("--shard-mb", type=int, default=DEFAULT_SHARD_BYTES // 2**20, help="target shard size (MiB)")
    ap.add_argument("--device", default="cpu", help="where the random draws and quantization run (cpu, cuda, cuda:N)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    cfg = PRESETS[args.preset]()
    if args.layers is not None:
        if not 1 <= args.layers <= cfg.num_hidden_layers:
            ap.error(f"--layers must be in [1, {cfg.num_hidden_layers}] for preset {args.preset}")
        cfg = cfg.with_layers(args.layers)
    try:
        device = torch.device(args.device)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        ap.error(f"--device must be cpu or cuda[:N], got {args.device!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA GPU is available")
    t0 = time.perf_counter()
    cfg = write_synthetic_checkpoint(cfg, args.out, seed=args.seed, quantize=args.quantize,
                                     shard_bytes=args.shard_mb * 2**20, include_mtp=not args.no_mtp, device=device)
    index = json.loads((Path(args.out) / INDEX_FILE).read_text())
    n_shards = len(set(index["weight_map"].values()))
    print(f"wrote {len(index['weight_map'])} tensors, {index['metadata']['total_size'] / 2**20:.1f} MiB "
          f"in {n_shards} shard(s) to {args.out} ({args.preset}, {cfg.num_hidden_layers} layers, "
          f"{'quantized' if args.quantize else 'bf16'}, drawn on {device}) in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
