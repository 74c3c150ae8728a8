"""Token-level guided decoding over a byte DFA.

`TokenVocab`: the UTF-8 bytes of every token (byte-level BPE tokens through the GPT-2 byte map; other
tokenizers through single-token decoding), special / added tokens excluded (a guided output never
contains them; EOS is handled by the sampler). `Grammar`: a compiled pattern plus its token masks,
computed for all tokens at once by walking the token bytes through the DFA (numpy, a few ms for a
129K vocabulary) and cached as packed bits per mask class (states that must allow the same tokens
share a class, see `mask_classes`). `GuideCursor`: one sequence's position.
`GuideCompiler`: compiles and caches grammars of one tokenizer, keyed by the request's spec.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .automaton import Dfa, compile_dfa
from .json_schema import free_object, schema_to_ast
from .regex import parse_regex
from .tool_calls import DSML_SYMBOL, DSML_TOKEN, tool_calls_ast

GUIDE_KINDS = ("regex", "json", "json_object", "tool_calls")


def _byte_level_map() -> dict[str, int]:
    """GPT-2's byte -> printable character table, inverted (what ByteLevel BPE token strings use)."""
    printable = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    chars, n = list(printable), 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(printable, chars)}


class TokenVocab:
    """Token bytes of one tokenizer, as length-sorted padded columns for vectorized DFA walks."""

    def __init__(self, tokenizer: Any, vocab_size: int, symbols: dict[int, tuple[int, ...]] | None = None) -> None:
        self.vocab_size = vocab_size  # the model's vocabulary (rows of the logits), >= the tokenizer's
        symbols = symbols or {}  # special tokens a grammar may ask for -> their input symbols (>= 256)
        raw = tokenizer.raw
        decoder = getattr(raw, "decoder", None)
        byte_level = decoder is not None and type(decoder).__name__ == "ByteLevel"
        inv = _byte_level_map() if byte_level else None
        excluded = set(tokenizer.all_special_ids) | set(raw.get_added_tokens_decoder())
        self.token_bytes: list[bytes | tuple[int, ...] | None] = []  # input values per token
        for tid in range(min(tokenizer.vocab_size, vocab_size)):
            data = symbols.get(tid)
            if data is None and tid not in excluded:
                piece = raw.id_to_token(tid)
                if piece is not None and inv is not None and all(c in inv for c in piece):
                    data = bytes(inv[c] for c in piece)
                elif piece is not None and inv is None:
                    text = raw.decode([tid], skip_special_tokens=False)
                    data = text.encode("utf-8") if text and "\ufffd" not in text else None
            self.token_bytes.append(data or None)
        ids = [t for t, b in enumerate(self.token_bytes) if b]
        lens = np.array([len(self.token_bytes[t]) for t in ids], dtype=np.int64)
        order = np.argsort(-lens, kind="stable")
        self.ids = np.array(ids, dtype=np.int64)[order]  # token ids, longest first
        lens = lens[order]
        self.lengths = lens  # bytes per row, non-increasing
        width = int(lens[0]) if len(lens) else 0
        data = np.zeros((len(ids), width), dtype=np.uint16)  # bytes, and symbols >= 256
        for row, t in enumerate(self.ids.tolist()):
            b = self.token_bytes[t]
            data[row, :len(b)] = np.frombuffer(b, dtype=np.uint8) if isinstance(b, bytes) else b
        self.columns = np.ascontiguousarray(data.T)  # [width, rows]: byte j of every row, contiguous


@dataclass(eq=False)
class Grammar:
    """A compiled guide: the DFA, the vocabulary, the mask class of every state, and the mask cache."""

    dfa: Dfa
    vocab: TokenVocab
    description: str  # what was compiled, for errors and logs
    # mask class -> (packed bits of bool[V], whether any token is allowed)
    _masks: OrderedDict = field(default_factory=OrderedDict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    max_cached_masks: int = 1024  # 16 KB each at 129K tokens: 16 MB per grammar at most

    def __post_init__(self) -> None:
        # states whose masks must agree share a cache entry (a 1000-character string: ~26,000 states,
        # ~610 masks on a 129K vocabulary)
        self.mask_class = mask_classes(self.dfa, self.vocab.columns.shape[0])

    def __deepcopy__(self, memo: dict) -> Grammar:
        return self  # immutable apart from its cache: shared by every copy of the params

    def allowed(self, state: int) -> np.ndarray:
        """bool[vocab_size]: the tokens whose bytes keep `state` alive (EOS not included)."""
        packed, _ = self.packed(state)
        return np.unpackbits(packed, count=self.vocab.vocab_size).view(bool)  # 0/1 bytes: a valid bool view

    def packed(self, state: int) -> tuple[np.ndarray, bool]:
        """(`allowed(state)` as packed bits (np.packbits order), whether any token is allowed)."""
        key = int(self.mask_class[state])
        with self._lock:
            entry = self._masks.get(key)
            if entry is not None:
                self._masks.move_to_end(key)
                return entry
        mask = self._compute(state) if state != self.dfa.dead else np.zeros(self.vocab.vocab_size, dtype=bool)
        entry = (np.packbits(mask), bool(mask.any()))
        with self._lock:
            self._masks[key] = entry
            while len(self._masks) > self.max_cached_masks:
                self._masks.popitem(last=False)
        return entry

    def _compute(self, state: int) -> np.ndarray:
        """One walk of every token's bytes from `state`. After the first byte only the surviving
        rows go on (in structural JSON states that is a few percent of the vocabulary); rows stay
        longest-first, so the ones still reading byte j are a prefix."""
        v, dfa = self.vocab, self.dfa
        mask = np.zeros(v.vocab_size, dtype=bool)
        if not len(v.ids):
            return mask
        flat, width, cls = dfa.trans.ravel(), dfa.trans.shape[1], dfa.byte_class
        first = flat[state * width + cls[v.columns[0]]]
        rows = np.flatnonzero(first != dfa.dead)  # ascending = longest first
        cur = first[rows]
        neg_lens = -v.lengths[rows]  # non-decreasing
        for j in range(1, v.columns.shape[0]):
            n = int(np.searchsorted(neg_lens, -j, side="left"))  # rows longer than j bytes
            if n == 0:
                break
            head = cur[:n]
            head[:] = flat[head * width + cls[v.columns[j].take(rows[:n])]]
        mask[v.ids[rows[cur != dfa.dead]]] = True
        return mask

    def advance(self, state: int, token_id: int) -> int:
        """The state after `token_id` (dead for tokens without bytes: special, added, out of range)."""
        data = self.vocab.token_bytes[token_id] if token_id < len(self.vocab.token_bytes) else None
        return self.dfa.dead if not data else self.dfa.step(state, data)


def mask_classes(dfa: Dfa, depth: int) -> np.ndarray:
    """int64[num_states]: states with equal token masks share a class. A mask only asks whether
    each token's bytes (at most `depth`) lead to a live state, so `depth` rounds of Moore's partition
    refinement from {dead, live} suffice (fewer once the partition is stable). Rows are compared
    through two independent 64-bit hashes (a false merge needs both to collide: ~n^2 / 2^128)."""
    n, c = dfa.trans.shape
    rng = np.random.default_rng(0x5EED)
    r1 = rng.integers(1, 2 ** 63, size=c + 1, dtype=np.uint64) | np.uint64(1)
    r2 = rng.integers(1, 2 ** 63, size=c + 1, dtype=np.uint64) | np.uint64(1)
    cls = np.ones(n, dtype=np.int64)
    cls[dfa.dead] = 0
    k = 2
    for _ in range(depth):
        sig = np.concatenate([cls[:, None], cls[dfa.trans]], axis=1).astype(np.uint64)
        with np.errstate(over="ignore"):
            h = np.stack([(sig * r1).sum(axis=1), (sig * r2).sum(axis=1)], axis=1)
        _, inverse = np.unique(h, axis=0, return_inverse=True)
        cls = inverse.ravel().astype(np.int64)
        new_k = int(cls.max()) + 1
        if new_k == k:
            break
        k = new_k
    return cls


class GuideCursor:
    """One sequence's place in its grammar. Inactive until `start_token_id` is generated (a chat
    reply's `</think>`: the grammar constrains the content, not the reasoning); None = active at once."""

    def __init__(self, grammar: Grammar, start_token_id: int | None = None) -> None:
        self.grammar = grammar
        self.start_token_id = start_token_id
        self.state: int | None = grammar.dfa.start if start_token_id is None else None

    @property
    def active(self) -> bool:
        return self.state is not None

    def advance(self, token_id: int) -> None:
        if self.state is None:
            if token_id == self.start_token_id:
                self.state = self.grammar.dfa.start
            return
        self.state = self.grammar.advance(self.state, token_id)

    def packed_mask(self) -> tuple[np.ndarray, bool]:
        """For an active cursor: (packed bits of the tokens that keep the match alive, whether EOS may
        come now: the output is a complete match, or nothing else is left so the row can end)."""
        packed, any_token = self.grammar.packed(self.state)
        return packed, bool(self.grammar.dfa.accept[self.state]) or not any_token



class GuideCompiler:
    """Compiles guides for one tokenizer and keeps the most recent ones (keyed by kind and spec)."""

    def __init__(self, tokenizer: Any, vocab_size: int, max_cached: int = 16) -> None:
        self.tokenizer, self.vocab_size, self.max_cached = tokenizer, vocab_size, max_cached
        self._vocab: TokenVocab | None = None
        self._cache: OrderedDict[tuple[str, str], Grammar] = OrderedDict()
        self._lock = threading.Lock()

    def vocab(self) -> TokenVocab:
        with self._lock:
            if self._vocab is None:
                dsml = self.tokenizer.token_to_id(DSML_TOKEN)
                symbols = {dsml: (DSML_SYMBOL,)} if dsml is not None else {}
                self._vocab = TokenVocab(self.tokenizer, self.vocab_size, symbols)
            return self._vocab

    def compile(self, kind: str, spec: Any) -> Grammar:
        """A grammar for `kind` ("regex": a pattern string; "json": a JSON schema, dict or string;
        "json_object": any JSON object, spec None; "tool_calls": {"functions": [...], "one_call": bool},
        a forced DSML tool-call block). Raises ValueError naming what is wrong."""
        if kind not in GUIDE_KINDS:
            raise ValueError(f"unknown guide kind {kind!r}")
        key = (kind, json.dumps(spec, sort_keys=True))
        with self._lock:
            g = self._cache.get(key)
            if g is not None:
                self._cache.move_to_end(key)
                return g
        if kind == "regex":
            ast, what = parse_regex(spec), f"regex {spec!r}"
        elif kind == "json":
            ast, what = schema_to_ast(spec), "JSON schema"
        elif kind == "tool_calls":
            if self.tokenizer.token_to_id(DSML_TOKEN) is None:
                raise ValueError(f"forced tool calls need the {DSML_TOKEN} token, which this tokenizer lacks")
            ast, what = tool_calls_ast(spec["functions"], spec["one_call"]), "tool-call block"
        else:
            ast, what = free_object(), "JSON object"
        g = Grammar(compile_dfa(ast), self.vocab(), what)
        if not g.packed(g.dfa.start)[1] and not g.dfa.accept[g.dfa.start]:  # also warms the start mask
            raise ValueError(f"no token of this vocabulary can start a match of the {what}")
        with self._lock:
            self._cache[key] = g
            while len(self._cache) > self.max_cached:
                self._cache.popitem(last=False)
        return g
