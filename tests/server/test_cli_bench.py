"""CLI flags map onto EngineArgs; the load generator runs end to end against the fake server."""

from __future__ import annotations

import pytest
from fake_engine import FakeAsyncLLM
from server_fixture import start_server

from bench.serve import main as bench_main
from server.app import create_app
from server.cli import build_parser, engine_args


def test_cli_flags():
    ns = build_parser().parse_args(["serve", "/m", "--max-model-len", "4096", "--max-num-seqs", "8",
                                    "--max-queued-requests", "10", "--dtype", "bfloat16", "--device", "cpu",
                                    "--default-reasoning-effort", "max", "--api-key", "k"])
    args = engine_args(ns)
    assert (args.model, args.max_model_len, args.max_num_seqs, args.max_queued_requests) == ("/m", 4096, 8, 10)
    assert (args.max_num_batched_tokens, args.usage) == (None, "server")  # the engine's server default
    assert engine_args(build_parser().parse_args(["serve", "--max-num-batched-tokens", "512"])).max_num_batched_tokens \
        == 512
    assert build_parser().parse_args(["serve"]).model is None
    assert engine_args(build_parser().parse_args(["serve"])).scheduler_delay_factor == 0.0
    assert engine_args(build_parser().parse_args(["serve", "--scheduler-delay-factor", "0.5"])).scheduler_delay_factor \
        == 0.5
    with pytest.raises(ValueError, match="scheduler_delay_factor"):
        engine_args(build_parser().parse_args(["serve", "--scheduler-delay-factor", "-1"]))
    with pytest.raises(ValueError):
        engine_args(build_parser().parse_args(["serve", "--max-num-seqs", "0"]))
    for dt, fmt in (("auto", "bf16"), ("fp8", "fp8"), ("fp8_fp4idx", "fp8_fp4idx")):
        a = engine_args(build_parser().parse_args(["serve", "/m", "--kv-cache-dtype", dt]))
        assert a.kv_format == fmt
    with pytest.raises(SystemExit):  # argparse rejects unknown KV formats with a usage error
        build_parser().parse_args(["serve", "/m", "--kv-cache-dtype", "int4"])
    help_text = build_parser()._subparsers._group_actions[0].choices["serve"].format_help()
    for flag in ("--host", "--port", "--tensor-parallel-size", "--gpu-memory-utilization", "--log-level"):
        assert flag in help_text


def test_bench_against_fake(capsys):
    import json
    base_url, stop = start_server(create_app(FakeAsyncLLM(), served_model_name="fake-v4"))
    try:
        for endpoint in ("chat", "completions"):
            bench_main(["--base-url", base_url, "--endpoint", endpoint, "--num-prompts", "6", "--input-len", "5",
                        "10", "--output-len", "4", "8", "--request-rate", "200", "--max-concurrency", "3"])
            report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
            assert report["completed"] == 6 and report["failed"] == 0, report
            assert report["output_throughput"] > 0 and report["p99_ttft_ms"] > 0
    finally:
        stop()


def test_bench_warmup_prompts_are_untimed(capsys):
    import json
    base_url, stop = start_server(create_app(FakeAsyncLLM(), served_model_name="fake-v4"))
    try:
        bench_main(["--base-url", base_url, "--num-prompts", "4", "--input-len", "5", "10", "--output-len", "4",
                    "8", "--max-concurrency", "2", "--warmup-prompts", "3"])
        report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert report["warmup"] == {"prompts": 3, "completed": 3, "failed": 0}
        assert report["completed"] == 4 and report["num_prompts"] == 4
        with pytest.raises(SystemExit):
            bench_main(["--base-url", base_url, "--warmup-prompts", "-1"])
    finally:
        stop()
