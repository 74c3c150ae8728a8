"""Lean loading: the model is allocated once in its final storage and the checkpoint streams into it.

CPU: peak allocated host bytes while loading (every allocation and free the torch profiler records)
stay within the resident weights + one shard's file mapping + a few single-tensor transients; the
old loader (every parameter materialised in float32 first) overshoots by the float model.
GPU (`gpu` marker): peak device memory <= resident + 2 GiB on a V4-Flash-shaped quantized checkpoint
written on the GPU, and the GPU-written checkpoint has the CPU writer's names, dtypes and shapes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from models.checkpoint_spec import expected_tensors
from models.config import flash_config, tiny_config
from models.loader import read_safetensors_header, validate_checkpoint
from models.loading import load_model, weight_bytes
from models.parallel import ParallelContext
from models.sharded_loader import load_model_sharded
from models.synthetic import write_synthetic_checkpoint

CFG = tiny_config(n_routed_experts=32)  # experts dominate, as in V4 (the float copy is ~4x the resident one)
SHARD_BYTES = 96 * 1024  # many small shards: safetensors maps one whole shard file while reading it


def peak_host_bytes(fn):
    """(peak of allocated-minus-freed CPU bytes over fn(), fn's result), from the profiler's memory events."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
    cur = peak = 0
    for e in sorted(prof.profiler.kineto_results.events(), key=lambda e: e.start_ns()):
        if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU:
            cur += e.nbytes()
            peak = max(peak, cur)
    return peak, out


def _headers(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """{name: (safetensors dtype, shape)} of every shard's header."""
    out = {}
    for shard in sorted(path.glob("model-*.safetensors")):
        out.update({n: (e.dtype, e.shape) for n, e in read_safetensors_header(shard).items()})
    return out


@pytest.fixture(scope="module")
def qckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("lean")
    write_synthetic_checkpoint(CFG, path, seed=4, quantize=True, shard_bytes=SHARD_BYTES)
    return path


def _slack(path: Path) -> int:
    """Largest shard file (mapped while read) + 4 float32 copies of the largest single checkpoint tensor
    (dequantized value, its scale expansion, the cast, the host copy) + 64 KiB of small tensors."""
    shard = max(p.stat().st_size for p in path.glob("model-*.safetensors"))
    biggest = max(math.prod(s.logical_shape or s.shape) * 4 for s in expected_tensors(CFG, True).values())
    return shard + 4 * biggest + 64 * 1024


def _float_model_bytes() -> int:
    specs = expected_tensors(CFG, True, include_mtp=False).values()
    return sum(math.prod(s.logical_shape or s.shape) * 4 for s in specs if s.init != "scale")


@pytest.mark.parametrize("dtype,resident", [(torch.float32, True), (torch.bfloat16, False), (torch.bfloat16, True)])
def test_load_peak_host_memory(qckpt, dtype, resident):
    """Resident FP8/MXFP4 storage is decided on the meta model: no float copy of a quantized weight is
    ever allocated; dequantized (CPU) weights are allocated once in `dtype`, not first in float32."""
    assert _float_model_bytes() > 3 * _slack(qckpt)  # the old float32-first loader could not pass
    peak, model = peak_host_bytes(lambda: load_model(qckpt, "cpu", dtype, resident_quant=resident))
    resident_bytes = weight_bytes(model)
    assert peak <= resident_bytes + _slack(qckpt), (peak, resident_bytes, _slack(qckpt))
    w1 = model.layers[1].ffn.experts_w1
    assert w1.dtype == (torch.int8 if resident else dtype)
    assert model.layers[1].attn.wq_a.weight.dtype == (torch.float8_e4m3fn if resident else dtype)
    assert model.layers[1].hc_attn_fn.dtype == torch.float32
    stats = model.load_stats
    assert stats.resident_bytes == resident_bytes and stats.peak_device_bytes is None
    assert stats.quantized_resident == resident and stats.gb_per_s > 0


def test_sharded_load_peak_host_memory(qckpt):
    """Tensor parallel ranks load lean too (rank 0 of 2: half the experts, resident MXFP4)."""
    peak, model = peak_host_bytes(lambda: load_model_sharded(qckpt, ParallelContext(0, 2), resident_quant=True))
    assert model.layers[1].ffn.experts_w1.shape[0] == CFG.n_routed_experts // 2
    assert model.layers[1].ffn.expert_fmt == "fp4"
    assert peak <= weight_bytes(model) + _slack(qckpt), (peak, weight_bytes(model))


def test_quantized_storage_refuses_float_tensors(qckpt):
    """A stream that does not match the storage decided on meta is an error, not a silent cast."""
    model = load_model(qckpt, "cpu", torch.float32, resident_quant=True)
    w = model.layers[0].attn.wq_a.weight
    with pytest.raises(TypeError, match="wq_a.weight"):
        model.load_weights([("layers.0.attn.wq_a.weight", torch.zeros(w.shape))])


def test_engine_loads_no_mtp_by_default(tiny_ckpt):
    """The engine path (LLM -> LLMEngine -> load_model) leaves the MTP block on disk."""
    from engine.llm import LLM

    assert any(n.startswith("mtp.") for n in _headers(tiny_ckpt))
    llm = LLM(str(tiny_ckpt), device="cpu", max_num_seqs=2, kv_cache_memory=8 * 2**20)
    model = llm.engine.model
    assert len(model.mtp) == 0 and not any(n.startswith("mtp.") for n in model.state_dict())
    assert model.load_stats.resident_bytes == weight_bytes(model)


# ---- GPU ---------------------------------------------------------------------------------------
@pytest.mark.gpu
def test_synthetic_on_gpu_matches_cpu_format(tmp_path):
    """`python -m models.synthetic --device cuda` writes the CPU writer's tensor names, dtypes and
    shapes (and index); the loader accepts it and the model runs."""
    from models.synthetic import main

    cfg_args = ["--preset", "tiny", "--quantize", "--seed", "3", "--shard-mb", "1"]
    main([*cfg_args, "--device", "cpu", "--out", str(tmp_path / "cpu")])
    main([*cfg_args, "--device", "cuda", "--out", str(tmp_path / "gpu")])
    cpu, gpu = _headers(tmp_path / "cpu"), _headers(tmp_path / "gpu")
    assert cpu == gpu and len(cpu) > 100
    for f in ("config.json", "model.safetensors.index.json"):
        assert json.loads((tmp_path / "cpu" / f).read_text()) == json.loads((tmp_path / "gpu" / f).read_text())
    validate_checkpoint(tmp_path / "gpu", include_mtp=True)
    model = load_model(tmp_path / "gpu", "cuda", torch.bfloat16)
    logits = model.logits(torch.arange(24, device="cuda") * 7 % 512)
    assert torch.isfinite(logits).all()


@pytest.mark.gpu
def test_gpu_load_peak_within_resident_plus_2gib(tmp_path):
    """A V4-Flash-shaped quantized checkpoint (2 layers: FP8 linears, 256 MXFP4 experts per layer,
    ~9 GB resident; its float32 copy would be ~55 GB) loads with peak device memory <= resident + 2 GiB."""
    cfg = flash_config().with_layers(2)
    write_synthetic_checkpoint(cfg, tmp_path, seed=0, quantize=True, include_mtp=False, device="cuda")
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    model = load_model(tmp_path, "cuda", torch.bfloat16)
    peak = torch.cuda.max_memory_allocated() - base
    resident = weight_bytes(model)
    print(f"resident {resident / 2**30:.2f} GiB, peak while loading {peak / 2**30:.2f} GiB, "
          f"{model.load_stats.seconds:.1f} s ({model.load_stats.gb_per_s:.2f} GB/s)")
    assert model.layers[1].ffn.expert_fmt == "fp4"
    assert model.layers[0].attn.wq_a.weight.dtype == torch.float8_e4m3fn
    assert peak <= resident + 2 * 2**30
    assert abs(model.load_stats.peak_device_bytes - peak) < 2**20
    ids = torch.arange(64, device="cuda") * 131 % cfg.vocab_size
    assert torch.isfinite(model.logits(ids)).all()


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_load_equals_cpu_load(qckpt, dtype):
    """Host tensors copied straight into CUDA parameters: bit-identical to the CPU load of the same storage."""
    gpu = load_model(qckpt, "cuda", dtype)  # resident FP8/MXFP4 by default on CUDA
    cpu = load_model(qckpt, "cpu", dtype, resident_quant=True)
    a, b = gpu.state_dict(), cpu.state_dict()
    assert set(a) == set(b)
    for name, t in b.items():
        assert a[name].dtype == t.dtype and a[name].is_cuda, name
        assert torch.equal(a[name].cpu().view(torch.uint8), t.view(torch.uint8)), name
