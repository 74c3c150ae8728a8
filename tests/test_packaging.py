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
               if p.parts[len(ROOT.parts)] in {"server", "engine", "kvcache", "kernels", "models", "bench"}}
    assert on_disk and on_disk <= shipped, sorted(on_disk - shipped)
    assert not any(p.startswith("tests") for p in shipped)
