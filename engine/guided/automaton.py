"""Byte-level automata for guided decoding: a small pattern AST over Unicode code points, its
Thompson NFA over UTF-8 bytes, and the minimal-enough DFA the token masks are computed from.

The AST is plain tuples (cheap to build, easy to read in a test failure):

    ("cset", ranges)            one code point from sorted, disjoint, inclusive (lo, hi) ranges
    ("seq", [node, ...])        concatenation (empty list = the empty string)
    ("alt", [node, ...])        alternation (at least one branch)
    ("rep", node, lo, hi)       lo..hi repetitions (hi None = unbounded)
    ("seplist", item, sep, lo)  `item (sep item)*` with at least `lo` items (0 or 1), one copy of
                                `item` in the NFA (JSON members and array items nest without blow-up)
    ("bytes", [(lo, hi), ...])  raw input values, one per inclusive range: bytes (a loose UTF-8 shape:
                                JSON strings take any lead byte + continuation count) or special-token
                                symbols >= 256

Code points become UTF-8 byte-range sequences (surrogates excluded), so the DFA reads token bytes
directly, including tokens that end in the middle of a character.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_CODE_POINT = 0x10FFFF
_SURROGATES = (0xD800, 0xDFFF)
# Input symbols: the 256 byte values, then SYMBOLS extra values (256, 257, ...) that stand for special
# tokens a grammar may ask for (tool_calls.py); no text token can produce them.
NUM_SYMBOLS = 4
ALPHABET = 256 + NUM_SYMBOLS
MAX_NFA_STATES = 200_000  # a pattern larger than this is refused (bounded repetitions multiply states)
MAX_DFA_STATES = 60_000


class PatternTooLarge(ValueError):
    """The pattern or schema compiles to more automaton states than the guided decoder allows."""


# ---- AST helpers -------------------------------------------------------------------------------
def lit(text: str) -> tuple:
    return ("seq", [("cset", [(ord(c), ord(c))]) for c in text])


def cset(*ranges: tuple[int, int]) -> tuple:
    return ("cset", normalize_ranges(list(ranges)))


def normalize_ranges(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def negate_ranges(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out, nxt = [], 0
    for lo, hi in normalize_ranges(ranges):
        if lo > nxt:
            out.append((nxt, lo - 1))
        nxt = hi + 1
    if nxt <= MAX_CODE_POINT:
        out.append((nxt, MAX_CODE_POINT))
    return out


def subtract_ranges(ranges: list[tuple[int, int]], remove: list[tuple[int, int]]) -> list[tuple[int, int]]:
    keep = negate_ranges(remove)
    out = []
    for lo, hi in normalize_ranges(ranges):
        for klo, khi in keep:
            a, b = max(lo, klo), min(hi, khi)
            if a <= b:
                out.append((a, b))
    return normalize_ranges(out)


def subtract_ranges_in(node: tuple, remove: list[tuple[int, int]]) -> tuple:
    """`node` with the code points `remove` taken out of every character set."""
    kind = node[0]
    if kind == "cset":
        return ("cset", subtract_ranges(node[1], remove))
    if kind in ("seq", "alt"):
        return (kind, [subtract_ranges_in(c, remove) for c in node[1]])
    if kind == "rep":
        return ("rep", subtract_ranges_in(node[1], remove), node[2], node[3])
    if kind == "seplist":
        return ("seplist", subtract_ranges_in(node[1], remove), subtract_ranges_in(node[2], remove), node[3])
    if kind == "bytes":
        return node
    raise ValueError(f"unknown pattern node {kind!r}")


# ---- UTF-8 ranges ------------------------------------------------------------------------------
def _utf8_len(cp: int) -> int:
    return 1 if cp < 0x80 else 2 if cp < 0x800 else 3 if cp < 0x10000 else 4


def utf8_sequences(lo: int, hi: int) -> list[list[tuple[int, int]]]:
    """Byte-range sequences whose concatenations are exactly the UTF-8 encodings of lo..hi."""
    out: list[list[tuple[int, int]]] = []
    pieces = []
    if lo <= _SURROGATES[1] and hi >= _SURROGATES[0]:  # surrogates have no UTF-8 encoding
        if lo < _SURROGATES[0]:
            pieces.append((lo, _SURROGATES[0] - 1))
        if hi > _SURROGATES[1]:
            pieces.append((_SURROGATES[1] + 1, hi))
    else:
        pieces.append((lo, hi))
    for a, b in pieces:
        for blo, bhi in ((0, 0x7F), (0x80, 0x7FF), (0x800, 0xFFFF), (0x10000, MAX_CODE_POINT)):
            x, y = max(a, blo), min(b, bhi)
            if x <= y:
                _split_same_len(x, y, out)
    return out


def _split_same_len(lo: int, hi: int, out: list) -> None:
    n = _utf8_len(lo)
    if n == 1:
        out.append([(lo, hi)])
        return
    for i in range(1, n):  # align the low 6*i bits so each byte position is an independent range
        m = (1 << (6 * i)) - 1
        if lo & ~m != hi & ~m:
            if lo & m:
                _split_same_len(lo, lo | m, out)
                _split_same_len((lo | m) + 1, hi, out)
                return
            if hi & m != m:
                _split_same_len(lo, (hi & ~m) - 1, out)
                _split_same_len(hi & ~m, hi, out)
                return
    a, b = chr(lo).encode("utf-8"), chr(hi).encode("utf-8")
    out.append(list(zip(a, b)))


def _mask(lo: int, hi: int) -> int:
    return ((1 << (hi + 1)) - 1) ^ ((1 << lo) - 1)


# ---- NFA ---------------------------------------------------------------------------------------
class _Nfa:
    """Thompson NFA: per state, epsilon targets and (ALPHABET-bit symbol mask, target) edges."""

    def __init__(self) -> None:
        self.eps: list[list[int]] = []
        self.edges: list[list[tuple[int, int]]] = []

    def new(self) -> int:
        if len(self.eps) >= MAX_NFA_STATES:
            raise PatternTooLarge(f"the pattern needs more than {MAX_NFA_STATES} automaton states; "
                                  "use smaller bounds (maxLength, maxItems, {m,n})")
        self.eps.append([])
        self.edges.append([])
        return len(self.eps) - 1

    def build(self, node: tuple) -> tuple[int, int]:
        """States (start, end) of a fragment matching `node`."""
        kind = node[0]
        if kind == "cset":
            s, e = self.new(), self.new()
            for lo, hi in node[1]:
                for seq in utf8_sequences(lo, hi):
                    cur = s
                    for j, (a, b) in enumerate(seq):
                        nxt = e if j == len(seq) - 1 else self.new()
                        self.edges[cur].append((_mask(a, b), nxt))
                        cur = nxt
            return s, e
        if kind == "bytes":
            s = cur = self.new()
            for lo, hi in node[1]:
                nxt = self.new()
                self.edges[cur].append((_mask(lo, hi), nxt))
                cur = nxt
            return s, cur
        if kind == "seq":
            s = e = self.new()
            for child in node[1]:
                cs, ce = self.build(child)
                self.eps[e].append(cs)
                e = ce
            return s, e
        if kind == "alt":
            s, e = self.new(), self.new()
            for child in node[1]:
                cs, ce = self.build(child)
                self.eps[s].append(cs)
                self.eps[ce].append(e)
            return s, e
        if kind == "rep":
            _, child, lo, hi = node
            s = e = self.new()
            for _ in range(lo):
                cs, ce = self.build(child)
                self.eps[e].append(cs)
                e = ce
            if hi is None:
                cs, ce = self.build(child)
                end = self.new()
                self.eps[e] += [cs, end]
                self.eps[ce] += [cs, end]
                return s, end
            end = self.new()
            for _ in range(hi - lo):
                self.eps[e].append(end)
                cs, ce = self.build(child)
                self.eps[e].append(cs)
                e = ce
            self.eps[e].append(end)
            return s, end
        if kind == "seplist":
            _, item, sep, lo = node
            s, end = self.new(), self.new()
            is_, ie = self.build(item)
            ss, se = self.build(sep)
            self.eps[s].append(is_)
            if lo == 0:
                self.eps[s].append(end)
            self.eps[ie] += [end, ss]
            self.eps[se].append(is_)
            return s, end
        raise ValueError(f"unknown pattern node {kind!r}")


# ---- DFA ---------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Dfa:
    """Deterministic byte automaton. State `dead` absorbs every byte; every other state can still
    reach an accepting state (dead ends are pruned into `dead`)."""

    trans: np.ndarray  # [num_states, num_classes] int32: next state per byte class
    byte_class: np.ndarray  # [ALPHABET] int32: class of each byte value (and special-token symbol)
    accept: np.ndarray  # [num_states] bool: the bytes so far form a complete match
    start: int
    dead: int

    @property
    def num_states(self) -> int:
        return self.trans.shape[0]

    def step(self, state: int, data: bytes) -> int:
        trans, cls = self.trans, self.byte_class
        for b in data:
            state = int(trans[state, cls[b]])
        return state

    def fullmatch(self, data: bytes) -> bool:
        return bool(self.accept[self.step(self.start, data)])


def compile_dfa(node: tuple) -> Dfa:
    """NFA of `node` -> subset-construction DFA over byte classes, dead ends pruned."""
    nfa = _Nfa()
    start, final = nfa.build(node)
    # byte classes: bytes no edge mask tells apart share a class
    masks = {m for edges in nfa.edges for m, _ in edges}
    signature: dict[tuple, int] = {}
    byte_class = np.zeros(ALPHABET, dtype=np.int32)
    reps: list[int] = []
    mask_list = sorted(masks)
    for b in range(ALPHABET):
        sig = tuple((m >> b) & 1 for m in mask_list)
        if sig not in signature:
            signature[sig] = len(reps)
            reps.append(b)
        byte_class[b] = signature[sig]
    num_classes = len(reps)
    mask_classes = {m: [c for c, rep in enumerate(reps) if (m >> rep) & 1] for m in mask_list}

    closure_cache: dict[int, frozenset[int]] = {}

    def closure(states) -> frozenset[int]:
        out, stack = set(states), list(states)
        while stack:
            for t in nfa.eps[stack.pop()]:
                if t not in out:
                    out.add(t)
                    stack.append(t)
        return frozenset(out)

    def single_closure(s: int) -> frozenset[int]:
        c = closure_cache.get(s)
        if c is None:
            c = closure_cache[s] = closure([s])
        return c

    first = closure([start])
    ids: dict[frozenset[int], int] = {first: 0}
    order = [first]
    rows: list[list[int]] = []
    accept: list[bool] = []
    i = 0
    while i < len(order):
        subset = order[i]
        i += 1
        accept.append(final in subset)
        targets: list[set[int]] = [set() for _ in range(num_classes)]
        for s in subset:
            for m, t in nfa.edges[s]:
                for c in mask_classes[m]:
                    targets[c].add(t)
        row = []
        for tset in targets:
            if not tset:
                row.append(-1)
                continue
            nxt = frozenset().union(*(single_closure(t) for t in tset))
            j = ids.get(nxt)
            if j is None:
                if len(order) >= MAX_DFA_STATES:
                    raise PatternTooLarge(f"the pattern needs more than {MAX_DFA_STATES} deterministic states; "
                                          "use smaller bounds (maxLength, maxItems, {m,n})")
                j = ids[nxt] = len(order)
                order.append(nxt)
            row.append(j)
        rows.append(row)
    return _prune(np.array(rows, dtype=np.int32).reshape(len(rows), num_classes), np.array(accept), byte_class)


def _prune(trans: np.ndarray, accept: np.ndarray, byte_class: np.ndarray) -> Dfa:
    """Keep the states that can still reach acceptance; everything else goes to one dead state."""
    n, c = trans.shape
    live = accept.copy()
    preds: list[list[int]] = [[] for _ in range(n)]
    for s in range(n):
        for t in set(trans[s].tolist()):
            if t >= 0:
                preds[t].append(s)
    stack = [s for s in range(n) if live[s]]
    while stack:
        t = stack.pop()
        for s in preds[t]:
            if not live[s]:
                live[s] = True
                stack.append(s)
    if not live[0]:
        raise ValueError("the pattern matches no string at all")
    keep = np.flatnonzero(live)
    remap = np.full(n + 1, len(keep), dtype=np.int32)  # index n = "-1" (no transition)
    remap[keep] = np.arange(len(keep), dtype=np.int32)
    dead = len(keep)
    t = trans[keep].copy()
    t[t < 0] = n
    new = np.concatenate([remap[t], np.full((1, c), dead, dtype=np.int32)])
    new[new > dead] = dead
    acc = np.concatenate([accept[keep], [False]])
    return Dfa(trans=np.ascontiguousarray(new), byte_class=byte_class, accept=acc, start=int(remap[0]), dead=dead)
