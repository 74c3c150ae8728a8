"""bench/throughput.py --serve-workload runs bench/serve.py's workload offline: the same seeded prompts
(bench/workload.py), tokenized exactly as the server's chat route does, the same output lengths."""

from __future__ import annotations

import json
from types import SimpleNamespace

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
