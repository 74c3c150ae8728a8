"""Checkpoint inventory, synthetic writer and loader (validation errors, dequantizing stream)."""

import json
import shutil
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from models.checkpoint_spec import dtype_census, expected_tensors, total_bytes
from models.config import ConfigError, ModelConfig, flash_config, pro_config, tiny_config
from models.loader import CheckpointError, iter_checkpoint, load_state_dict, validate_checkpoint
from models.synthetic import main as synthetic_main
from models.synthetic import write_synthetic_checkpoint

INDEX = "model.safetensors.index.json"


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """Tiny BF16 (3 shards) and quantized checkpoints of one seed, written once per module."""
    root = tmp_path_factory.mktemp("ckpt")
    bf16 = write_synthetic_checkpoint(tiny_config(), root / "bf16", seed=7, shard_bytes=600_000)
    quant = write_synthetic_checkpoint(tiny_config(), root / "quant", seed=7, quantize=True)
    return {"bf16": (root / "bf16", bf16), "quant": (root / "quant", quant)}


@pytest.fixture
def broken(ckpts, tmp_path):
    """A fresh writable copy of the BF16 checkpoint to damage."""
    dst = tmp_path / "copy"
    shutil.copytree(ckpts["bf16"][0], dst)
    return dst


# ---- inventory ---------------------------------------------------------------------------------
def test_flash_inventory_matches_official_census():
    specs = expected_tensors(flash_config(), quantized=True)
    assert len(specs) == 69_187
    assert dtype_census(specs) == {"BF16": 433, "F32": 417, "F8_E4M3": 375, "F8_E8M0": 34_167,
                                   "I64": 3, "I8": 33_792}
    assert round(total_bytes(specs) / 1e9, 1) == 159.6
    s = specs["layers.2.attn.indexer.compressor.ape"]
    assert s.shape == (4, 256) and s.dtype == torch.float32
    assert specs["layers.3.attn.compressor.ape"].shape == (128, 512)
    assert specs["layers.2.attn.compressor.wkv.weight"].shape == (1024, 4096)
    assert specs["layers.0.ffn.experts.0.w2.weight"].shape == (4096, 1024)
    assert specs["layers.0.ffn.experts.0.w2.scale"].shape == (4096, 64)
    assert specs["layers.0.attn.wo_a.scale"].shape == (64, 32)
    assert specs["layers.0.ffn.gate.tid2eid"].shape == (129280, 6)
    assert "layers.3.ffn.gate.bias" in specs and "layers.3.ffn.gate.tid2eid" not in specs
    assert "mtp.0.attn.compressor.wkv.weight" not in specs and "mtp.0.e_proj.scale" in specs


def test_pro_inventory_count():
    specs = expected_tensors(pro_config(), quantized=True)
    assert len(specs) == 145_116
    assert round(total_bytes(specs) / 1e9, 1) == 864.7
    assert specs["layers.0.attn.wq_a.scale"].shape == (12, 56)
    assert specs["layers.0.ffn.experts.0.w1.weight"].shape == (3072, 3584)


def test_unquantized_inventory_has_no_scales():
    specs = expected_tensors(tiny_config(), quantized=False)
    assert not any(n.endswith(".scale") for n in specs)
    assert specs["layers.0.ffn.experts.0.w1.weight"].dtype == torch.bfloat16
    assert set(dtype_census(specs)) == {"BF16", "F32", "I64"}
    assert len(expected_tensors(tiny_config(), False, include_mtp=False)) < len(specs)


# ---- writer + loader round trip -------------------------------------------------------------------
def test_synthetic_bf16_round_trip(ckpts):
    path, cfg = ckpts["bf16"]
    assert ModelConfig.from_json(path) == cfg and cfg.quantization is None and cfg.expert_dtype is None
    index = json.loads((path / INDEX).read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert shards == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    on_disk = {}
    for s in shards:
        on_disk.update(load_file(path / s))
    specs = expected_tensors(cfg, quantized=False)
    assert set(on_disk) == set(specs) == set(index["weight_map"])
    assert index["metadata"]["total_size"] == total_bytes(specs)
    for name, spec in specs.items():
        assert on_disk[name].shape == spec.shape and on_disk[name].dtype == spec.dtype, name
    sd = load_state_dict(path, cfg, include_mtp=True)
    assert set(sd) == set(specs)
    assert set(load_state_dict(path, cfg)) == {n for n in specs if not n.startswith("mtp.")}  # MTP: when asked
    assert sd["embed.weight"].dtype == torch.float32
    assert torch.equal(sd["embed.weight"], on_disk["embed.weight"].float())
    tid = sd["layers.0.ffn.gate.tid2eid"]
    assert tid.dtype == torch.int64 and tid.min() >= 0 and tid.max() < cfg.n_routed_experts
    assert all(len(set(row)) == cfg.num_experts_per_tok for row in tid.tolist())
    assert all(torch.isfinite(t.float()).all() for t in sd.values())


def test_writer_is_deterministic(ckpts, tmp_path):
    path, cfg = ckpts["bf16"]
    again = write_synthetic_checkpoint(tiny_config(), tmp_path / "again", seed=7)
    a, b = load_state_dict(path), load_state_dict(tmp_path / "again", again)
    assert all(torch.equal(a[n], b[n]) for n in a)
    other = write_synthetic_checkpoint(tiny_config(), tmp_path / "other", seed=8)
    assert not torch.equal(load_state_dict(tmp_path / "other", other)["embed.weight"], a["embed.weight"])


def test_quantized_checkpoint_dequantizes_close_to_float_weights(ckpts):
    qpath, qcfg = ckpts["quant"]
    assert qcfg.quantization is not None and qcfg.expert_dtype == "fp4"
    assert ModelConfig.from_json(qpath) == qcfg
    q = load_state_dict(qpath, dtype=torch.float32)
    ref = load_state_dict(ckpts["bf16"][0], dtype=torch.float32)  # same seed -> same float weights
    assert set(q) == set(ref) and not any(n.endswith(".scale") for n in q)
    for name, t in q.items():
        assert t.shape == ref[name].shape, name
        err = ((t.float() - ref[name].float()).norm() / ref[name].float().norm().clamp(min=1e-12)).item()
        tol = 0.15 if ".experts." in name and "shared" not in name else 0.05 if name.endswith(".weight") else 0
        assert err <= tol, (name, err)
    assert q["layers.0.hc_attn_fn"].dtype == torch.float32
    bf = load_state_dict(qpath, dtype=torch.bfloat16)
    assert bf["layers.1.attn.wq_b.weight"].dtype == torch.bfloat16
    assert bf["layers.1.attn.attn_sink"].dtype == torch.float32  # F32 on disk stays F32
    assert bf["layers.1.attn.compressor.ape"].dtype == torch.float32
    assert bf["layers.0.ffn.gate.tid2eid"].dtype == torch.int64


def test_iter_checkpoint_streams_without_scales(ckpts):
    qpath, _ = ckpts["quant"]
    names = [n for n, _ in iter_checkpoint(qpath, include_mtp=True)]
    assert len(names) == len(set(names)) and not any(n.endswith(".scale") for n in names)
    no_mtp = [n for n, _ in iter_checkpoint(qpath)]  # default: MTP on disk is skipped
    assert no_mtp == [n for n in names if not n.startswith("mtp.")] and len(no_mtp) < len(names)


def test_mtp_asked_for_but_missing_names_the_tensors(broken):
    """A checkpoint without its MTP tensors loads by default; asked for, the error names them."""
    from models.loader import MISSING_MTP

    def edit(t):
        for n in [n for n in t if n.startswith("mtp.0.e_proj") or n.startswith("mtp.0.hc_head")]:
            del t[n]
    for name in ("mtp.0.e_proj.weight", "mtp.0.hc_head_fn"):
        _rewrite_shard_of(broken, name, edit)
    validate_checkpoint(broken)  # the engine's default: MTP neither required nor loaded
    with pytest.raises(CheckpointError) as ei:
        validate_checkpoint(broken, include_mtp=True)
    want = ["mtp.0.e_proj.weight", "mtp.0.hc_head_fn", "mtp.0.hc_head_base", "mtp.0.hc_head_scale"]
    assert sorted(ei.value.problems[MISSING_MTP]) == sorted(want)
    assert "missing tensors" not in ei.value.problems
    assert "include_mtp=True" in str(ei.value) and "mtp.0.e_proj.weight" in str(ei.value)


def test_mtp_asked_for_without_mtp_block(tmp_path):
    from models.loader import MISSING_MTP
    from models.loading import load_model

    write_synthetic_checkpoint(tiny_config(), tmp_path, seed=1, include_mtp=False)
    assert len(load_model(tmp_path).mtp) == 0
    with pytest.raises(CheckpointError, match="num_nextn_predict_layers=0") as ei:
        load_model(tmp_path, include_mtp=True)
    assert list(ei.value.problems) == [MISSING_MTP]


def test_row_chunked_generation_matches_layout(monkeypatch, tmp_path):
    import models.synthetic as synthetic

    monkeypatch.setattr(synthetic, "ROW_CHUNK", 128)  # embed/head (512 rows) are built in 4 chunks
    cfg = write_synthetic_checkpoint(tiny_config(), tmp_path / "chunked", seed=1, quantize=True)
    validate_checkpoint(tmp_path / "chunked")
    sd = load_state_dict(tmp_path / "chunked", cfg)
    assert 0.9 < sd["embed.weight"].std().item() < 1.1
    assert 0.9 < sd["head.weight"].std().item() * cfg.hidden_size ** 0.5 < 1.1


def _tensor_digest(path: Path) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order."""
    import hashlib

    tensors = {}
    for f in sorted(path.glob("model-*.safetensors")):
        tensors.update(load_file(f))
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# Digests of the CPU writer's tiny checkpoints (seed 11) as written before the writer learned
# `--device`: the CPU output must not change (demo models and cached checkpoints stay valid).
CPU_WRITER_DIGESTS = {
    False: "a702f1e65346264436f655c511b47827d296c1a186b502c50a48770692434b39",
    True: "f787ce5c8225592dbe3766f442cc6411aa23689370c3cb5494f40779e194f3eb",
}


@pytest.mark.parametrize("quantize", [False, True])
def test_cpu_writer_output_unchanged(tmp_path, quantize):
    write_synthetic_checkpoint(tiny_config(), tmp_path / "w", seed=11, quantize=quantize)
    assert _tensor_digest(tmp_path / "w") == CPU_WRITER_DIGESTS[quantize]
    if quantize:  # the CLI with an explicit --device cpu writes the same tensors
        synthetic_main(["--preset", "tiny", "--quantize", "--seed", "11", "--device", "cpu",
                        "--out", str(tmp_path / "c")])
        assert _tensor_digest(tmp_path / "c") == CPU_WRITER_DIGESTS[True]


def test_cli_rejects_unknown_device(tmp_path):
    for bad in ("mps", "gpu"):
        with pytest.raises(SystemExit):
            synthetic_main(["--preset", "tiny", "--device", bad, "--out", str(tmp_path / "x")])


def test_cli_tiny_preset(tmp_path):
    synthetic_main(["--preset", "tiny", "--out", str(tmp_path / "cli"), "--quantize", "--seed", "3"])
    cfg = ModelConfig.from_json(tmp_path / "cli")
    assert cfg.num_hidden_layers == tiny_config().num_hidden_layers and cfg.expert_dtype == "fp4"
    validate_checkpoint(tmp_path / "cli")
    assert (tmp_path / "cli" / "tokenizer.json").is_file()
    assert (tmp_path / "cli" / "tokenizer_config.json").is_file()


def test_single_file_checkpoint_without_index(ckpts, tmp_path):
    path, cfg = ckpts["bf16"]
    merged = {}
    for f in sorted(path.glob("model-*.safetensors")):
        merged.update(load_file(f))
    (tmp_path / "single").mkdir()
    save_file(merged, str(tmp_path / "single" / "model.safetensors"))
    shutil.copy(path / "config.json", tmp_path / "single")
    assert len(validate_checkpoint(tmp_path / "single").tensors) == len(merged)
    # Shards without an index are found by globbing.
    (path_copy := tmp_path / "noindex").mkdir()
    for f in path.glob("model-*.safetensors"):
        shutil.copy(f, path_copy)
    assert len(validate_checkpoint(path_copy, cfg).tensors) == len(merged)


# ---- loader errors -------------------------------------------------------------------------------
def _rewrite_shard_of(ckpt: Path, name: str, edit) -> None:
    """Load the shard holding `name`, apply `edit(dict)`, save it back under the same file name."""
    shard = ckpt / json.loads((ckpt / INDEX).read_text())["weight_map"][name]
    tensors = load_file(shard)
    edit(tensors)
    save_file(tensors, str(shard))


def _problems(ckpt: Path) -> tuple[dict, str]:
    with pytest.raises(CheckpointError) as ei:
        validate_checkpoint(ckpt)
    return ei.value.problems, str(ei.value)


def test_error_missing_and_unexpected_tensor(broken):
    def edit(t):
        del t["layers.1.attn.wkv.weight"]
        t["layers.1.attn.bogus"] = torch.zeros(2)
    _rewrite_shard_of(broken, "layers.1.attn.wkv.weight", edit)
    problems, msg = _problems(broken)
    assert problems["missing tensors"] == ["layers.1.attn.wkv.weight"]
    assert problems["unexpected tensors"] == ["layers.1.attn.bogus"]
    assert "missing tensors (1): layers.1.attn.wkv.weight" in msg and "layers.1.attn.bogus" in msg


def test_error_wrong_shape_and_dtype(broken):
    def edit(t):
        t["layers.2.attn.wq_a.weight"] = torch.zeros(7, 64, dtype=torch.bfloat16)
        t["layers.2.attn.attn_sink"] = t["layers.2.attn.attn_sink"].to(torch.bfloat16)
    _rewrite_shard_of(broken, "layers.2.attn.wq_a.weight", edit)
    _rewrite_shard_of(broken, "layers.2.attn.attn_sink", lambda t: t.update(
        {"layers.2.attn.attn_sink": t["layers.2.attn.attn_sink"].to(torch.bfloat16)}))
    problems, msg = _problems(broken)
    assert problems["wrong shape"] == ["layers.2.attn.wq_a.weight: expected [32, 64], found [7, 64]"]
    assert problems["wrong dtype"] == ["layers.2.attn.attn_sink: expected F32, found BF16"]
    with pytest.raises(CheckpointError):
        next(iter_checkpoint(broken))  # nothing is yielded before validation passes


def test_error_truncated_shard(broken):
    shard = broken / "model-00002-of-00003.safetensors"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) - 100])
    problems, msg = _problems(broken)
    assert "truncated" in problems["unreadable shards"][0] and "model-00002-of-00003" in msg
    assert problems["missing tensors"]  # its tensors are reported missing too
    shard.write_bytes(struct.pack("<Q", 10**6) + b"{")  # header longer than the file
    assert "header length" in _problems(broken)[0]["unreadable shards"][0]


def test_error_missing_shard_named_by_index(broken):
    (broken / "model-00003-of-00003.safetensors").unlink()
    problems, msg = _problems(broken)
    assert problems["missing shard files"][0].startswith("model-00003-of-00003.safetensors")
    assert "missing shard files (1)" in msg


def test_error_wrong_model_type(broken):
    raw = json.loads((broken / "config.json").read_text())
    raw["model_type"] = "deepseek_v3"
    (broken / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ConfigError, match="model_type"):
        validate_checkpoint(broken)


def test_error_config_mismatch_reports_all_kinds(ckpts):
    # Validating the BF16 checkpoint against a quantized config: every FP8-able tensor is wrong.
    path, cfg = ckpts["bf16"]
    qcfg = ckpts["quant"][1]
    with pytest.raises(CheckpointError) as ei:
        validate_checkpoint(path, qcfg)
    p = ei.value.problems
    assert len(p["missing tensors"]) > 20 and "... and" in str(ei.value)  # only the first 20 listed
    assert p["wrong dtype"] and p["wrong shape"]  # fp8 dtype; packed fp4 expert shapes
