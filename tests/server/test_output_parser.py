"""One-shot and streaming completion parsing; the streaming parser must agree with the one-shot
parser for every way of cutting the text into chunks."""

import json
import random

import pytest

from chat.encoder import SpecialTokens
from chat.output_parser import StreamingParser, parse_completion

EOS = "<｜end▁of▁sentence｜>"
VOCAB = {"<｜begin▁of▁sentence｜>": 0, EOS: 1, "<｜User｜>": 128803, "<｜Assistant｜>": 128804,
         "<think>": 128821, "</think>": 128822, "｜DSML｜": 128825}


class DictTokenizer:
    def __init__(self, vocab):
        self.vocab = vocab

    def token_to_id(self, token):
        return self.vocab.get(token)


SP = SpecialTokens.from_tokenizer(DictTokenizer(VOCAB))
D = "｜DSML｜"


def invoke(name, *params):
    body = "".join(f'<{D}parameter name="{k}" string="{s}">{v}</{D}parameter>\n' for k, s, v in params)
    return f'<{D}invoke name="{name}">\n{body}</{D}invoke>'


def block(*invokes):
    return f"\n\n<{D}tool_calls>\n" + "\n".join(invokes) + f"\n</{D}tool_calls>"


WEATHER = invoke("get_weather", ("location", "true", "Beijing"), ("unit", "true", "celsius"))
MIXED = invoke("calc", ("n", "false", "42"), ("xs", "false", '[1, {"a": null}]'), ("s", "true", "a\n<b>\n"),
               ("bad", "false", "{not json"), ("flag", "false", "true"))

# (text, thinking) cases covering normal output, tool calls, cut-offs and malformed markup.
CASES = [
    ("Let me think.\nok</think>The answer is 4." + EOS, True),
    ("The answer is 4." + EOS, False),
    ("The user wants the weather. I should use the get_weather tool.</think>" + block(WEATHER) + EOS, True),
    ("plan</think>Checking both.\n" + block(WEATHER, MIXED) + EOS, True),
    ("Sure." + block(invoke("ping")) + "\n" + EOS, False),
    ("still thinking, cut off </thi", True),
    ("no eos, <think>odd</think> text\n\n", False),
    ("r</think>a\n\n\n" + block(WEATHER) + "after" + EOS, True),
    ("r</think>x" + block(WEATHER, invoke("broken", ("k", "maybe", "v"))) + EOS, True),
    ("r</think>x" + block('<｜DSML｜invoke name="cut">\n<｜DSML｜parameter name="k" string="true">va'), True),
    ("r</think>x" + block(WEATHER, "junk") + EOS, True),
    ("r</think>x\n\n<｜DSML｜tool_calls>\n<｜DSML｜invo", True),
    ("r</think>x" + block(invoke("dup", ("k", "true", "1"), ("k", "true", "2"))) + EOS, True),
    ("r</think>x" + block(WEATHER)[:-5], True),  # closing tag cut off after a good invoke
    ("r</think>text" + EOS + "ignored after eos", True),
    ("", True),
    ("plan " + block(WEATHER) + "</think>a < b, c > d\n\n<think>\n\nz" + block(WEATHER) + "\n\nmid" +
     block(invoke("ping")) + " \n" + EOS, True),
    ("ok" + block(invoke("ping")) + "\n<｜end", False),
    ("ok" + block(invoke("ping")) + "\n<think>\n" + EOS, False),
    ("中文｜竖线 <｜not a token｜> </｜DSML｜ x" + EOS, False),
    ("<｜end▁of", False),
]


def summary(reasoning, content, calls):
    return reasoning, content, [(name, json.loads(args)) for name, args in calls]


def parsed_summary(text, thinking):
    p = parse_completion(text, thinking=thinking, special=SP)
    return summary(p.reasoning, p.content, [(c.name, c.arguments_json) for c in p.tool_calls])


def streamed_summary(chunks, thinking):
    parser = StreamingParser(thinking, SP)
    deltas = [d for c in chunks for d in parser.feed(c)] + parser.finish()
    reasoning = "".join(d.reasoning or "" for d in deltas)
    calls = [(d.tool_call.name, d.tool_call.arguments) for d in deltas if d.tool_call]
    assert [d.tool_call.index for d in deltas if d.tool_call] == list(range(len(calls)))
    for d in deltas:  # no markup fragment ever reaches a text field
        for field in (d.reasoning, d.content):
            assert field is None or field  # no empty deltas
    return summary(reasoning if thinking else None, "".join(d.content or "" for d in deltas), calls)


def test_thinking_and_content():
    assert parsed_summary(*CASES[0]) == ("Let me think.\nok", "The answer is 4.", [])
    assert parsed_summary(*CASES[1]) == (None, "The answer is 4.", [])
    assert parsed_summary(*CASES[5]) == ("still thinking, cut off </thi", "", [])
    assert parsed_summary(*CASES[6]) == (None, "no eos, odd text\n\n", [])
    assert parsed_summary(*CASES[14]) == ("r", "text", [])


def test_tool_calls():
    assert parsed_summary(*CASES[2]) == ("The user wants the weather. I should use the get_weather tool.", "",
                                         [("get_weather", {"location": "Beijing", "unit": "celsius"})])
    _, content, calls = parsed_summary(*CASES[3])
    assert content == "Checking both.\n"
    assert calls[1] == ("calc", {"n": 42, "xs": [1, {"a": None}], "s": "a\n<b>\n", "bad": "{not json",
                                 "flag": True})
    p = parse_completion(CASES[4][0], thinking=False, special=SP)
    assert (p.content, p.tool_calls[0].arguments_json) == ("Sure.", "{}")
    assert p.tool_calls[0].id.startswith("call_")
    assert parsed_summary(*CASES[7])[1:] == ("a\n\n\nafter", [("get_weather", {"location": "Beijing", "unit": "celsius"})])


def test_blocks_between_content_and_inside_reasoning():
    reasoning, content, calls = parsed_summary(*CASES[16])
    # no </think> yet: still reasoning (the DSML special token itself is never visible text)
    assert reasoning.startswith("plan \n\n<tool_calls>") and D not in reasoning
    assert content == "a < b, c > d\n\n\n\nz\n\nmid"  # stray <think> dropped, trailing whitespace too
    assert [name for name, _ in calls] == ["get_weather", "ping"]


def test_malformed_markup_is_kept_as_content():
    """Malformed blocks stay as content text (nothing dropped silently) but without the DSML special
    token, which is never user-visible."""
    _, content, calls = parsed_summary(*CASES[8])  # bad string= attribute in the second invoke
    assert len(calls) == 1 and content.startswith("x\n") and content.endswith("</tool_calls>")
    assert '<invoke name="broken">' in content and D not in content
    text = CASES[9][0]  # unterminated invoke, no call parsed yet: the whole block is content
    assert parsed_summary(text, True) == ("r", text[len("r</think>"):].replace(D, ""), [])
    assert parsed_summary(*CASES[10])[1] == "x\njunk\n</tool_calls>"
    assert parsed_summary(*CASES[11])[1] == "x\n\n<tool_calls>\n<invo"


def test_stray_special_tokens_never_visible():
    text = f"{SP.bos}a{D}b{SP.user}c{SP.assistant}d{SP.think_end}e{D}f"
    reasoning, content, calls = parsed_summary(text, True)
    assert (reasoning, content, calls) == ("abcd", "ef", [])
    for cut in range(1, len(text)):  # every chunk boundary, incl. inside the special tokens
        p = StreamingParser(True, SP)
        deltas = p.feed(text[:cut]) + p.feed(text[cut:]) + p.finish()
        assert "".join(d.reasoning or "" for d in deltas) == "abcd"
        assert "".join(d.content or "" for d in deltas) == "ef"
    assert parsed_summary(*CASES[12])[2] == []
    assert parsed_summary(*CASES[13]) == ("r", "x", [("get_weather", {"location": "Beijing", "unit": "celsius"})])


@pytest.mark.parametrize("case", range(len(CASES)))
def test_streaming_matches_oneshot_at_every_split(case):
    text, thinking = CASES[case]
    expected = parsed_summary(text, thinking)
    assert streamed_summary([text], thinking) == expected
    for cut in range(len(text) + 1):
        assert streamed_summary([text[:cut], text[cut:]], thinking) == expected, cut
    assert streamed_summary(list(text), thinking) == expected  # one character at a time
    rng = random.Random(case)
    for _ in range(20):
        cuts = sorted(rng.sample(range(len(text) + 1), min(len(text) + 1, rng.randint(2, 8))))
        chunks = [text[a:b] for a, b in zip([0] + cuts, cuts + [len(text)])]
        assert streamed_summary(chunks, thinking) == expected, chunks


@pytest.mark.parametrize("case", [0, 2, 3, 4, 7])
def test_stream_never_leaks_markup(case):
    text, thinking = CASES[case]
    for size in (1, 2, 3, 5):
        parser = StreamingParser(thinking, SP)
        deltas = [d for i in range(0, len(text), size) for d in parser.feed(text[i:i + size])]
        for d in deltas + parser.finish():
            for field in (d.reasoning, d.content, d.tool_call and d.tool_call.arguments):
                for marker in ("<think>", "</think>", "｜", "<｜", "▁", "DSML"):
                    assert not field or marker not in field, (marker, field)


def test_stream_holds_partial_markers_and_stops_at_eos():
    p = StreamingParser(True, SP)
    assert [d.reasoning for d in p.feed("abc</th")] == ["abc"]
    assert [(d.reasoning, d.content) for d in p.feed("ink>Hi\n")] == [(None, "Hi")]
    assert p.feed("\n<｜DSML｜tool") == []
    out = p.feed("_calls>\n" + WEATHER + f"\n</{D}tool_calls>{EOS}trailing")
    assert out[0].tool_call.name == "get_weather" and out[0].tool_call.index == 0
    assert json.loads(out[0].tool_call.arguments) == {"location": "Beijing", "unit": "celsius"}
    assert p.feed("more") == [] and p.finish() == []


def test_streaming_matches_oneshot_on_random_texts():
    """Random strings of markers, partial markers and text, cut at random points."""
    pieces = ["a", " ", "\n", "\n\n", "<", "｜", "<thi", "<think>", "</think>", EOS, "<｜end", f"<{D}tool_calls>",
              f"</{D}tool_calls>", f"</{D}tool_c", f'<{D}invoke name="f">', f"</{D}invoke>", f"<{D}inv",
              f'<{D}parameter name="k" string="true">', f'<{D}parameter name="j" string="false">',
              f"</{D}parameter>", "1", WEATHER, block(WEATHER)]
    rng = random.Random(0)
    for _ in range(800):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 16)))
        thinking = rng.random() < 0.5
        cuts = sorted(rng.sample(range(len(text) + 1), min(len(text) + 1, rng.randint(1, 6))))
        chunks = [text[a:b] for a, b in zip([0] + cuts, cuts + [len(text)])]
        assert streamed_summary(chunks, thinking) == parsed_summary(text, thinking), chunks
