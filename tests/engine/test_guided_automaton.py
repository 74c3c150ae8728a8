"""engine/guided automata: the regex parser + byte DFA against Python's `re`, UTF-8 range splitting
against the codec, and JSON-schema DFAs against the `jsonschema` validator."""

from __future__ import annotations

import json
import random
import re
import zlib
from fractions import Fraction

import jsonschema
import pytest

from engine.guided.automaton import PatternTooLarge, compile_dfa, utf8_sequences
from engine.guided.json_schema import free_object, schema_to_ast
from engine.guided.regex import parse_regex

PATTERNS = [
    r"abc", r"a|b|cd", r"(ab)*c", r"a+b?", r"[a-c]{2,3}", r"[^abc]x", r"\d{3}-\d{2,}", r"(a|bc){0,2}d",
    r"x.y", r"[\w-]+@[\w-]+\.(com|org)", r"\s*\S", r"^(?:ab|a)(?P<g>b+)$", r"a{3}", r"[-a]b[a-]", r"é+ü?",
    r"[α-ω]{1,2}", r"\u00e9|\x41", r"[\]a]+", r"(a*)*b", r"\.\*\+", r"[^\d\s]", r"a{2,}?b", r"",
]
ALPHABET = ["a", "b", "c", "d", "x", "y", "-", "@", ".", "1", "7", " ", "\n", "é", "ü", "α", "λ", "ω", "]", "*",
            "+", "_", "com", "org", "A", "\t"]


@pytest.mark.parametrize("pattern", PATTERNS)
def test_regex_dfa_matches_python_re(pattern):
    dfa = compile_dfa(parse_regex(pattern))
    rx = re.compile(pattern, re.ASCII)  # \d \w \s have their ASCII meanings (engine/guided/regex.py)
    rng = random.Random(zlib.crc32(pattern.encode()))  # hash() of a str changes with every process
    samples = ["".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 7))) for _ in range(3000)]
    samples += ["abc", "ab", "cd", "ababc", "aab", "ac", "123-45", "123-4", "é", "éü", "a@b.com", "aaa", ""]
    for s in samples:
        assert dfa.fullmatch(s.encode()) == bool(rx.fullmatch(s)), (pattern, s)


@pytest.mark.parametrize("pattern,what", [
    ("(a", "missing ')'"), ("a)", "unbalanced"), ("*a", "nothing to repeat"), (r"(a)\1", "not supported"),
    ("(?=a)", "lookaround"), ("a{3,2}", "bad repetition"), ("[z-a]", "bad character range"), (r"\bx", "not supported"),
    ("a^b", "only supported"),
])
def test_regex_errors_name_the_problem(pattern, what):
    with pytest.raises(ValueError, match=re.escape(what)):
        compile_dfa(parse_regex(pattern))


def test_utf8_sequences_cover_exactly_the_range():
    rng = random.Random(0)
    cases = [(0, 0x7F), (0x70, 0x90), (0x7FF, 0x801), (0xD7F0, 0xE010), (0xFFF0, 0x10010), (0x10FFF0, 0x10FFFF)]
    cases += [tuple(sorted((rng.randrange(0x110000), rng.randrange(0x110000)))) for _ in range(20)]
    for lo, hi in cases:
        seqs = utf8_sequences(lo, hi)

        def covered(data: bytes) -> bool:
            return any(len(s) == len(data) and all(a <= b <= c for (a, c), b in zip(s, data)) for s in seqs)
        probes = {lo, hi, lo - 1, hi + 1, (lo + hi) // 2}
        probes |= {rng.randrange(max(lo - 50, 0), hi + 51) for _ in range(300)}
        for cp in probes:
            if not 0 <= cp <= 0x10FFFF or 0xD800 <= cp <= 0xDFFF:
                continue
            assert covered(chr(cp).encode()) == (lo <= cp <= hi), (lo, hi, cp)


SCHEMAS = [
    {"type": "object", "properties": {"name": {"type": "string", "maxLength": 5}, "age": {"type": "integer"},
                                      "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 2}},
     "required": ["name", "age"], "additionalProperties": False},
    {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": ["string", "null"]},
                                      "c": {"const": {"k": [1, 2]}}}},
    {"$defs": {"P": {"type": "object", "properties": {"x": {"type": "boolean"}}, "required": ["x"]}},
     "type": "array", "items": {"$ref": "#/$defs/P"}, "minItems": 1},
    {"type": "object", "properties": {"id": {"type": "string", "format": "uuid"},
                                      "day": {"type": "string", "format": "date"},
                                      "code": {"type": "string", "pattern": "^[A-Z]{2}[0-9]$"}}, "required": ["id"]},
    {"anyOf": [{"type": "integer"}, {"type": "array", "prefixItems": [{"type": "string"}, {"type": "integer"}],
                                     "items": False, "minItems": 1}]},
    {"type": "object", "additionalProperties": {"type": "integer"}},
]
FORMATS = jsonschema.Draft202012Validator.FORMAT_CHECKER
DOCS = [
    {"name": "bob", "age": 3}, {"name": "bob", "age": -3, "tags": ["a", "b"]}, {"name": "robert", "age": 1},
    {"age": 1, "name": "bob"}, {"name": "bob", "age": 1.5}, {"name": "bob", "age": 3, "tags": ["a", "b", "a"]},
    {}, {"a": 1e5, "b": None}, {"a": -0.25, "b": "x", "c": {"k": [1, 2]}}, {"b": "é\"\\ \u00e9"}, {"c": {"k": [1]}},
    [{"x": True}], [{"x": True}, {"x": False}], [], [{"x": 1}],
    {"id": "123e4567-e89b-12d3-a456-426614174000", "day": "2024-02-29", "code": "AB1"}, {"id": "nope"},
    {"id": "123e4567-e89b-12d3-a456-426614174000", "code": "ab1"},
    7, -0, ["x", 3], ["x"], ["x", "y"], [3, "x"], {"k": 1, "j": -2}, {"k": "1"}, "str", None, True,
]


@pytest.mark.parametrize("schema", SCHEMAS, ids=[str(i) for i in range(len(SCHEMAS))])
def test_schema_dfa_agrees_with_jsonschema(schema):
    """Declared-order serializations of valid documents match; invalid documents never match."""
    dfa = compile_dfa(schema_to_ast(schema))
    matched = 0
    for doc in DOCS:
        valid = jsonschema.Draft202012Validator(schema, format_checker=FORMATS).is_valid(doc)
        for seps in ((",", ":"), (", ", ": ")):
            text = json.dumps(doc, separators=seps, ensure_ascii=False)
            if dfa.fullmatch(text.encode()):
                matched += 1
                assert valid, (schema, text)
            elif valid and _declared_order(schema, doc):
                pytest.fail(f"valid document rejected: {text}")
    assert matched >= 2


def _declared_order(schema: dict, doc) -> bool:
    """Whether `doc`'s keys follow the schema's property order (what the grammar produces)."""
    props = list(schema.get("properties", {}))
    if not isinstance(doc, dict) or not props:
        return True
    keys = [k for k in doc if k in props]
    return keys == sorted(keys, key=props.index) and len(keys) == len(doc)


def test_free_json_object():
    dfa = compile_dfa(free_object())
    for doc in ({}, {"a": [1, 2.5, {"b": None}], "c": "x\\"}, {"d": [[[[1]]]]}, {"é": True}):
        assert dfa.fullmatch(json.dumps(doc).encode())
        assert dfa.fullmatch(json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode())
    for text in ("[1]", '{"a":1,}', '{"a"}', "{'a':1}", '{"a":01}', '{"a":1}x', '{"a":"\x01"}', '{"a":tru}',
                 '{"d":[[[[[[1]]]]]]}'):  # the last nests deeper than MAX_FREE_DEPTH
        assert not dfa.fullmatch(text.encode()), text


@pytest.mark.parametrize("schema,what", [
    ({"type": "number", "minimum": 0.5}, "integer-valued minimum / maximum only"),
    ({"type": "number", "exclusiveMinimum": 0}, "exclusiveMinimum=0"),
    ({"type": "integer", "minimum": 3, "exclusiveMaximum": 3}, "range is empty"),
    ({"type": "integer", "maximum": "9"}, "finite number"),
    ({"type": "integer", "multipleOf": 3}, "multipleOf"),
    ({"type": "object", "properties": {"a": {"not": {}}}}, "/properties/a: keyword(s) not"),
    ({"$defs": {"T": {"type": "array", "items": {"$ref": "#/$defs/T"}}}, "$ref": "#/$defs/T"}, "recursive"),
    ({"$ref": "#/$defs/missing"}, "does not resolve"),
    ({"$ref": "http://x/y.json"}, "only local $ref"),
    ({"type": "object", "properties": {"a": {}}, "required": ["b"]}, "not declared"),
    ({"type": "string", "format": "email"}, "format 'email' is not supported"),
    ({"type": "string", "maxLength": 2, "minLength": 3}, "maxLength is below minLength"),
    ({"type": "wat"}, "unknown type"),
    ({"allOf": [{}, {}]}, "exactly one"),
    (False, "matches nothing"),
    ("{not json", "not valid JSON"),
])
def test_schema_errors_name_the_keyword(schema, what):
    with pytest.raises(ValueError, match=re.escape(what)):
        compile_dfa(schema_to_ast(schema))


@pytest.mark.parametrize("kind", ["integer", "number"])
def test_numeric_ranges_are_exact(kind):
    rng = random.Random(kind)
    cases = [(None, None), (0, None), (None, 0), (-5, -2), (-1, 1), (10**18, 10**18 + 7), (None, -300)]
    cases += [tuple(sorted(rng.sample(range(-300, 300), 2))) for _ in range(12)]
    texts = [str(v) for v in range(-420, 420, 3)] + ["-2.5", "-1.0", "-0.5", "0.0", "1.5", "3.000", "299.9",
                                                      "-299.9", "12.50", str(10**18 + 7), str(10**18 + 8), "01"]
    for lo, hi in cases:
        schema = {"type": kind, **({"minimum": lo} if lo is not None else {}),
                  **({"maximum": hi} if hi is not None else {})}
        dfa = compile_dfa(schema_to_ast(schema))
        for text in texts:
            value = Fraction(text)
            want = (lo is None or value >= lo) and (hi is None or value <= hi) and text != "01" and \
                not (kind == "integer" and "." in text)
            assert dfa.fullmatch(text.encode()) == want, (schema, text)
    dfa = compile_dfa(schema_to_ast({"type": "integer", "exclusiveMinimum": 1.5, "exclusiveMaximum": 4}))
    assert [t for t in ("1", "2", "3", "4") if dfa.fullmatch(t.encode())] == ["2", "3"]


def test_oversized_pattern_is_refused():
    with pytest.raises(PatternTooLarge):
        compile_dfa(parse_regex("(a|b|c|d){1,9999}[^x]{1,9999}"))
