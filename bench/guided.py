"""Host cost of structured outputs (engine/guided): grammar compile time, the first (uncached) and
cached token mask of a state, and SamplingMetadata.build for a batch of guided rows, on a synthetic
byte-level vocabulary of V4's size (129,280 tokens, geometric lengths, JSON-heavy bytes).

    python -m bench.guided
    python -m bench.guided --vocab 129280 --rows 64 --json-out guided.json

Everything runs on the CPU (the masks are built on the host, then copied to the logits' device).
The last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from engine.guided.automaton import compile_dfa
from engine.guided.grammar import Grammar, GuideCursor, TokenVocab
from engine.guided.json_schema import free_object, schema_to_ast
from engine.guided.regex import parse_regex
from engine.sampler import SamplingMetadata
from engine.sampling_params import SamplingParams

SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 64}, "age": {"type": "integer"},
    "email": {"type": "string", "pattern": "^[a-z0-9.]+@[a-z0-9]+\\.[a-z]{2,4}$"},
    "tags": {"type": "array", "items": {"type": "string", "maxLength": 16}, "maxItems": 8},
    "address": {"type": "object", "properties": {"street": {"type": "string"}, "zip": {"type": "string",
                                                                                       "pattern": "^[0-9]{5}$"}},
                "required": ["street", "zip"]}},
    "required": ["name", "age", "address"]}
CASES = {"schema": lambda: schema_to_ast(SCHEMA), "json_object": free_object,
         "regex": lambda: parse_regex(r"(\d{3}-){2}\d{4}|[A-Z][a-z]{2,10}( [A-Z][a-z]{2,10})*")}


def synthetic_vocab(size: int, seed: int) -> TokenVocab:
    rng = np.random.default_rng(seed)
    alphabet = np.frombuffer(b' abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",:{}[]0123456789\n.-_@',
                             dtype=np.uint8)
    lens = np.clip(rng.geometric(0.22, size), 1, 48)
    v = TokenVocab.__new__(TokenVocab)
    v.vocab_size = size
    v.token_bytes = [bytes(rng.choice(alphabet, n)) for n in lens]
    order = np.argsort(-lens, kind="stable")
    v.ids = np.arange(size)[order]
    data = np.zeros((size, int(lens.max())), dtype=np.uint8)
    for row, t in enumerate(v.ids.tolist()):
        data[row, :lens[t]] = np.frombuffer(v.token_bytes[t], dtype=np.uint8)
    v.columns = np.ascontiguousarray(data.T)
    v.lengths = lens[order]
    return v


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab", type=int, default=129_280)
    ap.add_argument("--rows", type=int, default=64, help="guided rows in the SamplingMetadata.build timing")
    ap.add_argument("--states", type=int, default=30, help="states walked for the mask timings")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args()
    vocab = synthetic_vocab(args.vocab, args.seed)
    rng = np.random.default_rng(args.seed)
    result: dict = {"vocab": args.vocab, "rows": args.rows}
    for name, make in CASES.items():
        t0 = time.perf_counter()
        g = Grammar(compile_dfa(make()), vocab, name)
        compile_ms = (time.perf_counter() - t0) * 1e3
        cold, warm, state = [], [], g.dfa.start
        for _ in range(args.states):  # a random valid walk: each new state computed once, then cached
            t = time.perf_counter()
            mask = g.allowed(state)
            cold.append(time.perf_counter() - t)
            t = time.perf_counter()
            g.allowed(state)
            warm.append(time.perf_counter() - t)
            ok = np.flatnonzero(mask)
            if not len(ok):
                break
            state = g.advance(state, int(rng.choice(ok)))
        state = state if state != g.dfa.dead else g.dfa.start
        g.allowed(state)  # the build below times the per-row work on cached masks
        cursors = []
        for _ in range(args.rows):
            c = GuideCursor(g)
            c.state = state
            cursors.append(c)
        params = [SamplingParams(temperature=1.0)] * args.rows
        times = []
        for _ in range(6):  # the first call warms torch's allocator: dropped
            t = time.perf_counter()
            SamplingMetadata.build(params, [[1]] * args.rows, [[1]] * args.rows, [None] * args.rows, 0, args.vocab,
                                   "cpu", guides=cursors)
            times.append(time.perf_counter() - t)
        build_ms = float(np.median(times[1:])) * 1e3
        result[name] = {"dfa_states": g.dfa.num_states, "mask_classes": int(g.mask_class.max()) + 1,
                        "compile_ms": round(compile_ms, 2),
                        "mask_cold_ms": round(float(np.mean(cold)) * 1e3, 2),
                        "mask_cached_ms": round(float(np.mean(warm)) * 1e3, 3),
                        "build_rows_ms": round(build_ms, 2)}
        print(f"{name:12s} dfa {g.dfa.num_states:5d} states ({result[name]['mask_classes']} masks)  "
              f"compile {compile_ms:7.1f} ms  "
              f"mask cold {result[name]['mask_cold_ms']:6.2f} ms  cached {result[name]['mask_cached_ms']:6.3f} ms  "
              f"SamplingMetadata.build x{args.rows} {build_ms:6.1f} ms")
    result["torch_threads"] = torch.get_num_threads()
    line = json.dumps(result)
    if args.json_out:
        with open(args.json_out, "w") as f:
            f.write(line + "\n")
    print(line)


if __name__ == "__main__":
    main()
