"""Operator-facing CLI output (issue 14): `--version`, every default in `serve --help`, the reasoning
default line and the ready line (the end-to-end start-up log is tests/test_cpu_serve.py)."""

from __future__ import annotations

import argparse
from types import SimpleNamespace

import pytest

from server.cli import build_parser, main, package_version
from server.startup_log import base_url, ready_line, reasoning_default_line


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    out = capsys.readouterr().out.strip()
    assert out == f"v4serve {package_version()}" and package_version()


def _serve_parser() -> argparse.ArgumentParser:
    return build_parser()._subparsers._group_actions[0].choices["serve"]


def test_serve_help_shows_every_default():
    parser = _serve_parser()
    fmt = parser._get_formatter()
    for action in parser._actions:
        if action.default is argparse.SUPPRESS:  # --help
            continue
        text = fmt._get_help_string(action) % {"default": action.default, "prog": "v4serve serve"}
        assert "default" in text.lower(), (action.dest, text)  # the value, or its meaning in words
    help_text = " ".join(parser.format_help().split())
    assert "(default: 8000)" in help_text and "(default: 127.0.0.1)" in help_text
    assert "thinking on" in help_text  # --default-reasoning-effort says what no flag means


@pytest.mark.parametrize("effort, on", [(None, True), ("high", True), ("max", True), ("none", False),
                                        ("minimal", False)])
def test_reasoning_default_line(effort, on):
    line = reasoning_default_line(effort)
    if on:
        assert line.startswith("thinking is ON by default")
        assert '"reasoning_effort": "none"' in line and "--default-reasoning-effort none" in line
        assert ("Think Max" in line) == (effort == "max")
    else:
        assert line.startswith(f"thinking is OFF by default (--default-reasoning-effort {effort})")
        assert '"reasoning_effort": "high"' in line


def test_ready_line():
    kv = SimpleNamespace(num_blocks=100, block_size=64)
    engine = SimpleNamespace(max_model_len=1000, engine=SimpleNamespace(kv=kv, args=SimpleNamespace(max_num_seqs=8)))
    line = ready_line(engine, "v4-flash", "0.0.0.0", 8000)
    # 1000 tokens take 16 blocks of 64: 100 blocks hold 6.25 full-length sequences
    assert line == ("ready: http://0.0.0.0:8000/v1 serving model 'v4-flash', max_model_len 1,000, KV cache 6,400 "
                    "tokens = 6.25 full-length sequences (at most 8 sequences run at once: --max-num-seqs)")
    assert base_url("::1", 9000) == "http://[::1]:9000"


def test_readme_first_example_says_thinking_is_on():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    talk = readme[readme.index("## Talk to it"):]
    talk = talk[:talk.index("\n## ", 1)]
    first_example = talk.index("```")
    note = talk[:first_example]  # said before the first example
    assert "Thinking is on by default" in note
    assert '"reasoning_effort": "none"' in note and "--default-reasoning-effort none" in note
    assert '"reasoning_effort":"none"' in talk[first_example:]  # and shown in a request
