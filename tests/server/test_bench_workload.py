"""bench/throughput.py --serve-workload runs bench/serve.py's workload offline: the same seeded prompts
(bench/workload.py), tokenized exactly as the server's chat route does, the same output lengths."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from bench import throughput
from bench.workload import conversations


def test_offline_serve_workload_is_what_the_server_gets(http, real, demo_dir, capsys):
    argv = ["--model", str(demo_dir), "--device", "cpu", "--serve-workload", "chat", "--num-prompts", "3",
            "--input-len", "6:12", "--output-len", "3:5", "--max-num-seqs", "2", "--seed", "4", "--no-warmup"]
    args = SimpleNamespace(serve_workload="chat", reasoning_effort="none", seed=4, num_prompts=3, input_len=(6, 12),
                           output_len=(3, 5))
    work = conversations(4, 3, (6, 12), (3, 5))
    offline = throughput.serve_workload(SimpleNamespace(tokenizer=real.engine.tokenizer), args)
    served = [http.post("/tokenize", json={"messages": [{"role": "user", "content": turns[0]}],
                                           "reasoning_effort": "none"}).json()["tokens"] for turns, _ in work]
    assert [ids for ids, _ in offline] == served  # bench.serve's chat requests, as the server tokenizes them
    assert [n for _, n in offline] == [n for _, n in work]
    res = throughput.main(argv)
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last == json.loads(json.dumps(res)) and last["output_kind"] == "delta"
    assert last["output_tokens"] == sum(n for _, n in work) and last["input_tokens"] == sum(map(len, served))
    assert last["output_tokens_per_s"] > 0 and last["max_num_seqs"] == 2
    # the budget reported is the one the engine ran with: unset -> the engine's default for the usage (CPU: 2,048)
    assert last["usage"] == "offline" and last["max_num_batched_tokens"] == 2048
    eng = last["engine"]  # the timed run's steps by kind (CPU: eager), the fields bench.serve reads from /metrics
    assert eng["steps"]["prefill"] >= 1 and eng["steps"]["eager_decode"] >= 1 and eng["kernel_compiles"] == 0


def test_offline_warmup_prompts_run_the_workload_untimed(demo_dir, capsys, monkeypatch):
    """--warmup-prompts N: N prompts of the same workload under another seed run to completion before the
    timed run (which counts only its own tokens)."""
    seeds = []
    real_workload = throughput.serve_workload

    def spy(engine, args):
        seeds.append((args.seed, args.num_prompts))
        return real_workload(engine, args)
    monkeypatch.setattr(throughput, "serve_workload", spy)
    res = throughput.main(["--model", str(demo_dir), "--device", "cpu", "--serve-workload", "chat", "--num-prompts",
                           "2", "--input-len", "6:8", "--output-len", "2:3", "--max-num-seqs", "2", "--seed", "4",
                           "--warmup-prompts", "2"])
    assert seeds == [(4, 2), (1004, 2)]
    assert res["warmup_prompts"] == 2 and res["num_prompts"] == 2
    res = throughput.main(["--model", str(demo_dir), "--device", "cpu", "--num-prompts", "1", "--input-len", "6:6",
                           "--output-len", "2:2", "--usage", "server", "--max-num-batched-tokens", "96", "--no-warmup"])
    assert res["usage"] == "server" and res["max_num_batched_tokens"] == 96  # an explicit budget wins
    with pytest.raises(SystemExit):
        throughput.main(["--warmup-prompts", "-1"])


def test_overhead_only_never_runs_the_model(demo_dir, monkeypatch):
    """--overhead-only measures the host path: the model's forward must not run (it did, through the
    executor, while only the runner's model was swapped)."""
    from models.model import DeepseekV4
    calls = []
    real_forward = DeepseekV4.forward

    def spy(self, *a, **kw):
        calls.append(1)
        return real_forward(self, *a, **kw)
    monkeypatch.setattr(DeepseekV4, "forward", spy)
    res = throughput.main(["--model", str(demo_dir), "--device", "cpu", "--overhead-only", "--overhead-seqs", "2",
                           "--overhead-steps", "3", "--overhead-warmup", "1", "--input-len", "4:4"])
    assert calls == [] and res["mode"] != "throughput"
