"""A completion cut by max_tokens inside tool-call markup (forced or auto tool choice): no DSML
markup reaches content, the cut call is not reported, completed calls before it are; streaming
agrees with one-shot parsing for every cut position and chunking."""

import json
import random

from test_output_parser import SP, WEATHER, D, block, invoke

from chat.output_parser import StreamingParser, parse_completion

PING = invoke("ping", ("n", "false", "1"))
# auto: text then a block; forced: the block right away (the tool-call grammar's output)
TEXTS = {"auto": "Sure, checking." + block(WEATHER, PING), "forced": block(WEATHER, PING).lstrip("\n"),
         "thinking": "need weather</think>" + block(WEATHER)}


def _oneshot(text, thinking):
    p = parse_completion(text, thinking=thinking, special=SP, cut=True)
    return p.reasoning, p.content, [(c.name, json.loads(c.arguments_json)) for c in p.tool_calls]


def _streamed(chunks, thinking):
    parser = StreamingParser(thinking, SP)
    deltas = [d for c in chunks for d in parser.feed(c)] + parser.finish(cut=True)
    reasoning = "".join(d.reasoning or "" for d in deltas) if thinking else None
    calls = [(d.tool_call.name, json.loads(d.tool_call.arguments)) for d in deltas if d.tool_call]
    return reasoning, "".join(d.content or "" for d in deltas), calls


def test_cut_tool_calls_never_leak_markup():
    rng = random.Random(0)
    for kind, full in TEXTS.items():
        thinking = kind == "thinking"
        head = full[:full.index(f"<{D}tool_calls>")]
        visible = head.split("</think>")[-1].rstrip("\n")
        complete = [(n, a) for n, a in (("get_weather", {"location": "Beijing", "unit": "celsius"}),
                                         ("ping", {"n": 1}))]
        start = len(head) + (1 if head.endswith("\n\n") else 1 + len(D))  # "\n\n<" or "<｜DSML｜"
        for end in range(start, len(full)):  # every cut inside the markup
            text = full[:end]
            reasoning, content, calls = _oneshot(text, thinking)
            assert content == visible, (kind, end, content)
            assert D not in content and "tool_calls" not in content and "invoke" not in content
            closed = text.count(f"</{D}invoke>")
            assert calls == complete[:closed], (kind, end)
            cuts = sorted(rng.sample(range(1, len(text)), min(4, len(text) - 1)))
            chunks = [text[a:b] for a, b in zip([0] + cuts, cuts + [len(text)])]
            assert _streamed(chunks, thinking) == (reasoning, content, calls), (kind, end)
            assert _streamed(list(text), thinking) == (reasoning, content, calls), (kind, end)


def test_cut_elsewhere_changes_nothing():
    for text in ("plain text cut", "a < b", "a <", "x\n\n<tool_calls> literal", "x\n\n"):
        assert _oneshot(text, False) == (None, text, [])
        assert _streamed(list(text), False) == (None, text, [])
    # without cut, a malformed/unfinished block stays visible (the existing rule)
    text = "x" + block(WEATHER)[:-30]
    assert parse_completion(text, thinking=False, special=SP).content != "x"
