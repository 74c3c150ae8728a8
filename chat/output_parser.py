"""Split a DeepSeek-V4 completion into reasoning, content and DSML tool calls.

Input is detokenized completion text with special tokens kept. Grammar (architecture.md §6.3):

    [reasoning </think>]  content  [\\n\\n<｜DSML｜tool_calls> invokes </｜DSML｜tool_calls>]  <EOS>

Rules shared by the one-shot and the streaming parser (so both give identical results for any
chunking):
* Everything from the first EOS on is ignored.
* Thinking mode: text before the first `</think>` is reasoning; without `</think>` (cut off) all
  text is reasoning. A stray `<think>` is dropped from reasoning and content, as is `</think>`
  from content, and so are stray BOS / `<｜User｜>` / `<｜Assistant｜>` / `｜DSML｜` tokens that are not
  part of well-formed tool-call markup (special tokens are never user-visible text).
* The tool-calls tag ends the content; one blank line right before it belongs to the markup.
  Each well-formed `<｜DSML｜invoke>` becomes a ToolCall. At the first malformed element, or an
  invoke cut off by the end of text, the raw text from the end of the last good element onward
  (the opening tag too if no invoke succeeded yet) is kept verbatim as content. Leftover
  whitespace between tags is markup and is dropped; after the closing tag, content resumes.
* Cut by a length limit (`cut=True`, finish_reason "length"): an unfinished tool-call block (a
  well-formed prefix: the opening tag, an unclosed invoke) and a partial opening tag ending the
  content are markup, dropped; the calls completed before the cut are kept, the cut one is not.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass

from chat.encoder import SpecialTokens


@dataclass
class ToolCall:
    id: str  # generated "call_<hex>" id, unique per call
    name: str  # function name from the invoke tag
    arguments_json: str  # JSON object text of the parameters


@dataclass
class ParsedMessage:
    reasoning: str | None  # reasoning text; None when the request was not in thinking mode
    content: str  # user-visible answer text
    tool_calls: list[ToolCall]  # calls in emission order


@dataclass
class ToolCallDelta:
    index: int  # position of this call in the message's tool_calls
    id: str | None  # set on the first delta of a call
    name: str | None  # set on the first delta of a call
    arguments: str  # JSON text fragment (here always the whole object, sent when the invoke closes)


@dataclass
class Delta:
    reasoning: str | None = None  # new reasoning text
    content: str | None = None  # new content text
    tool_call: ToolCallDelta | None = None  # a tool call (or part of one)


class _Grammar:
    """Marker strings and the invoke regexes for one set of special tokens."""

    def __init__(self, sp: SpecialTokens):
        d = sp.dsml
        self.eos, self.think_start, self.think_end = sp.eos, sp.think_start, sp.think_end
        self.dsml = d
        self.tc_open, self.tc_close = f"<{d}tool_calls>", f"</{d}tool_calls>"
        self.invoke_open, self.invoke_close = f"<{d}invoke", f"</{d}invoke>"
        self.content_markers = (self.tc_open, self.think_start, self.think_end)
        self.stray = (sp.bos, sp.user, sp.assistant, d)  # special tokens removed from visible text
        self.invoke_head = re.compile(rf'<{re.escape(d)}invoke name="([^"\n]+)">')
        self.param = re.compile(rf'<{re.escape(d)}parameter name="([^"\n]+)" string="(true|false)">(.*?)'
                                rf"</{re.escape(d)}parameter>", re.DOTALL)

    def trim_cut(self, text: str) -> str:
        """`text` without a trailing partial tool-calls opening tag: one holding the DSML token, or
        a bare "<" right after the blank line that leads the markup (dropped with it)."""
        at = text.rfind("<")
        if at < 0 or not self.tc_open.startswith(text[at:]):
            return text
        lead = text[:at].endswith("\n\n")
        if len(text) - at == 1 and not lead:
            return text
        return text[:at - 2] if lead else text[:at]

    def is_markup_tail(self, rest: str) -> bool:
        """True if the text left in a tool-call block is only whitespace and/or a cut-off closing tag."""
        return self.tc_close.startswith(rest.strip())

    def parse_invoke(self, block: str) -> tuple[str, str] | None:
        """Parse one complete `<invoke …>…</invoke>` block into (name, arguments JSON), or None."""
        end = len(block) - len(self.invoke_close)
        head = self.invoke_head.match(block, 0, end)
        if not head:
            return None
        args: dict = {}
        pos = head.end()
        while True:
            pos += len(block[pos:end]) - len(block[pos:end].lstrip())
            if pos == end:
                return head.group(1), json.dumps(args, ensure_ascii=False)
            m = self.param.match(block, pos, end)
            if not m or m.group(1) in args:
                return None
            key, is_str, raw = m.groups()
            if is_str == "true":
                args[key] = raw
            else:
                try:
                    args[key] = json.loads(raw)
                except ValueError:
                    args[key] = raw
            pos = m.end()


def _earliest(text: str, markers: tuple[str, ...], start: int = 0) -> tuple[int, str] | None:
    hits = [(i, m) for m in markers if (i := text.find(m, start)) >= 0]
    return min(hits) if hits else None


def _new_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def _strip(text: str | None, tokens: tuple[str, ...]) -> str | None:
    if text is None:
        return None
    for t in tokens:
        text = text.replace(t, "")
    return text


def parse_completion(text: str, *, thinking: bool, special: SpecialTokens, cut: bool = False) -> ParsedMessage:
    """Parse a whole completion (EOS optional) into reasoning, content and tool calls; `cut`: the
    text was cut by a length limit (an unfinished tool call is dropped, never shown as content)."""
    g = _Grammar(special)
    msg = _parse(text, thinking, g, cut)
    return ParsedMessage(_strip(msg.reasoning, g.stray), _strip(msg.content, g.stray), msg.tool_calls)


def _parse(text: str, thinking: bool, g: _Grammar, truncated: bool = False) -> ParsedMessage:
    if (cut := text.find(g.eos)) >= 0:
        text = text[:cut]
    reasoning = None
    if thinking:
        end = text.find(g.think_end)
        head, text = (text, "") if end < 0 else (text[:end], text[end + len(g.think_end):])
        reasoning = head.replace(g.think_start, "")
    content: list[str] = []
    calls: list[ToolCall] = []
    pos = 0
    while (hit := _earliest(text, g.content_markers, pos)) is not None:
        at, marker = hit
        piece = text[pos:at]
        pos = at + len(marker)
        if marker != g.tc_open:
            content.append(piece)
            continue
        lead = 2 if piece.endswith("\n\n") else 0
        content.append(piece[:len(piece) - lead])
        pending = at - lead  # start of raw text not yet accounted for by a good element
        while True:
            pos += len(text) - pos - len(text[pos:].lstrip())
            if text.startswith(g.tc_close, pos):
                pos += len(g.tc_close)
                if not text[pos:].strip():  # only whitespace left after the block: markup
                    pos = len(text)
                break
            close = text.find(g.invoke_close, pos) if text.startswith(g.invoke_open, pos) else -1
            call = g.parse_invoke(text[pos:close + len(g.invoke_close)]) if close >= 0 else None
            if call is None:  # malformed, unterminated, or end of text: keep the raw rest
                rest = text[pending:]
                unfinished = close < 0 and (text.startswith(g.invoke_open, pos) or g.invoke_open.startswith(text[pos:]))
                content.append("" if g.is_markup_tail(rest) or (truncated and unfinished) else rest)
                return ParsedMessage(reasoning, "".join(content), calls)
            calls.append(ToolCall(_new_id(), *call))
            pos = pending = close + len(g.invoke_close)
    content.append(g.trim_cut(text[pos:]) if truncated else text[pos:])
    return ParsedMessage(reasoning, "".join(content), calls)


class StreamingParser:
    """Incremental parser: `feed` text deltas, then `finish` once; returns Delta lists.

    Text that could still become a marker (a suffix matching a marker's prefix) is held back, and
    tool-call markup is buffered until each invoke closes, so no markup or partial special token
    reaches reasoning, content or arguments whatever the chunk boundaries.
    """

    def __init__(self, thinking: bool, special: SpecialTokens):
        self._g = _Grammar(special)
        self._state = "reasoning" if thinking else "content"  # reasoning|content|tools|invoke|raw
        self._buf = ""  # received text not yet emitted or consumed
        self._pending = ""  # consumed tool markup that must become content if the block turns out malformed
        self._num_calls = 0
        self._after_block = False  # just closed a tool-call block; hold whitespace until more text
        self._done = False  # EOS seen or finish() called
        g = self._g
        self._strippers = {"reasoning": _TokenStripper(g.stray), "content": _TokenStripper(g.stray)}
        self._holds = {"reasoning": (g.think_end, g.think_start, g.eos),
                       "content": ("\n\n" + g.tc_open, *g.content_markers, g.eos),
                       "raw": (g.eos,)}

    def feed(self, delta_text: str) -> list[Delta]:
        if self._done:
            return []
        self._buf += delta_text
        if (cut := self._buf.find(self._g.eos)) < 0:
            return self._strip(self._process())
        self._buf = self._buf[:cut]
        return self._strip(self._process()) + self.finish()

    def finish(self, cut: bool = False) -> list[Delta]:
        """Flush held-back text at end of stream (EOS, or `cut` off by a length limit: an unfinished
        tool call is dropped, as in `parse_completion`)."""
        if self._done:
            return []
        out = self._strip(self._finish(cut))
        tail = [Delta(**{f: t}) for f, st in self._strippers.items() if (t := st.flush())]
        return [d for d in out + tail if d.reasoning or d.content or d.tool_call]

    def _strip(self, deltas: list[Delta]) -> list[Delta]:
        """Remove stray special tokens from reasoning/content, holding back partial ones."""
        out = []
        for d in deltas:
            if d.content and self._strippers["reasoning"].pending:  # reasoning is over: release it
                out.append(Delta(reasoning=self._strippers["reasoning"].flush()))
            if d.reasoning:
                d = Delta(reasoning=self._strippers["reasoning"].feed(d.reasoning))
            elif d.content:
                d = Delta(content=self._strippers["content"].feed(d.content))
            out.append(d)
        return [d for d in out if d.reasoning or d.content or d.tool_call]

    def _finish(self, cut: bool = False) -> list[Delta]:
        self._done = True
        state, text, self._buf = self._state, self._buf, ""
        if state == "reasoning":
            return [Delta(reasoning=text)] if text else []
        if cut and state in ("tools", "invoke"):
            return []  # a tool-call block cut before it closed: markup, and no call
        if cut and state == "content":
            text = self._g.trim_cut(text)
        if state == "content" and self._after_block and not text.strip():
            return []  # only whitespace followed the closing tag: markup
        if state == "tools" and self._g.is_markup_tail(self._pending + text):
            return []  # whitespace and/or a cut-off closing tag after good invokes
        text = self._pending + text if state in ("tools", "invoke") else text
        return [Delta(content=text)] if text else []

    def _hold(self, markers: tuple[str, ...]) -> int:
        """Length of the longest suffix of the buffer that is a prefix of some marker."""
        buf = self._buf
        for i in range(max(0, len(buf) - max(map(len, markers))), len(buf)):
            if any(m.startswith(buf[i:]) for m in markers):
                return len(buf) - i
        return 0

    def _process(self) -> list[Delta]:
        g, out = self._g, []
        while True:
            state, buf = self._state, self._buf
            if state == "content" and self._after_block:
                tail = buf[:len(buf) - self._hold(self._holds["content"])]
                if _earliest(buf, g.content_markers) is None and not tail.strip():
                    break  # only whitespace (and maybe the start of a marker) so far
                self._after_block = False
            if state in ("reasoning", "content"):
                hit = _earliest(buf, (g.think_end, g.think_start) if state == "reasoning" else g.content_markers)
                if hit is None:
                    keep = self._hold(self._holds[state])
                    out.append(Delta(**{state: buf[:len(buf) - keep]}))
                    self._buf = buf[len(buf) - keep:]
                    break
                at, marker = hit
                piece, self._buf = buf[:at], buf[at + len(marker):]
                if marker == g.tc_open:
                    lead = 2 if piece.endswith("\n\n") else 0
                    piece, self._pending, self._state = piece[:at - lead], piece[at - lead:] + marker, "tools"
                elif marker == g.think_end and state == "reasoning":
                    self._state = "content"
                out.append(Delta(**{state: piece}))
            elif state == "tools":
                rest = buf.lstrip()
                self._pending += buf[:len(buf) - len(rest)]
                self._buf = rest
                if rest.startswith(g.tc_close):
                    self._buf, self._pending, self._state = rest[len(g.tc_close):], "", "content"
                    self._after_block = True
                elif rest.startswith(g.invoke_open):
                    self._state = "invoke"
                elif g.invoke_open.startswith(rest) or g.is_markup_tail(rest[:len(rest) - self._hold((g.eos,))]):
                    break  # empty, a partial tag, or maybe a cut-off closing tag before EOS: wait
                else:
                    self._to_raw(out)
            elif state == "invoke":
                close = buf.find(g.invoke_close)
                if close < 0:
                    break
                end = close + len(g.invoke_close)
                call = g.parse_invoke(buf[:end])
                if call is None:
                    self._to_raw(out)
                    continue
                name, args = call
                out.append(Delta(tool_call=ToolCallDelta(self._num_calls, _new_id(), name, args)))
                self._num_calls += 1
                self._buf, self._pending, self._state = buf[end:], "", "tools"
            else:  # raw: malformed markup, everything is content
                keep = self._hold(self._holds["raw"])
                out.append(Delta(content=buf[:len(buf) - keep]))
                self._buf = buf[len(buf) - keep:]
                break
        return [d for d in out if d.reasoning or d.content or d.tool_call]

    def _to_raw(self, out: list[Delta]) -> None:
        """Give up on the tool-call block: its raw text so far becomes content."""
        out.append(Delta(content=self._pending))
        self._pending, self._state = "", "raw"


class _TokenStripper:
    """Streaming removal of whole token strings from text; a suffix that could start one is held."""

    def __init__(self, tokens: tuple[str, ...]):
        self.tokens = tokens
        self.pending = ""

    def feed(self, text: str) -> str:
        buf = _strip(self.pending + text, self.tokens)
        keep = 0
        for i in range(max(0, len(buf) - max(map(len, self.tokens))), len(buf)):
            if any(t.startswith(buf[i:]) for t in self.tokens):
                keep = len(buf) - i
                break
        self.pending = buf[len(buf) - keep:]
        return buf[:len(buf) - keep]

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out
