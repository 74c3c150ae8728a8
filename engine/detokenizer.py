"""Incremental detokenization of one sequence: token ids in, newly visible text out, stop strings.

Decoding uses vLLM's prefix/read offsets. Only a small window of recent tokens is decoded per step:

    ids:   ... | prefix_offset ........ read_offset ........ end |
                 `-- context: already emitted --'  `-- new --'
    new text = decode(ids[prefix:]) minus decode(ids[prefix:read])

The context tokens make decoders that depend on left context (SentencePiece leading spaces) come out
right. When the window's text ends in U+FFFD, a byte-level token carried only part of a multi-byte
character: nothing is emitted until the character completes (or, for bytes that never form a valid
character, until MAX_PENDING_TOKENS tokens have waited; then the stable part is emitted with U+FFFD,
as a full decode would, and only the last few tokens keep waiting).

One tokenizer decode per generated token on the common path: once new text appears, the window moves
to (read, end); that is almost always one token, whose text decode([id]) comes from a per-token cache
(`token_text_cache`, shared by the engine's detokenizers) instead of a second decode.

Stop strings: text that could still be the beginning of a stop string is held back (at most
max(len(stop)) - 1 characters), so a partial stop string is never emitted. When a stop string
appears, the text is cut before it (or after it with include_stop_str_in_output) and reported; the
sequence is then finished and further tokens are ignored. `flush()` releases what is held back when
the sequence ends for another reason (length, EOS, stop token id, abort).

Emitted text is read either whole (`text`, O(all text)) or as the piece added since the previous
read (`take_new_text()`, O(new text), for delta outputs).

Stop *token ids*, EOS and max_tokens are the engine's business, not this file's.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol, Sequence

INITIAL_CONTEXT_TOKENS = 5  # prompt tokens decoded as left context (vLLM's initial offset)
MAX_PENDING_TOKENS = 8  # tokens waited for an incomplete character before emitting U+FFFD anyway
MAX_SILENT_WINDOW = 32  # window length after which tokens that produced no text are dropped from it
_MAX_CHAR_TOKENS = 3  # an incomplete UTF-8 character has at most 3 bytes, so spans <= 3 tokens
_TRIM_AT = 256  # drop ids left of the window once this many have accumulated (keeps memory O(window))
_COMPACT_PARTS = 64  # emitted pieces joined into one string once there are this many (and the head doubles)
_REPLACEMENT = "\ufffd"


class _Decoder(Protocol):  # engine.tokenizer.Tokenizer or a raw tokenizers.Tokenizer
    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str: ...


class DetokStep(NamedTuple):
    new_text: str  # text made visible by this call ("" when everything is still held back)
    stop_str: str | None = None  # stop string matched by this call: the sequence must finish


_NOTHING = DetokStep("")


class IncrementalDetokenizer:
    """Per-sequence detokenizer state. Work per token is bounded by the window and stop lengths."""

    def __init__(self, tokenizer: _Decoder, prompt_token_ids: Sequence[int], *,
                 skip_special_tokens: bool = True, stop: Sequence[str] = (),
                 include_stop_str_in_output: bool = False, min_tokens: int = 0,
                 token_text_cache: dict[int, str] | None = None):
        # engine.tokenizer.Tokenizer.decode is raw.decode(list(ids), ...): call the Rust side directly
        self._decode_fn = getattr(tokenizer, "raw", tokenizer).decode
        # decode([token_id]) by token id, for this skip_special_tokens setting (shareable across sequences)
        self._token_texts = token_text_cache if token_text_cache is not None else {}
        self._min_tokens = min_tokens  # stop strings count only from this many generated tokens on (vLLM)
        self._skip_special = skip_special_tokens
        self._stop = [s for s in stop if s]
        self._stop_chars = {c for s in self._stop for c in s[:-1]}  # a held-back suffix ends in one of these
        self._include_stop = include_stop_str_in_output
        # window state: ids[prefix:read] were emitted already and serve as context
        self._ids: list[int] = list(prompt_token_ids[-INITIAL_CONTEXT_TOKENS:])
        self._prefix = 0
        self._read = len(self._ids)
        self._prefix_text = self._decode(self._ids)
        if self._prefix_text.endswith(_REPLACEMENT):  # prompt ends mid-character: use no context
            self._ids, self._read, self._prefix_text = [], 0, ""
        self._held = ""  # decoded text held back because it may start a stop string
        self._parts: list[str] = []  # emitted text, joined lazily by `text`
        self._num_chars = 0  # characters emitted so far
        self._num_chars_taken = 0  # characters already returned by take_new_text()
        self._num_tokens = 0  # generated tokens added so far
        self._stop_str: str | None = None  # the stop string that finished the sequence

    @property
    def text(self) -> str:
        """All text emitted so far (never a partial stop string)."""
        if len(self._parts) > 1:
            self._parts = ["".join(self._parts)]
        return self._parts[0] if self._parts else ""

    def take_new_text(self) -> str:
        """Text emitted since the previous call (everything so far on the first): O(new text)."""
        need = self._num_chars - self._num_chars_taken
        if need == 0:
            return ""
        self._num_chars_taken = self._num_chars
        parts = self._parts
        i, got = len(parts) - 1, len(parts[-1])
        while got < need:
            i -= 1
            got += len(parts[i])
        head = parts[i][got - need:]
        return head + "".join(parts[i + 1:]) if i + 1 < len(parts) else head

    @property
    def stop_str(self) -> str | None:
        return self._stop_str

    @property
    def finished(self) -> bool:
        """True once a stop string matched; later tokens are ignored."""
        return self._stop_str is not None

    @property
    def num_tokens(self) -> int:
        return self._num_tokens

    def add_token(self, token_id: int) -> DetokStep:
        """Append one generated token; returns the newly visible text and a matched stop string."""
        if self._stop_str is not None:
            return _NOTHING
        self._num_tokens += 1
        self._ids.append(token_id)
        return self._release(self._decode_new(force=False), final=False)

    def add_tokens(self, token_ids: Sequence[int]) -> DetokStep:
        """add_token for several tokens; stops consuming at the first stop string."""
        texts = []
        for t in token_ids:
            step = self.add_token(t)
            texts.append(step.new_text)
            if step.stop_str is not None:
                return DetokStep("".join(texts), step.stop_str)
        return DetokStep("".join(texts))

    def flush(self) -> str:
        """Release everything held back (incomplete characters, possible stop-string prefixes).

        Call when the sequence finished for a reason other than a stop string. A stop string found in
        the released text still truncates it (see `stop_str`).
        """
        if self._stop_str is not None:
            return ""
        return self._release(self._decode_new(force=True), final=True).new_text

    # -- internals ---------------------------------------------------------------------------------
    def _decode(self, ids: list[int]) -> str:
        return self._decode_fn(ids, skip_special_tokens=self._skip_special)

    def _advance(self, prefix: int, read: int) -> None:
        self._prefix, self._read = prefix, read
        if self._prefix >= _TRIM_AT:
            del self._ids[:self._prefix]
            self._read -= self._prefix
            self._prefix = 0
        if self._read - self._prefix == 1:
            self._prefix_text = self._token_text(self._ids[self._prefix])
        else:
            self._prefix_text = self._decode(self._ids[self._prefix:self._read])

    def _token_text(self, token_id: int) -> str:
        text = self._token_texts.get(token_id)
        if text is None:
            text = self._token_texts[token_id] = self._decode([token_id])
        return text

    def _emit(self, text: str) -> None:
        parts = self._parts
        parts.append(text)
        self._num_chars += len(text)
        # join the pieces once the head string would at least double: O(1) amortized per character
        if len(parts) >= _COMPACT_PARTS and self._num_chars >= 2 * len(parts[0]):
            self._parts = ["".join(parts)]

    def _decode_new(self, force: bool) -> str:
        """Text contributed by ids[read:], or "" while it is not ready."""
        if self._read == len(self._ids):
            return ""
        end = len(self._ids)
        full = self._decode(self._ids[self._prefix:])
        if not force and full.endswith(_REPLACEMENT):
            if end - self._read < MAX_PENDING_TOKENS:
                return ""  # a multi-byte character is still incomplete
            end, full = self._split_invalid(full)
            if end == self._read:
                return ""
        if len(full) > len(self._prefix_text):
            new_text = full[len(self._prefix_text):]
            self._advance(self._read, end)
            return new_text
        if end - self._prefix > MAX_SILENT_WINDOW or force:
            # tokens that add no text (skipped specials): re-anchor with a short context window
            self._advance(max(self._read, end - INITIAL_CONTEXT_TOKENS), end)
        return ""

    def _split_invalid(self, full: str) -> tuple[int, str]:
        """Too many tokens waited while the text ended in U+FFFD: some bytes will never form a
        character. Pick the longest split, leaving the last tokens (which may start a real
        character) pending, whose text is a stable prefix of the window's text; (read, "") if none."""
        end = len(self._ids)
        for split in range(end - _MAX_CHAR_TOKENS, self._read, -1):
            text = self._decode(self._ids[self._prefix:split])
            if len(text) > len(self._prefix_text) and full.startswith(text):
                return split, text
        if end - self._read >= 4 * MAX_PENDING_TOKENS:  # give up on consistency, bound the window
            split = end - _MAX_CHAR_TOKENS
            return split, self._decode(self._ids[self._prefix:split])
        return self._read, ""

    def _release(self, new_text: str, final: bool) -> DetokStep:
        """Stop-string check over held + new text; emit what can no longer start a stop string."""
        if not self._stop:  # nothing is ever held back
            if not new_text:
                return _NOTHING
            self._emit(new_text)
            return DetokStep(new_text)
        buf = self._held + new_text
        if not buf:
            return _NOTHING
        active = self._num_tokens >= self._min_tokens
        if active:
            best: tuple[int, str] | None = None
            for s in self._stop:
                i = buf.find(s)
                if i >= 0 and (best is None or i < best[0] or (i == best[0] and len(s) > len(best[1]))):
                    best = (i, s)
            if best is not None:
                i, s = best
                out = buf[:i + len(s)] if self._include_stop else buf[:i]
                self._held, self._stop_str = "", s
                self._emit(out)
                return DetokStep(out, s)
        keep = 0 if final or not active else self._partial_stop_len(buf)
        out, self._held = buf[:len(buf) - keep], buf[len(buf) - keep:]
        if out:
            self._emit(out)
        return DetokStep(out)

    def _partial_stop_len(self, buf: str) -> int:
        """Length of the longest suffix of buf that is a proper prefix of some stop string."""
        if buf[-1] not in self._stop_chars:
            return 0
        best = 0
        for s in self._stop:
            for k in range(min(len(s) - 1, len(buf)), best, -1):
                if buf.endswith(s[:k]):
                    best = k
                    break
        return best
