"""The forced tool-call grammar (engine/guided/tool_calls.py) against the chat encoder's own
rendering of calls: every call the encoder can write for valid arguments matches, and calls with a
wrong name, a missing required parameter, a value of the wrong type, or plain text do not."""

from __future__ import annotations

import pytest

from engine.guided.automaton import compile_dfa
from engine.guided.tool_calls import DSML_SYMBOL, tool_calls_ast
from chat.encoder import DSML, _render_tool_calls

WEATHER = {"name": "get_weather", "parameters": {"type": "object", "properties": {
    "city": {"type": "string", "maxLength": 12}, "days": {"type": "integer", "minimum": 1, "maximum": 14},
    "unit": {"enum": ["C", "F", 0]}, "tags": {"type": "array", "items": {"type": "string"}},
    "note": {"type": ["string", "null"]}}, "required": ["city", "days"]}}
NOOP = {"name": "noop", "parameters": {"type": "object", "properties": {}}}
FREE = {"name": "free"}  # no parameters schema: any keys and values


def _calls_text(calls) -> str:
    """The encoder's rendering of `calls` (its (text, is_template) segments joined)."""
    return "".join(text for text, _ in _render_tool_calls(calls))


def _symbols(text: str) -> list[int]:
    """The encoder's text as the automaton's input: UTF-8 bytes, the DSML token as its symbol."""
    out: list[int] = []
    for i, piece in enumerate(text.split(DSML)):
        if i:
            out.append(DSML_SYMBOL)
        out += list(piece.encode("utf-8"))
    return out


def _matches(dfa, calls) -> bool:
    return bool(dfa.accept[dfa.step(dfa.start, _symbols(_calls_text(calls)))])


@pytest.fixture(scope="module")
def grammars():
    return {one: compile_dfa(tool_calls_ast([WEATHER, NOOP, FREE], one)) for one in (True, False)}


GOOD = [
    [("c1", "get_weather", {"city": "Paris", "days": 3})],
    [("c1", "get_weather", {"city": "Rome <b>", "days": 14, "unit": "F", "tags": ["a", "b c"], "note": None})],
    [("c1", "get_weather", {"city": "", "days": 1, "unit": 0, "note": "multi\nline"})],
    [("c1", "noop", {})],
    [("c1", "free", {"anything": "goes", "n": [1, {"x": True}]})],
]
BAD = [
    [("c1", "get_weather", {"city": "Paris"})],  # days is required
    [("c1", "get_weather", {"days": 3, "city": "Paris"})],  # out of the declared order
    [("c1", "get_weather", {"city": "Paris", "days": 15})],  # above maximum
    [("c1", "get_weather", {"city": "Paris", "days": "3"})],  # a string where an integer goes
    [("c1", "get_weather", {"city": "a very long city name", "days": 3})],  # above maxLength
    [("c1", "get_weather", {"city": "Paris", "days": 3, "unit": "K"})],  # not in the enum
    [("c1", "get_weather", {"city": "x｜DSML｜y", "days": 3})],  # raw text cannot spell a tag
    [("c1", "delete_all", {})],  # not an offered function
]


@pytest.mark.parametrize("calls", GOOD)
def test_encoder_renderings_match(grammars, calls):
    assert _matches(grammars[True], calls) and _matches(grammars[False], calls)


@pytest.mark.parametrize("calls", BAD)
def test_invalid_calls_do_not_match(grammars, calls):
    assert not _matches(grammars[False], calls)


def test_one_call_or_several(grammars):
    two = GOOD[0] + [("c2", "noop", {})]
    assert _matches(grammars[False], two) and not _matches(grammars[True], two)
    plain = _symbols("Sure! " + _calls_text(GOOD[0]))
    assert not grammars[False].accept[grammars[False].step(grammars[False].start, plain)]


@pytest.mark.parametrize("fn,what", [
    ({"name": 'bad"name'}, "cannot be written"),
    ({"name": "f", "parameters": {"type": "object", "properties": {'k"': {}}}}, "cannot be written"),
    ({"name": "f", "parameters": "nope"}, "must be a JSON schema"),
])
def test_unwritable_functions_are_refused(fn, what):
    with pytest.raises(ValueError, match=what):
        tool_calls_ast([fn], True)
