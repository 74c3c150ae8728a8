"""A regular-expression parser for guided decoding: Python `re` syntax (the regular subset) -> the
automaton AST. The whole output must match (as `re.fullmatch`); `^` / `$` at the ends are accepted
and mean nothing more.

Supported: literals and escapes (`\\n \\t \\r \\f \\v \\0 \\xHH \\uHHHH \\U0010FFFF`, escaped metacharacters),
`.` (any character but newline), classes `[...]` / `[^...]` with ranges, `\\d \\w \\s` and their negations
(ASCII meanings), groups `( )`, `(?: )`, `(?P<name> )`, alternation, and the quantifiers
`* + ? {m} {m,} {m,n}` (lazy / possessive suffixes allowed: they do not change the language).
Anything else (backreferences, lookaround, `\\b`, inline flags) is a ValueError naming it.
"""

from __future__ import annotations

from .automaton import MAX_CODE_POINT, negate_ranges, normalize_ranges

MAX_REPEAT = 10_000

DIGIT = [(48, 57)]
WORD = [(48, 57), (65, 90), (95, 95), (97, 122)]
SPACE = [(9, 13), (32, 32)]
_CLASS_ESCAPES = {"d": DIGIT, "w": WORD, "s": SPACE}
_SIMPLE_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "f": "\f", "v": "\v", "0": "\0", "a": "\a"}


class _Parser:
    def __init__(self, pattern: str) -> None:
        self.p, self.i = pattern, 0

    def error(self, what: str) -> ValueError:
        return ValueError(f"regex {self.p!r}: {what} at position {self.i}")

    def peek(self) -> str | None:
        return self.p[self.i] if self.i < len(self.p) else None

    def take(self) -> str:
        if self.i >= len(self.p):
            raise self.error("unexpected end of pattern")
        c = self.p[self.i]
        self.i += 1
        return c

    def parse(self) -> tuple:
        if self.peek() == "^":
            self.i += 1
        node = self.alternation()
        if self.i != len(self.p):
            raise self.error("unbalanced ')'")
        return node

    def alternation(self) -> tuple:
        branches = [self.sequence()]
        while self.peek() == "|":
            self.i += 1
            branches.append(self.sequence())
        return branches[0] if len(branches) == 1 else ("alt", branches)

    def sequence(self) -> tuple:
        items = []
        while self.peek() not in (None, "|", ")"):
            if self.peek() == "$" and self.i == len(self.p) - 1:
                self.i += 1
                break
            items.append(self.quantified(self.atom()))
        return ("seq", items)

    def quantified(self, node: tuple) -> tuple:
        while True:
            c = self.peek()
            if c == "*":
                lo, hi = 0, None
            elif c == "+":
                lo, hi = 1, None
            elif c == "?":
                lo, hi = 0, 1
            elif c == "{" and self._is_bound():
                lo, hi = self._bound()
                node = ("rep", node, lo, hi)
                self._lazy_suffix()
                continue
            else:
                return node
            self.i += 1
            node = ("rep", node, lo, hi)
            self._lazy_suffix()

    def _lazy_suffix(self) -> None:
        if self.peek() in ("?", "+"):
            self.i += 1

    def _is_bound(self) -> bool:
        j = self.p.find("}", self.i)
        body = self.p[self.i + 1:j] if j > 0 else ""
        return bool(body) and all(ch.isdigit() or ch == "," for ch in body) and body[0].isdigit() \
            and body.count(",") <= 1

    def _bound(self) -> tuple[int, int | None]:
        j = self.p.index("}", self.i)
        body = self.p[self.i + 1:j]
        self.i = j + 1
        if "," not in body:
            lo = hi = int(body)
        else:
            a, b = body.split(",")
            lo, hi = int(a), (int(b) if b else None)
        if hi is not None and hi < lo:
            raise self.error(f"bad repetition bounds {{{body}}}")
        if max(lo, hi or 0) > MAX_REPEAT:
            raise self.error(f"repetition bound above {MAX_REPEAT}")
        return lo, hi

    def atom(self) -> tuple:
        c = self.take()
        if c == "(":
            if self.p.startswith("?:", self.i):
                self.i += 2
            elif self.p.startswith("?P<", self.i):
                j = self.p.find(">", self.i)
                if j < 0:
                    raise self.error("unterminated group name")
                self.i = j + 1
            elif self.peek() == "?":
                raise self.error("lookaround, inline flags and other (?...) groups are not supported")
            node = self.alternation()
            if self.peek() != ")":
                raise self.error("missing ')'")
            self.i += 1
            return node
        if c == "[":
            return ("cset", self.char_class())
        if c == ".":
            return ("cset", negate_ranges([(10, 10)]))
        if c == "\\":
            return ("cset", self.escape(in_class=False))
        if c in "*+?":
            raise self.error(f"nothing to repeat before {c!r}")
        if c == "{" and self._is_bound():
            raise self.error("nothing to repeat before '{'")
        if c in "^$":
            raise self.error(f"{c!r} is only supported at the start / end of the pattern")
        return ("cset", [(ord(c), ord(c))])

    def escape(self, in_class: bool) -> list[tuple[int, int]]:
        c = self.take()
        if c in _CLASS_ESCAPES:
            return list(_CLASS_ESCAPES[c])
        if c.lower() in _CLASS_ESCAPES:
            return negate_ranges(_CLASS_ESCAPES[c.lower()])
        if c in _SIMPLE_ESCAPES:
            cp = ord(_SIMPLE_ESCAPES[c])
            return [(cp, cp)]
        if c in "xuU":
            n = {"x": 2, "u": 4, "U": 8}[c]
            digits = self.p[self.i:self.i + n]
            if len(digits) != n or any(d not in "0123456789abcdefABCDEF" for d in digits):
                raise self.error(f"bad \\{c} escape")
            self.i += n
            cp = int(digits, 16)
            if cp > MAX_CODE_POINT:
                raise self.error(f"code point {cp:#x} out of range")
            return [(cp, cp)]
        if c == "b" and in_class:
            return [(8, 8)]
        if c.isalnum():
            raise self.error(f"escape \\{c} is not supported (backreferences, \\b, \\A, ... are not regular "
                             "or not supported)")
        return [(ord(c), ord(c))]

    def char_class(self) -> list[tuple[int, int]]:
        negate = self.peek() == "^"
        if negate:
            self.i += 1
        ranges: list[tuple[int, int]] = []
        first = True
        while True:
            c = self.take()
            if c == "]" and not first:
                break
            first = False
            if c == "\\":
                r = self.escape(in_class=True)
            elif c == "[" and self.peek() == ":":
                raise self.error("POSIX classes [:name:] are not supported")
            else:
                r = [(ord(c), ord(c))]
            single = len(r) == 1 and r[0][0] == r[0][1]
            if single and self.peek() == "-" and self.p[self.i + 1:self.i + 2] not in ("]", ""):
                self.i += 1
                d = self.take()
                e = self.escape(in_class=True) if d == "\\" else [(ord(d), ord(d))]
                if len(e) != 1 or e[0][0] != e[0][1]:
                    raise self.error("a class range must end in a single character")
                if e[0][0] < r[0][0]:
                    raise self.error("bad character range")
                r = [(r[0][0], e[0][0])]
            ranges += r
        ranges = normalize_ranges(ranges)
        return negate_ranges(ranges) if negate else ranges


def parse_regex(pattern: str) -> tuple:
    """The automaton AST of a Python-syntax regular expression (fullmatch semantics)."""
    if not isinstance(pattern, str):
        raise ValueError(f"a regex must be a string, got {type(pattern).__name__}")
    return _Parser(pattern).parse()
