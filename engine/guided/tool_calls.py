"""Grammar of DeepSeek-V4's DSML tool-call block (architecture.md §6.3), for chat requests that
force a call (`tool_choice` "required" or a named function): the reply is exactly

    \\n\\n<D>tool_calls>\\n INVOKE (\\n INVOKE)* \\n</D>tool_calls>        then EOS
    INVOKE = <D>invoke name="NAME">\\n PARAM (\\n PARAM)* \\n</D>invoke>
    PARAM  = <D>parameter name="KEY" string="true">raw text</D>parameter>     (string values)
           | <D>parameter name="KEY" string="false">JSON</D>parameter>       (everything else)

as the chat encoder renders calls, where D is the `｜DSML｜` special token. In `TokenVocab` that
token is the single input symbol `DSML_SYMBOL` (256: past every byte value, so no text token can
produce it and no other grammar accepts it), and this grammar asks for it wherever D goes.
Parameters follow the function's JSON schema (properties in order, required ones
always); a parameter whose schema the JSON compiler does not support takes any value of its kind.
Raw string values exclude `｜` (U+FF5C), so they cannot spell out a closing tag.
"""

from __future__ import annotations

from typing import Any

from .automaton import lit, negate_ranges
from .json_schema import _SchemaCompiler, free_json, ordered_members

DSML_TOKEN = "｜DSML｜"
DSML_SYMBOL = 256  # automaton.ALPHABET's first special-token symbol
D = ("bytes", [(DSML_SYMBOL, DSML_SYMBOL)])
RAW_CHAR = ("cset", negate_ranges([(0xFF5C, 0xFF5C)]))


def tool_calls_ast(functions: list[dict], one_call: bool) -> tuple:
    """The block calling any of `functions` (OpenAI function objects: name, parameters); exactly one
    call when `one_call`."""
    if not functions:
        raise ValueError("a forced tool call needs at least one function")
    invoke = ("alt", [_invoke(fn) for fn in functions])
    calls = invoke if one_call else ("seplist", invoke, lit("\n"), 1)
    return ("seq", [lit("\n\n<"), D, lit("tool_calls>\n"), calls, lit("\n</"), D, lit("tool_calls>")])


def _invoke(fn: dict) -> tuple:
    name = fn.get("name")
    if not isinstance(name, str) or not name or '"' in name or "\n" in name:
        raise ValueError(f"tool function name {name!r} cannot be written in a DSML invoke tag")
    schema = fn.get("parameters") or {}
    if not isinstance(schema, dict):
        raise ValueError(f"tool {name!r}: parameters must be a JSON schema object")
    compiler = _SchemaCompiler(schema)
    props = schema.get("properties") or {}
    required = set(schema.get("required") or [])
    if props:
        params = ordered_members([(key in required, _param(compiler, key, sub, f"{name}/{key}"))
                                  for key, sub in props.items()], sep=lit("\n"))
    else:  # no declared properties: any keys, any values
        key = ("rep", ("cset", negate_ranges([(10, 10), (34, 34)])), 1, 64)
        params = ("rep", ("seplist", ("alt", [_tag(key, "true", ("rep", RAW_CHAR, 0, None)),
                                              _tag(key, "false", free_json(3))]), lit("\n"), 1), 0, 1)
    return ("seq", [lit("<"), D, lit(f'invoke name="{name}">\n'), params, lit("\n</"), D, lit("invoke>")])


def _tag(key: tuple, string: str, value: tuple) -> tuple:
    return ("seq", [lit("<"), D, lit('parameter name="'), key, lit(f'" string="{string}">'), value,
                    lit("</"), D, lit("parameter>")])


def _param(compiler: _SchemaCompiler, key: str, schema: Any, where: str) -> tuple:
    if '"' in key or "\n" in key:
        raise ValueError(f"tool parameter name {key!r} cannot be written in a DSML parameter tag")
    name = lit(key)
    variants = []
    for kind, sub in _split_string(schema):
        try:
            value = _raw_string(compiler, sub, where) if kind == "string" else compiler.compile(sub, where)
        except ValueError:  # a schema the compiler cannot express: any value of this kind
            value = ("rep", RAW_CHAR, 0, None) if kind == "string" else free_json(3)
        variants.append(_tag(name, "true" if kind == "string" else "false", value))
    return ("alt", variants)


def _split_string(schema: Any) -> list[tuple[str, Any]]:
    """The schema's string part (written raw, string="true") and the rest (JSON, string="false"),
    as the encoder writes a value: raw exactly when it is a string."""
    if not isinstance(schema, dict):
        return [("json", schema)]
    if "enum" in schema or "const" in schema:
        values = schema["enum"] if "enum" in schema else [schema["const"]]
        strings = [v for v in values if isinstance(v, str)] if isinstance(values, list) else []
        others = [v for v in values if not isinstance(v, str)] if isinstance(values, list) else values
        out = [("string", {"enum": strings})] if strings else []
        return out + ([("json", {**schema, "enum": others})] if others else [])
    types = schema.get("type")
    if types == "string":
        return [("string", schema)]
    if isinstance(types, list) and "string" in types:
        rest = [t for t in types if t != "string"]
        return [("string", {**schema, "type": "string"})] + ([("json", {**schema, "type": rest})] if rest else [])
    return [("json", schema)]


def _raw_string(compiler: _SchemaCompiler, schema: dict, where: str) -> tuple:
    """The raw text of a string value: its enum, its pattern / format, or its length bounds."""
    if "enum" in schema:
        return ("alt", [lit(v) for v in schema["enum"]])
    node = compiler.compile({**schema, "type": "string"}, where)  # validates the string keywords
    if "pattern" in schema or "format" in schema:
        return node[1][1]  # json_string(inner): the pattern between the quotes
    lo, hi = schema.get("minLength", 0), schema.get("maxLength")
    return ("rep", RAW_CHAR, lo, hi)
