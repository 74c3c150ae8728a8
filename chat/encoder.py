"""DeepSeek-V4 prompt rendering: OpenAI-shaped chat messages -> prompt text.

No Jinja template ships with V4; the normative format is the reference Python encoder
(`encoding/encoding_dsv4.py` in the HF repo, architecture.md §6.2). This module reproduces its
output byte for byte for the roles an OpenAI client can send (system, developer, user, assistant,
tool). `render_messages` returns it as `(text, is_template)` segments: only template segments may
hold special tokens; everything a client wrote (any role's content, reasoning, tool names, arguments,
results and schemas, the response format) is content, which `Tokenizer.encode_segments` never turns
into a special token, so a message cannot forge turns, reasoning or tool calls. `encode_messages`
is the same prompt as one string.

Layout: BOS, [Think-Max preamble], system text (+ tools block, + response-format block),
`<｜User｜>` turns, then `<｜Assistant｜>` followed by `<think>` (thinking, current turn) or `</think>`
(chat mode, or a historical turn whose reasoning was dropped). Assistant turns are
`{reasoning}</think>{content}[\\n\\n DSML tool calls]<EOS>`. Tool results become
`<tool_result>…</tool_result>` blocks merged into a user turn, ordered by the assistant's calls.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
USER = "<｜User｜>"
ASSISTANT = "<｜Assistant｜>"
THINK_START = "<think>"
THINK_END = "</think>"
DSML = "｜DSML｜"  # one special token; all tool-call markup is built around it

# Prompt texts below are model-facing constants and must stay verbatim.
REASONING_EFFORT_MAX = (
    "Reasoning Effort: Absolute maximum with no shortcuts permitted.\n"
    "You MUST be very thorough in your thinking and comprehensively decompose the problem to resolve "
    "the root cause, rigorously stress-testing your logic against all potential paths, edge cases, "
    "and adversarial scenarios.\n"
    "Explicitly write out your entire deliberation process, documenting every intermediate step, "
    "considered alternative, and rejected hypothesis to ensure absolutely no assumption is left "
    "unchecked.\n\n"
)

_TOOLS_BLOCK = (
    "## Tools\n\n"
    "You have access to a set of tools to help answer the user's question. You can invoke tools by "
    'writing a "<{D}tool_calls>" block like the following:\n\n'
    "<{D}tool_calls>\n"
    '<{D}invoke name="$TOOL_NAME">\n'
    '<{D}parameter name="$PARAMETER_NAME" string="true|false">$PARAMETER_VALUE</{D}parameter>\n'
    "...\n"
    "</{D}invoke>\n"
    '<{D}invoke name="$TOOL_NAME2">\n'
    "...\n"
    "</{D}invoke>\n"
    "</{D}tool_calls>\n\n"
    'String parameters should be specified as is and set `string="true"`. For all other types '
    '(numbers, booleans, arrays, objects), pass the value in JSON format and set `string="false"`.\n\n'
    "If thinking_mode is enabled (triggered by {TS}), you MUST output your complete reasoning inside "
    "{TS}...{TE} BEFORE any tool calls or final response.\n\n"
    "Otherwise, output directly after {TE} with tool calls or final response.\n\n"
    "### Available Tool Schemas\n\n"
    "{SCHEMAS}\n\n"
    "You MUST strictly follow the above defined tool name and parameter schemas to invoke tool calls.\n"
)

_RESPONSE_FORMAT_BLOCK = (
    "## Response Format:\n\nYou MUST strictly adhere to the following schema to reply:\n{SCHEMA}"
)

ROLES = ("system", "developer", "user", "assistant", "tool")


@dataclass(frozen=True)
class SpecialTokens:
    """Text and vocabulary id of every special token the server emits or parses."""

    bos: str  # begin-of-sentence text; every prompt starts with it
    bos_id: int
    eos: str  # end-of-sentence text; ends every assistant turn and stops generation
    eos_id: int
    user: str  # opens a user (or developer / tool-result) turn
    user_id: int
    assistant: str  # opens an assistant turn
    assistant_id: int
    think_start: str  # opens reasoning (prompt ends with it in thinking mode)
    think_start_id: int
    think_end: str  # closes reasoning; alone after <｜Assistant｜> means "no reasoning"
    think_end_id: int
    dsml: str  # the `｜DSML｜` marker token inside tool-call tags
    dsml_id: int

    @classmethod
    def from_tokenizer(cls, tok: Any) -> "SpecialTokens":
        """Look every token up with `tok.token_to_id`; raise ValueError naming any that are missing."""
        texts = {"bos": BOS, "eos": EOS, "user": USER, "assistant": ASSISTANT,
                 "think_start": THINK_START, "think_end": THINK_END, "dsml": DSML}
        ids = {name: tok.token_to_id(text) for name, text in texts.items()}
        missing = [texts[name] for name, i in ids.items() if not isinstance(i, int)]
        if missing:
            raise ValueError(f"tokenizer lacks DeepSeek-V4 special tokens: {', '.join(missing)}")
        return cls(**texts, **{f"{name}_id": i for name, i in ids.items()})

    @property
    def tool_calls_start(self) -> str:
        return f"<{self.dsml}tool_calls>"


def _to_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _text(content: Any, where: str, sep: str = "\n") -> str:
    """Flatten OpenAI content (None, str, or a list of text parts) to a string."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise ValueError(f"{where}: content must be a string or a list of text parts")
    texts = []
    for part in content:
        if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            raise ValueError(f"{where}: unsupported content part {kind!r} (only text parts are accepted)")
        texts.append(part["text"])
    return sep.join(texts)


def _tool_arguments(raw: Any, where: str) -> dict:
    """Decode a tool call's arguments; non-JSON strings are wrapped as {"arguments": raw} like the encoder."""
    if raw is None:
        return {}
    if isinstance(raw, dict):
        return raw
    if not isinstance(raw, str):
        raise ValueError(f"{where}: function.arguments must be a JSON string")
    try:
        args = json.loads(raw)
    except json.JSONDecodeError:
        return {"arguments": raw}
    if not isinstance(args, dict):
        raise ValueError(f"{where}: function.arguments must encode a JSON object")
    return args


Segment = tuple[str, bool]  # (text, is_template): only template text may hold special tokens


def _t(text: str) -> Segment:
    return (text, True)


def _c(text: str) -> Segment:
    return (text, False)


def _render_tool_calls(calls: list[tuple[str, str, dict]]) -> list[Segment]:
    out = [_t(f"\n\n<{DSML}tool_calls>\n")]
    for i, (_, name, args) in enumerate(calls):
        out += [_t(("\n" if i else "") + f'<{DSML}invoke name="'), _c(name), _t('">\n')]
        for j, (key, v) in enumerate(args.items()):
            out += [_t(("\n" if j else "") + f'<{DSML}parameter name="'), _c(key),
                    _t(f'" string="{"true" if isinstance(v, str) else "false"}">'),
                    _c(v if isinstance(v, str) else _to_json(v)), _t(f"</{DSML}parameter>")]
        out.append(_t(f"\n</{DSML}invoke>"))
    out.append(_t(f"\n</{DSML}tool_calls>"))
    return out


def _render_tools(tools: list[dict]) -> list[Segment]:
    if not isinstance(tools, list):
        raise ValueError("tools must be a list of function tools")
    schemas = []
    for i, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(fn, dict) or tool.get("type", "function") != "function" or not fn.get("name"):
            raise ValueError(f"tools[{i}]: expected {{'type': 'function', 'function': {{'name': ...}}}}")
        schemas.append(_to_json(fn))
    head, tail = _TOOLS_BLOCK.split("{SCHEMAS}")
    marks = dict(D=DSML, TS=THINK_START, TE=THINK_END)
    return [_t(head.format(**marks)), _c("\n".join(schemas)), _t(tail.format(**marks))]


def _normalize(messages: list[dict]) -> list[dict]:
    """Validate OpenAI messages and convert them to internal turns; tool results merge into user turns."""
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages must be a non-empty list")
    turns: list[dict] = []
    open_calls: list[tuple[str, str, dict]] | None = None  # calls a following tool message may answer
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise ValueError(f"{where}: must be an object")
        role = msg.get("role")
        if role not in ROLES:
            raise ValueError(f"{where}: unknown role {role!r}; expected one of {', '.join(ROLES)}")
        if role == "tool":
            if open_calls is None:
                raise ValueError(f"{where}: tool message without a preceding assistant message with tool_calls")
            call_id = msg.get("tool_call_id") or ""
            ids = [c[0] for c in open_calls]
            if call_id and any(ids) and call_id not in ids:
                raise ValueError(f"{where}: tool_call_id {call_id!r} matches none of the assistant's tool calls")
            order = ids.index(call_id) if call_id in ids else 0
            block = ("tool", order, _text(msg.get("content"), where, sep="\n\n"))
        else:
            open_calls = None
        if role in ("user", "tool"):
            if role == "user":
                block = ("text", 0, _text(msg.get("content"), where))
            if turns and turns[-1]["role"] == "user":  # the encoder merges adjacent user/tool turns
                turns[-1]["blocks"].append(block)
            else:
                turns.append({"role": "user", "blocks": [block]})
            continue
        turn = {"role": role, "content": _text(msg.get("content"), where)}
        if role == "developer" and not turn["content"]:
            raise ValueError(f"{where}: developer message needs non-empty content")
        if role == "assistant":
            reasoning = msg.get("reasoning_content")
            if reasoning is None:
                reasoning = msg.get("reasoning")
            turn["reasoning"] = _text(reasoning, f"{where}.reasoning_content")
            calls = []
            for j, tc in enumerate(msg.get("tool_calls") or []):
                cw = f"{where}.tool_calls[{j}]"
                fn = tc.get("function") if isinstance(tc, dict) else None
                if not isinstance(fn, dict) or tc.get("type", "function") != "function" or not fn.get("name"):
                    raise ValueError(f"{cw}: expected {{'type': 'function', 'function': {{'name', 'arguments'}}}}")
                calls.append((tc.get("id") or "", fn["name"], _tool_arguments(fn.get("arguments"), cw)))
            turn["tool_calls"] = calls
            open_calls = calls or None
        turns.append(turn)
    for turn in turns:  # tool results follow the order of the assistant's calls (stable sort)
        if turn["role"] == "user":
            tools_sorted = iter(sorted((b for b in turn["blocks"] if b[0] == "tool"), key=lambda b: b[1]))
            turn["blocks"] = [next(tools_sorted) if b[0] == "tool" else b for b in turn["blocks"]]
    return turns


def encode_messages(messages: list[dict], **kwargs: Any) -> str:
    """The prompt of `render_messages` as one string (special tokens spelled out)."""
    return "".join(text for text, _ in render_messages(messages, **kwargs))


def render_messages(messages: list[dict], *, thinking: bool, reasoning_effort: str | None,
                    tools: list[dict] | None, response_format: dict | None = None,
                    add_generation_prompt: bool = True, drop_thinking: bool = True) -> list[Segment]:
    """Render OpenAI-shaped `messages` into the exact DeepSeek-V4 prompt, as segments.

    `reasoning_effort` is None, "high" (renders like None) or "max" (Think-Max preamble; needs
    `thinking`). Request `tools` / `response_format` are attached to a leading system/developer
    message, or to a new empty system message (as vLLM does). Defining tools keeps historical
    reasoning (drop_thinking is forced off), as in the reference. A trailing assistant message is a
    prefill to continue when `add_generation_prompt` is set (rendered without EOS; with reasoning
    only, its `</think>` is left open); otherwise it is rendered complete.
    """
    if reasoning_effort not in (None, "high", "max"):
        raise ValueError(f"reasoning_effort must be None, 'high' or 'max', got {reasoning_effort!r}")
    if reasoning_effort == "max" and not thinking:
        raise ValueError("reasoning_effort='max' requires thinking=True")
    if response_format is not None and not isinstance(response_format, dict):
        raise ValueError("response_format must be an object")
    turns = _normalize(messages)
    if tools or (response_format and response_format.get("type") != "text"):
        if turns[0]["role"] not in ("system", "developer"):
            turns.insert(0, {"role": "system", "content": ""})
        head = turns[0]
        head["pinned"] = True  # carries request-level instructions: never dropped from history
        extra: list[Segment] = []
        if tools:
            extra += [_t("\n\n"), *_render_tools(tools)]
        if response_format and response_format.get("type") != "text":
            block = _RESPONSE_FORMAT_BLOCK.split("{SCHEMA}")[0]
            extra += [_t("\n\n" + block), _c(_to_json(response_format))]
        head["extra"] = extra
    drop = drop_thinking and not tools
    last_user = max((i for i, t in enumerate(turns) if t["role"] in ("user", "developer")), default=-1)
    if thinking and drop:  # the reference also drops developer turns from history here
        turns = [t for i, t in enumerate(turns) if i >= last_user or t["role"] != "developer" or t.get("pinned")]
        last_user = max((i for i, t in enumerate(turns) if t["role"] in ("user", "developer")), default=-1)
    continuing = add_generation_prompt and turns[-1]["role"] == "assistant"
    if continuing and turns[-1]["tool_calls"]:
        raise ValueError("cannot continue a trailing assistant message that has tool_calls")

    out = [_t(BOS)]
    if thinking and reasoning_effort == "max":
        out.append(_t(REASONING_EFFORT_MAX))
    for i, turn in enumerate(turns):
        role, is_last = turn["role"], i == len(turns) - 1
        if role in ("system", "developer"):
            out += [_t(USER if role == "developer" else ""), _c(turn["content"]), *turn.get("extra", ())]
        elif role == "user":
            out.append(_t(USER))
            for j, (kind, _, text) in enumerate(turn["blocks"]):
                sep = "\n\n" if j else ""
                out += [_t(sep), _c(text)] if kind == "text" else \
                    [_t(sep + "<tool_result>"), _c(text), _t("</tool_result>")]
        else:
            keep_reasoning = thinking and (not drop or i > last_user)
            if is_last and continuing:
                if keep_reasoning:
                    out += [_c(turn["reasoning"]), _t(THINK_END if turn["content"] else "")]
                out.append(_c(turn["content"]))
            else:
                if keep_reasoning:
                    out += [_c(turn["reasoning"]), _t(THINK_END)]
                out.append(_c(turn["content"]))
                if turn["tool_calls"]:
                    out += _render_tool_calls(turn["tool_calls"])
                out.append(_t(EOS))
        next_role = None if is_last else turns[i + 1]["role"]
        opens_reply = next_role == "assistant" or (is_last and add_generation_prompt)
        if role in ("user", "developer") and opens_reply:
            out.append(_t(ASSISTANT + (THINK_START if thinking and (not drop or i >= last_user) else THINK_END)))
    return [seg for seg in out if seg[0]]
