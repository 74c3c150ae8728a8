"""Structured outputs in the engine: token masks against a brute-force walk of every token, and
random sampling on the demo model that always yields schema-valid JSON / regex matches."""

from __future__ import annotations

import json
import re

import jsonschema
import numpy as np
import pytest

from engine import LLM, SamplingParams
from engine.guided.grammar import GuideCompiler, GuideCursor

SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 6},
    "age": {"type": "integer", "minimum": 0, "maximum": 130},
    "score": {"type": "number", "minimum": -1, "maximum": 1},
    "mood": {"enum": ["happy", "sad"]},
    "tags": {"type": "array", "items": {"type": "string", "maxLength": 3}, "maxItems": 2},
    "ok": {"type": "boolean"}}, "required": ["name", "age"], "additionalProperties": False}
REGEX = r"(cat|dog)s? [0-9]{2,3}"


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    import os

    from models.demo import ensure_demo_model
    os.environ.setdefault("V4SERVE_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "v4serve-cache"))
    return LLM(str(ensure_demo_model()), device="cpu")


@pytest.fixture(scope="module")
def compiler(llm):
    return GuideCompiler(llm.engine.tokenizer, llm.engine.model_config.vocab_size)


def test_token_bytes_match_the_tokenizer(llm, compiler):
    tok, vocab = llm.engine.tokenizer, compiler.vocab()
    checked = 0
    dsml = tok.token_to_id("｜DSML｜")
    assert vocab.token_bytes[dsml] == (256,)  # the symbol a tool-call grammar asks for
    for tid, data in enumerate(vocab.token_bytes):
        if tid in tok.all_special_ids and tid != dsml:
            assert data is None
        if data is None or tid == dsml:
            continue
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            continue  # part of a character: only meaningful next to its neighbours
        assert tok.decode([tid], skip_special_tokens=False) == text
        checked += 1
    assert checked > 500


@pytest.mark.parametrize("kind,spec", [("json", SCHEMA), ("regex", REGEX), ("json_object", None)])
def test_masks_equal_a_brute_force_walk(compiler, kind, spec):
    g = compiler.compile(kind, spec)
    dfa, vocab = g.dfa, g.vocab
    rng = np.random.default_rng(0)
    state, seen = dfa.start, 0
    for _ in range(12):  # states along a random valid walk
        mask = g.allowed(state)
        for tid in range(vocab.vocab_size):
            data = vocab.token_bytes[tid] if tid < len(vocab.token_bytes) else None
            expect = bool(data) and dfa.step(state, data) != dfa.dead
            assert mask[tid] == expect, (kind, state, tid, data)
        seen += 1
        choices = np.flatnonzero(mask)
        if not len(choices):
            break
        state = g.advance(state, int(rng.choice(choices)))
    assert seen >= 3
    assert compiler.compile(kind, spec) is g  # cached


def test_states_sharing_a_mask_class_have_equal_masks(compiler):
    """A long bounded string is one DFA state per character position (and UTF-8 / escape step), but
    positions far from the bound all allow the same tokens: they share one cached mask."""
    g = compiler.compile("json", {"type": "object", "properties": {"s": {"type": "string", "maxLength": 300}},
                                  "required": ["s"]})
    classes = g.mask_class
    assert g.dfa.num_states > 3000 and classes.max() + 1 < g.dfa.num_states / 5
    rng = np.random.default_rng(1)
    by_class: dict[int, list[int]] = {}
    for s, c in enumerate(classes.tolist()):
        by_class.setdefault(c, []).append(s)
    groups = [v for v in by_class.values() if len(v) > 1]
    for group in [groups[i] for i in rng.choice(len(groups), size=min(25, len(groups)), replace=False)]:
        a, b = rng.choice(group, size=2, replace=False)
        assert (g._compute(int(a)) == g._compute(int(b))).all()
    # the cache really is per class: a state of an already computed class costs no walk
    s0, s1 = groups[0][:2]
    g.packed(s0)
    g._compute = None  # any further walk would fail
    try:
        assert (np.unpackbits(g.packed(s1)[0], count=g.vocab.vocab_size) == np.unpackbits(
            g.packed(s0)[0], count=g.vocab.vocab_size)).all()
    finally:
        del g._compute


def _sample(llm, n=6, max_tokens=300, **kw):
    params = SamplingParams(n=n, temperature=1.0, seed=11, max_tokens=max_tokens, **kw)
    return llm.generate(["Describe a person:"], params)[0].outputs


def test_sampled_json_is_valid_for_the_schema(llm):
    outs = _sample(llm, guided_json=SCHEMA)
    for c in outs:
        assert c.finish_reason == "stop", c.text  # every path of this schema is finite
        jsonschema.validate(json.loads(c.text), SCHEMA)
    assert len({c.text for c in outs}) > 1  # really sampled


def test_sampled_text_matches_the_regex(llm):
    outs = _sample(llm, guided_regex=REGEX)
    assert all(c.finish_reason == "stop" and re.fullmatch(REGEX, c.text) for c in outs), [c.text for c in outs]


def test_json_object_is_a_viable_prefix_or_an_object(llm, compiler):
    g = compiler.compile("json_object", None)
    for c in _sample(llm, n=4, guided_json_object=True, max_tokens=40):
        if c.finish_reason == "stop":
            assert isinstance(json.loads(c.text), dict)
        else:
            cur = GuideCursor(g)
            for t in c.token_ids:
                cur.advance(t)
            assert cur.state != g.dfa.dead and c.text.startswith("{")


def test_grammar_starts_after_the_start_token(llm):
    """guided_start_token_id (a chat's </think>): free tokens first, the grammar after that token."""
    tok = llm.engine.tokenizer
    start = tok.encode("Z")[0]
    outs = _sample(llm, n=4, guided_regex="[0-9]{3}", guided_start_token_id=start, thinking_budget=5,
                   thinking_end_token_id=start, logit_bias={tok.eos_token_id: -100})  # no EOS while free
    for c in outs:
        k = c.token_ids.index(start)
        assert k <= 5 and c.finish_reason == "stop"
        assert re.fullmatch("[0-9]{3}", tok.decode(c.token_ids[k + 1:-1] if c.token_ids[-1] == tok.eos_token_id
                                                   else c.token_ids[k + 1:]))


def test_grammar_and_allowed_token_ids_intersect(llm):
    tok = llm.engine.tokenizer
    digits = sorted({tok.encode(d)[0] for d in "0123456789"})
    five = tok.encode("5")[0]
    outs = _sample(llm, n=3, guided_regex="[0-9]{4}", allowed_token_ids=[five] + [tok.eos_token_id])
    assert all(c.text == "5555" for c in outs), [c.text for c in outs]
    assert five in digits


@pytest.mark.parametrize("kw,what", [
    ({"guided_regex": "a", "guided_json": {}}, "at most one guided"),
    ({"guided_json_object": True, "guided_choice": ["a"]}, "at most one guided"),
    ({"guided_regex": "a", "ignore_eos": True}, "ignore_eos"),
    ({"guided_json": {}, "min_tokens": 2}, "min_tokens"),
    ({"guided_regex": 5}, "guided_regex must be a string"),
    ({"guided_json": [1]}, "guided_json must be"),
])
def test_invalid_combinations(kw, what):
    with pytest.raises(ValueError, match=what):
        SamplingParams(**kw)


def test_bad_specs_fail_at_add_request(llm):
    with pytest.raises(ValueError, match="multipleOf"):
        llm.generate(["x"], SamplingParams(guided_json={"type": "integer", "multipleOf": 2}))
    with pytest.raises(ValueError, match="missing"):
        llm.generate(["x"], SamplingParams(guided_regex="(ab"))
    assert not llm.engine.has_unfinished()


def test_compiled_grammar_is_shared_not_copied(compiler):
    g = compiler.compile("regex", REGEX)
    p = SamplingParams(guided_regex=REGEX, guide=g)
    assert p.clone().guide is g and p.with_updates(n=2).guide is g
