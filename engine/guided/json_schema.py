"""JSON schema (and free JSON) -> the automaton AST of the JSON texts the decoder may produce.

The produced text is compact JSON with at most one space after `:` and `,`. Objects list their
declared properties in schema order (required ones always, optional ones possibly skipped); with
no `properties`, an object takes any string keys whose values match `additionalProperties` (any
JSON when absent or true). Strings, numbers and nesting are bounded so every path is finite where
the schema is: integers up to 19 digits, fractions and exponents to 15 / 3 digits, free JSON up to
`MAX_FREE_DEPTH` levels of nesting.

Supported keywords: type (one or a list), enum, const, properties, required, additionalProperties,
items, prefixItems, minItems, maxItems, minLength, maxLength, pattern, format (date, time,
date-time, uuid), minimum / maximum / exclusiveMinimum / exclusiveMaximum (integers: any bounds;
numbers: integer-valued inclusive bounds, no exponent; numeric.py), anyOf, oneOf, allOf (one
schema), $ref into $defs / definitions (not recursive).
Annotations (title, description, default, examples, $schema, $id, ...) are ignored. Every other
keyword is a ValueError naming it: the output would not be guaranteed to satisfy it.
"""

from __future__ import annotations

import json
from typing import Any

from . import numeric
from .automaton import cset, lit, negate_ranges, subtract_ranges_in
from .regex import parse_regex

MAX_FREE_DEPTH = 5
MAX_STRING_LENGTH = 4096

_ANNOTATIONS = {"title", "description", "default", "examples", "$schema", "$id", "$comment", "deprecated",
                "readOnly", "writeOnly", "$defs", "definitions"}
_KNOWN = {"type", "enum", "const", "properties", "required", "additionalProperties", "items", "prefixItems",
          "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
          "minItems", "maxItems", "minLength", "maxLength", "pattern", "format", "anyOf", "oneOf", "allOf", "$ref"}

WS = ("rep", lit(" "), 0, 1)
DIGITS = cset((48, 57))
NONZERO = cset((49, 57))
_CONT = (0x80, 0xBF)
_ESCAPES = [
    ("seq", [lit("\\"), ("cset", [(34, 34), (47, 47), (92, 92), (98, 98), (102, 102), (110, 110), (114, 114),
                                  (116, 116)])]),
    ("seq", [lit("\\u"), ("rep", cset((48, 57), (65, 70), (97, 102)), 4, 4)]),
]
# One character of a JSON string, exactly: any code point but controls, quote and backslash, or an escape.
_JSON_CHAR_EXACT = ("alt", [("cset", negate_ranges([(0, 31), (34, 34), (92, 92)]))] + _ESCAPES)
# The same with any multi-byte shape (lead byte + continuations) instead of exact UTF-8: overlong forms
# and surrogates pass, yet the text still decodes to a valid JSON string (U+FFFD at worst), with fewer
# automaton states. Used where no length is counted (a bad sequence decodes to several U+FFFD).
_JSON_CHAR = ("alt", [("cset", [(32, 33), (35, 91), (93, 127)]), ("bytes", [(0xC2, 0xDF), _CONT]),
                      ("bytes", [(0xE0, 0xEF), _CONT, _CONT]), ("bytes", [(0xF0, 0xF4), _CONT, _CONT, _CONT])]
             + _ESCAPES)
INTEGER = ("seq", [("rep", lit("-"), 0, 1), ("alt", [lit("0"), ("seq", [NONZERO, ("rep", DIGITS, 0, 18)])])])
NUMBER = ("seq", [INTEGER, ("rep", ("seq", [lit("."), ("rep", DIGITS, 1, 15)]), 0, 1),
                  ("rep", ("seq", [cset((69, 69), (101, 101)), ("rep", cset((43, 43), (45, 45)), 0, 1),
                                   ("rep", DIGITS, 1, 3)]), 0, 1)])
_FORMATS = {
    "date": r"\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])",
    "time": r"([01]\d|2[0-3]):[0-5]\d:[0-5]\d(\.\d{1,6})?(Z|[+-]([01]\d|2[0-3]):[0-5]\d)?",
    "date-time": r"\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])T([01]\d|2[0-3]):[0-5]\d:[0-5]\d(\.\d{1,6})?"
                 r"(Z|[+-]([01]\d|2[0-3]):[0-5]\d)",
    "uuid": r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}",
}


def json_string(inner: tuple | None = None, lo: int = 0, hi: int | None = None) -> tuple:
    char = _JSON_CHAR if lo == 0 and hi is None else _JSON_CHAR_EXACT  # lengths count code points
    body = inner if inner is not None else ("rep", char, lo, hi)
    return ("seq", [lit('"'), body, lit('"')])


def literal_json(value: Any) -> tuple:
    """Exactly `value` (enum / const), with the same optional spaces as everywhere else."""
    comma = ("seq", [lit(","), WS])
    if isinstance(value, dict):
        parts: list[tuple] = []
        for i, (k, v) in enumerate(value.items()):
            key = lit(json.dumps(str(k), ensure_ascii=False))
            parts += ([comma] if i else []) + [key, lit(":"), WS, literal_json(v)]
        return ("seq", [lit("{")] + parts + [lit("}")])
    if isinstance(value, list):
        parts = []
        for i, v in enumerate(value):
            parts += ([comma] if i else []) + [literal_json(v)]
        return ("seq", [lit("[")] + parts + [lit("]")])
    return lit(json.dumps(value, ensure_ascii=False))


def free_json(depth: int = MAX_FREE_DEPTH) -> tuple:
    """Any JSON value nested at most `depth` levels."""
    branches = [json_string(), NUMBER, lit("true"), lit("false"), lit("null")]
    if depth > 0:
        inner = free_json(depth - 1)
        branches += [_object_of(inner), _array_of(inner, 0, None)]
    return ("alt", branches)


def free_object(depth: int = MAX_FREE_DEPTH) -> tuple:
    """A JSON object whose values nest at most `depth - 1` more levels (response_format json_object)."""
    return _object_of(free_json(depth - 1))


def _object_of(value: tuple) -> tuple:
    member = ("seq", [json_string(), lit(":"), WS, value])
    return ("seq", [lit("{"), ("seplist", member, ("seq", [lit(","), WS]), 0), lit("}")])


def _array_of(item: tuple, lo: int, hi: int | None) -> tuple:
    sep = ("seq", [lit(","), WS])
    if hi is None and lo <= 1:
        return ("seq", [lit("["), ("seplist", item, sep, lo), lit("]")])
    if hi == 0:
        return lit("[]")
    rest = ("rep", ("seq", [sep, item]), max(lo - 1, 0), None if hi is None else hi - 1)
    body = ("seq", [item, rest])
    return ("seq", [lit("["), body if lo > 0 else ("rep", body, 0, 1), lit("]")])


class _SchemaCompiler:
    def __init__(self, root: dict) -> None:
        self.root = root
        self.resolving: list[str] = []

    def error(self, where: str, what: str) -> ValueError:
        return ValueError(f"JSON schema at {where or '#'}: {what}")

    def compile(self, schema: Any, where: str) -> tuple:
        if schema is True or schema == {}:
            return free_json()
        if schema is False:
            raise self.error(where, "the schema `false` matches nothing")
        if not isinstance(schema, dict):
            raise self.error(where, f"a schema must be an object or a boolean, got {type(schema).__name__}")
        unknown = sorted(k for k in schema if k not in _KNOWN and k not in _ANNOTATIONS)
        if unknown:
            raise self.error(where, f"keyword(s) {', '.join(unknown)} not supported by guided decoding")
        if "$ref" in schema:
            return self._ref(schema, where)
        if "allOf" in schema:
            parts = schema["allOf"]
            if not isinstance(parts, list) or len(parts) != 1:
                raise self.error(where, "allOf is supported with exactly one schema")
            return self.compile({**{k: v for k, v in schema.items() if k != "allOf"}, **parts[0]}, where + "/allOf/0")
        for key in ("anyOf", "oneOf"):
            if key in schema:
                options = schema[key]
                if not isinstance(options, list) or not options:
                    raise self.error(where, f"{key} must be a non-empty list of schemas")
                rest = {k: v for k, v in schema.items() if k != key}
                return ("alt", [self.compile({**rest, **o} if isinstance(o, dict) else o, f"{where}/{key}/{i}")
                                for i, o in enumerate(options)])
        if "const" in schema:
            return literal_json(schema["const"])
        if "enum" in schema:
            values = schema["enum"]
            if not isinstance(values, list) or not values:
                raise self.error(where, "enum must be a non-empty list")
            return ("alt", [literal_json(v) for v in values])
        types = schema.get("type")
        if types is None:
            types = self._implied_type(schema)
        if isinstance(types, list):
            if not types:
                raise self.error(where, "type must not be an empty list")
            return ("alt", [self._typed(t, schema, where) for t in types])
        return self._typed(types, schema, where)

    def _implied_type(self, schema: dict) -> Any:
        if "properties" in schema or "additionalProperties" in schema or "required" in schema:
            return "object"
        if "items" in schema or "prefixItems" in schema or "minItems" in schema or "maxItems" in schema:
            return "array"
        if "pattern" in schema or "format" in schema or "minLength" in schema or "maxLength" in schema:
            return "string"
        return ["string", "number", "boolean", "null", "object", "array"]

    def _ref(self, schema: dict, where: str) -> tuple:
        ref = schema["$ref"]
        if not isinstance(ref, str) or not ref.startswith("#"):
            raise self.error(where, f"only local $ref ('#/...') is supported, got {ref!r}")
        if ref in self.resolving:
            raise self.error(where, f"recursive $ref {ref!r} is not supported")
        node: Any = self.root
        for part in [p for p in ref[1:].split("/") if p]:
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(node, dict) or part not in node:
                raise self.error(where, f"$ref {ref!r} does not resolve")
            node = node[part]
        self.resolving.append(ref)
        try:
            rest = {k: v for k, v in schema.items() if k != "$ref"}
            return self.compile({**node, **rest} if isinstance(node, dict) and rest else node, ref)
        finally:
            self.resolving.pop()

    def _typed(self, t: Any, schema: dict, where: str) -> tuple:
        if t == "string":
            return self._string(schema, where)
        if t in ("integer", "number"):
            rng = numeric.bounds(schema, t == "integer", lambda what: self.error(where, what))
            if rng is None:
                return INTEGER if t == "integer" else NUMBER
            return numeric.integer_range(*rng) if t == "integer" else numeric.number_range(*rng)
        if t == "boolean":
            return ("alt", [lit("true"), lit("false")])
        if t == "null":
            return lit("null")
        if t == "array":
            return self._array(schema, where)
        if t == "object":
            return self._object(schema, where)
        raise self.error(where, f"unknown type {t!r}")

    def _count(self, schema: dict, key: str, where: str, default: int | None) -> int | None:
        v = schema.get(key, default)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
            raise self.error(where, f"{key} must be a non-negative integer")
        return v

    def _string(self, schema: dict, where: str) -> tuple:
        lo = self._count(schema, "minLength", where, 0)
        hi = self._count(schema, "maxLength", where, None)
        if hi is not None and hi < lo:
            raise self.error(where, "maxLength is below minLength")
        if max(lo, hi or 0) > MAX_STRING_LENGTH:
            raise self.error(where, f"string lengths above {MAX_STRING_LENGTH} are not supported")
        pattern, fmt = schema.get("pattern"), schema.get("format")
        if pattern is not None or fmt is not None:
            if (pattern is not None and fmt is not None) or "minLength" in schema or "maxLength" in schema:
                raise self.error(where, "pattern / format cannot be combined with each other or with string lengths")
            if fmt is not None and fmt not in _FORMATS:
                raise self.error(where, f"format {fmt!r} is not supported (supported: {', '.join(sorted(_FORMATS))})")
            if pattern is not None and not isinstance(pattern, str):
                raise self.error(where, "pattern must be a string")
            source = pattern if pattern is not None else _FORMATS[fmt]
            # the pattern describes the raw characters between the quotes: no quote, backslash or control
            inner = subtract_ranges_in(_search_to_full(parse_regex(source), source), [(0, 31), (34, 34), (92, 92)])
            return json_string(inner)
        return json_string(lo=lo, hi=hi)

    def _array(self, schema: dict, where: str) -> tuple:
        lo = self._count(schema, "minItems", where, 0)
        hi = self._count(schema, "maxItems", where, None)
        if hi is not None and hi < lo:
            raise self.error(where, "maxItems is below minItems")
        items = schema.get("items", True)
        prefix = schema.get("prefixItems")
        if prefix is not None:
            if not isinstance(prefix, list) or not prefix or items is not False and "items" in schema:
                raise self.error(where, "prefixItems is supported as a non-empty list with items false or absent "
                                        "(no items after the prefix)")
            parts = [self.compile(sub, f"{where}/prefixItems/{i}") for i, sub in enumerate(prefix)]
            top = len(parts) if hi is None else min(hi, len(parts))
            if lo > top:
                raise self.error(where, "minItems is above the number of prefixItems")
            options = [lit("[]")] if lo == 0 else []
            for n in range(max(lo, 1), top + 1):
                body: list[tuple] = [parts[0]]
                for part in parts[1:n]:
                    body += [lit(","), WS, part]
                options.append(("seq", [lit("[")] + body + [lit("]")]))
            return ("alt", options)
        item = free_json(MAX_FREE_DEPTH - 1) if items is True else self.compile(items, where + "/items")
        return _array_of(item, lo, hi)

    def _object(self, schema: dict, where: str) -> tuple:
        props = schema.get("properties") or {}
        if not isinstance(props, dict):
            raise self.error(where, "properties must be an object")
        required = schema.get("required", [])
        if not isinstance(required, list) or any(r not in props for r in required):
            missing = [r for r in required if r not in props] if isinstance(required, list) else required
            raise self.error(where, f"required names properties that are not declared: {missing}")
        extra = schema.get("additionalProperties", None)
        if not props:
            if extra is False:
                return lit("{}")
            value = free_json(MAX_FREE_DEPTH - 1) if extra in (None, True) else self.compile(
                extra, where + "/additionalProperties")
            return _object_of(value)
        members = [(name in required, ("seq", [literal_json(name), lit(":"), WS,
                                               self.compile(sub, f"{where}/properties/{name}")]))
                   for name, sub in props.items()]
        return ("seq", [lit("{"), ordered_members(members), lit("}")])


def ordered_members(members: list[tuple[bool, tuple]], sep: tuple | None = None) -> tuple:
    """Declared members in order: required ones always, optional ones or not, `sep` (default `,`
    and an optional space) between the present ones. Branches on which member comes first (O(n^2)
    size, not 2^n)."""
    sep = ("seq", [lit(","), WS]) if sep is None else sep

    def rest(j: int) -> list[tuple]:
        out = []
        for req, m in members[j:]:
            item = ("seq", [sep, m])
            out.append(item if req else ("rep", item, 0, 1))
        return out
    options = []
    for k, (req, m) in enumerate(members):
        options.append(("seq", [m] + rest(k + 1)))
        if req:
            break
    else:
        options.append(("seq", []))  # every member optional: {} too
    return ("alt", options)


def _search_to_full(node: tuple, source: str) -> tuple:
    """JSON-schema patterns are searches (unanchored); a pattern without ^...$ gets .* at its free ends."""
    anything = ("rep", ("cset", negate_ranges([])), 0, None)
    parts = [node]
    if not source.startswith("^"):
        parts.insert(0, anything)
    if not (source.endswith("$") and not source.endswith("\\$")):
        parts.append(anything)
    return ("seq", parts)


def schema_to_ast(schema: Any) -> tuple:
    """The automaton AST of the JSON texts valid for `schema` (a dict, a bool, or a JSON string)."""
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except json.JSONDecodeError as e:
            raise ValueError(f"the JSON schema is not valid JSON: {e}") from e
    return _SchemaCompiler(schema if isinstance(schema, dict) else {}).compile(schema, "")
