"""Prompt rendering against the reference encoder's golden outputs (encoding/tests/test_output_*.txt
of the DeepSeek-V4 HF repo, transcribed as strings) plus edge cases and validation."""

import pytest

from chat.encoder import SpecialTokens, encode_messages

BOS, EOS = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"
USER, ASSISTANT = "<｜User｜>", "<｜Assistant｜>"
SYSTEM = "You are a helpful assistant."

VOCAB = {BOS: 0, EOS: 1, USER: 128803, ASSISTANT: 128804, "<think>": 128821, "</think>": 128822,
         "｜DSML｜": 128825}


class DictTokenizer:
    """Stand-in for tokenizers.Tokenizer: only token_to_id is needed."""

    def __init__(self, vocab):
        self.vocab = vocab

    def token_to_id(self, token):
        return self.vocab.get(token)


TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Get the weather for a specific location",
        "parameters": {"type": "object", "properties": {
            "location": {"type": "string", "description": "The city name"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"], "description": "Temperature unit"}},
            "required": ["location"]}}},
    {"type": "function", "function": {
        "name": "search", "description": "Search the web for information",
        "parameters": {"type": "object", "properties": {
            "query": {"type": "string", "description": "Search query"},
            "num_results": {"type": "integer", "description": "Number of results to return"}},
            "required": ["query"]}}},
]

TOOLS_SECTION = (
    "## Tools\n\nYou have access to a set of tools to help answer the user's question. You can invoke tools by "
    "writing a \"<｜DSML｜tool_calls>\" block like the following:\n\n<｜DSML｜tool_calls>\n"
    "<｜DSML｜invoke name=\"$TOOL_NAME\">\n<｜DSML｜parameter name=\"$PARAMETER_NAME\" string=\"true|false\">"
    "$PARAMETER_VALUE</｜DSML｜parameter>\n...\n</｜DSML｜invoke>\n<｜DSML｜invoke name=\"$TOOL_NAME2\">\n...\n"
    "</｜DSML｜invoke>\n</｜DSML｜tool_calls>\n\nString parameters should be specified as is and set "
    "`string=\"true\"`. For all other types (numbers, booleans, arrays, objects), pass the value in JSON format "
    "and set `string=\"false\"`.\n\nIf thinking_mode is enabled (triggered by <think>), you MUST output your "
    "complete reasoning inside <think>...</think> BEFORE any tool calls or final response.\n\nOtherwise, output "
    "directly after </think> with tool calls or final response.\n\n### Available Tool Schemas\n\n"
    '{"name": "get_weather", "description": "Get the weather for a specific location", "parameters": '
    '{"type": "object", "properties": {"location": {"type": "string", "description": "The city name"}, '
    '"unit": {"type": "string", "enum": ["celsius", "fahrenheit"], "description": "Temperature unit"}}, '
    '"required": ["location"]}}\n'
    '{"name": "search", "description": "Search the web for information", "parameters": {"type": "object", '
    '"properties": {"query": {"type": "string", "description": "Search query"}, "num_results": '
    '{"type": "integer", "description": "Number of results to return"}}, "required": ["query"]}}\n\n'
    "You MUST strictly follow the above defined tool name and parameter schemas to invoke tool calls.\n"
)

MAX_PREAMBLE = (
    "Reasoning Effort: Absolute maximum with no shortcuts permitted.\nYou MUST be very thorough in your "
    "thinking and comprehensively decompose the problem to resolve the root cause, rigorously stress-testing "
    "your logic against all potential paths, edge cases, and adversarial scenarios.\nExplicitly write out your "
    "entire deliberation process, documenting every intermediate step, considered alternative, and rejected "
    "hypothesis to ensure absolutely no assumption is left unchecked.\n\n"
)

CALL = {"id": "call_1", "type": "function",
        "function": {"name": "get_weather", "arguments": '{"location": "Beijing", "unit": "celsius"}'}}
CASE_1 = [  # test_input_1.json, with the tools passed at request level
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": "What's the weather in Beijing?"},
    {"role": "assistant", "content": "", "tool_calls": [CALL],
     "reasoning_content": "The user wants to know the weather in Beijing. I should use the get_weather tool."},
    {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature": 22, "condition": "sunny", "humidity": 45}'},
    {"role": "assistant", "reasoning_content": "Got the weather data. Let me format a nice response.",
     "content": "The weather in Beijing is currently sunny with a temperature of 22°C and 45% humidity."},
]
GOLDEN_1 = (
    f"{BOS}{SYSTEM}\n\n{TOOLS_SECTION}{USER}What's the weather in Beijing?{ASSISTANT}<think>The user wants to "
    "know the weather in Beijing. I should use the get_weather tool.</think>\n\n<｜DSML｜tool_calls>\n"
    "<｜DSML｜invoke name=\"get_weather\">\n<｜DSML｜parameter name=\"location\" string=\"true\">Beijing"
    "</｜DSML｜parameter>\n<｜DSML｜parameter name=\"unit\" string=\"true\">celsius</｜DSML｜parameter>\n"
    f"</｜DSML｜invoke>\n</｜DSML｜tool_calls>{EOS}{USER}<tool_result>{{\"temperature\": 22, \"condition\": "
    f"\"sunny\", \"humidity\": 45}}</tool_result>{ASSISTANT}<think>Got the weather data. Let me format a nice "
    f"response.</think>The weather in Beijing is currently sunny with a temperature of 22°C and 45% humidity.{EOS}"
)
CASE_2 = [  # test_input_2.json
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": "Hello"},
    {"role": "assistant", "reasoning_content": "The user said hello, I should greet back.",
     "content": "Hi there! How can I help you?"},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "reasoning_content": "The user asks about the capital of France. It is Paris.",
     "content": "The capital of France is Paris."},
]
GOLDEN_2 = (
    f"{BOS}{SYSTEM}{USER}Hello{ASSISTANT}</think>Hi there! How can I help you?{EOS}{USER}What is the capital "
    f"of France?{ASSISTANT}<think>The user asks about the capital of France. It is Paris.</think>The capital "
    f"of France is Paris.{EOS}"
)


def enc(messages, thinking=True, effort=None, tools=None, **kw):
    return encode_messages(messages, thinking=thinking, reasoning_effort=effort, tools=tools, **kw)


def test_golden_case_1_thinking_with_tools():
    assert enc(CASE_1, tools=TOOLS, add_generation_prompt=False) == GOLDEN_1


def test_golden_case_2_drops_historical_reasoning():
    assert enc(CASE_2, add_generation_prompt=False) == GOLDEN_2
    assert "The user said hello" not in GOLDEN_2


def test_golden_case_2_generation_prompt_and_reasoning_alias():
    msgs = [dict(m) for m in CASE_2[:-1]]
    msgs[2]["reasoning"] = msgs[2].pop("reasoning_content")  # vLLM's newer field name
    assert enc(msgs) == GOLDEN_2[:GOLDEN_2.rindex("<think>") + len("<think>")]
    assert "The user said hello" in enc(msgs, drop_thinking=False)


def test_three_reasoning_modes_one_user_message():
    msgs = [{"role": "user", "content": "What is 2+2?"}]
    assert enc(msgs, thinking=False) == f"{BOS}{USER}What is 2+2?{ASSISTANT}</think>"
    assert enc(msgs) == enc(msgs, effort="high") == f"{BOS}{USER}What is 2+2?{ASSISTANT}<think>"
    assert enc(msgs, effort="max") == f"{BOS}{MAX_PREAMBLE}{USER}What is 2+2?{ASSISTANT}<think>"
    with pytest.raises(ValueError, match="requires thinking"):
        enc(msgs, thinking=False, effort="max")


def test_chat_mode_history():
    got = enc(CASE_2, thinking=False, add_generation_prompt=False)
    assert got == GOLDEN_2.replace("<think>The user asks about the capital of France. It is Paris.</think>",
                                   "</think>")


def test_developer_head_gets_tools_like_reference_case_3():
    msgs = [{"role": "developer", "content": "Q?"},
            {"role": "assistant", "content": "", "reasoning_content": "R1", "tool_calls": [
                {"type": "function", "function": {"name": "search", "arguments": '{"query": "x"}'}}]},
            {"role": "tool", "content": "[0]"}]
    assert enc(msgs, tools=TOOLS) == (
        f"{BOS}{USER}Q?\n\n{TOOLS_SECTION}{ASSISTANT}<think>R1</think>\n\n<｜DSML｜tool_calls>\n"
        "<｜DSML｜invoke name=\"search\">\n<｜DSML｜parameter name=\"query\" string=\"true\">x</｜DSML｜parameter>\n"
        f"</｜DSML｜invoke>\n</｜DSML｜tool_calls>{EOS}{USER}<tool_result>[0]</tool_result>{ASSISTANT}<think>")


def test_tools_without_system_and_response_format():
    msgs = [{"role": "user", "content": "hi"}]
    assert enc(msgs, tools=TOOLS[:1]).startswith(f"{BOS}\n\n## Tools\n\n")
    rf = {"type": "json_object"}
    assert enc([{"role": "system", "content": "S"}] + msgs, response_format=rf) == (
        f"{BOS}S\n\n## Response Format:\n\nYou MUST strictly adhere to the following schema to reply:\n"
        f'{{"type": "json_object"}}{USER}hi{ASSISTANT}<think>')
    assert enc(msgs, response_format={"type": "text"}) == enc(msgs)


def test_parallel_tool_results_sorted_and_merged_with_user_text():
    calls = [{"id": i, "type": "function", "function": {"name": "f", "arguments": a}}
             for i, a in (("a", '{"n": 1, "flag": true, "l": [1, "x"]}'), ("b", "not json"))]
    msgs = [{"role": "user", "content": "go"}, {"role": "assistant", "content": "ok", "tool_calls": calls},
            {"role": "tool", "tool_call_id": "b", "content": [{"type": "text", "text": "B1"},
                                                              {"type": "text", "text": "B2"}]},
            {"role": "tool", "tool_call_id": "a", "content": "A"}, {"role": "user", "content": "more"}]
    got = enc(msgs, thinking=False)
    assert got.endswith(
        'ok\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name="f">\n<｜DSML｜parameter name="n" string="false">1'
        '</｜DSML｜parameter>\n<｜DSML｜parameter name="flag" string="false">true</｜DSML｜parameter>\n'
        '<｜DSML｜parameter name="l" string="false">[1, "x"]</｜DSML｜parameter>\n</｜DSML｜invoke>\n'
        '<｜DSML｜invoke name="f">\n<｜DSML｜parameter name="arguments" string="true">not json</｜DSML｜parameter>\n'
        f"</｜DSML｜invoke>\n</｜DSML｜tool_calls>{EOS}{USER}<tool_result>A</tool_result>\n\n"
        f"<tool_result>B1\n\nB2</tool_result>\n\nmore{ASSISTANT}</think>")


def test_assistant_prefill_is_continued():
    base = [{"role": "user", "content": "Hi"}]
    assert enc(base + [{"role": "assistant", "content": "Hel"}]) == \
        f"{BOS}{USER}Hi{ASSISTANT}<think></think>Hel"
    assert enc(base + [{"role": "assistant", "reasoning_content": "Thinking", "content": None}]) == \
        f"{BOS}{USER}Hi{ASSISTANT}<think>Thinking"
    assert enc(base + [{"role": "assistant", "content": "Hel"}], thinking=False) == \
        f"{BOS}{USER}Hi{ASSISTANT}</think>Hel"
    assert enc(base, add_generation_prompt=False) == f"{BOS}{USER}Hi"


def test_content_parts_and_consecutive_users():
    msgs = [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            {"role": "user", "content": "c"}]
    assert enc(msgs, thinking=False) == f"{BOS}{USER}a\nb\n\nc{ASSISTANT}</think>"


@pytest.mark.parametrize("msgs, match", [
    ([], "non-empty"),
    ([{"role": "bot", "content": "x"}], "unknown role 'bot'"),
    ([{"role": "user", "content": "x"}, {"role": "tool", "content": "r"}], "without a preceding assistant"),
    ([{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}, {"role": "tool", "content": "r"}],
     "without a preceding assistant"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "u"}}]}], "'image_url'"),
    ([{"role": "developer", "content": ""}], "developer message needs"),
    ([{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": [CALL]},
      {"role": "tool", "tool_call_id": "nope", "content": "r"}], "matches none"),
    ([{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": [{"type": "function"}]}],
     r"tool_calls\[0\]"),
    ([{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": [CALL]}], "cannot continue"),
])
def test_validation_errors(msgs, match):
    with pytest.raises(ValueError, match=match):
        enc(msgs)


def test_bad_effort_and_tools():
    with pytest.raises(ValueError, match="reasoning_effort"):
        enc([{"role": "user", "content": "x"}], effort="medium")
    with pytest.raises(ValueError, match=r"tools\[0\]"):
        enc([{"role": "user", "content": "x"}], tools=[{"type": "function"}])


def test_special_tokens_from_tokenizer():
    sp = SpecialTokens.from_tokenizer(DictTokenizer(VOCAB))
    assert (sp.bos, sp.bos_id, sp.eos_id, sp.think_end_id, sp.dsml) == (BOS, 0, 1, 128822, "｜DSML｜")
    assert sp.tool_calls_start == "<｜DSML｜tool_calls>"
    partial = {k: v for k, v in VOCAB.items() if k not in ("</think>", "｜DSML｜")}
    with pytest.raises(ValueError, match="</think>.*｜DSML｜"):
        SpecialTokens.from_tokenizer(DictTokenizer(partial))
