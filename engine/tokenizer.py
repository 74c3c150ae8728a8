"""`Tokenizer`: a thin wrapper over a Hugging Face `tokenizers.Tokenizer` (tokenizer.json).

It knows where BOS/EOS are and which ids are special, and nothing about chat formats: the V4 chat
encoding (roles, `<think>`, tool calls) lives in the server's chat-format module, incremental
decoding in `engine/detokenizer.py`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import re
from pathlib import Path

import tokenizers

# DeepSeek-V4 defaults, used when tokenizer_config.json is absent or names no bos/eos token.
DEFAULT_BOS_TOKEN = "<｜begin▁of▁sentence｜>"
DEFAULT_EOS_TOKEN = "<｜end▁of▁sentence｜>"
DEFAULT_BOS_TOKEN_ID = 0
DEFAULT_EOS_TOKEN_ID = 1
# texts at least this long are encoded through encode_batch, which releases the GIL (encode holds it
# for the whole call: seconds for a multi-megabyte prompt, during which no other thread runs)
_GIL_FREE_CHARS = 1 << 15
_TRIM_CHARS = 1 << 20  # after encoding this much text, hand the freed heap back to the OS


class TooManyTokens(ValueError):
    """The text encodes to more than the caller's `limit` tokens (the ids were never built)."""

    def __init__(self, num_tokens: int, limit: int) -> None:
        super().__init__(f"{num_tokens} tokens, more than the limit of {limit}")
        self.num_tokens, self.limit = num_tokens, limit


def _token_content(entry: object) -> str | None:
    """bos/eos in tokenizer_config.json is a string or an AddedToken dict {"content": ...}."""
    if entry is None or isinstance(entry, str):
        return entry
    if isinstance(entry, dict) and isinstance(entry.get("content"), str):
        return entry["content"]
    raise ValueError(f"unrecognised special token entry in tokenizer_config.json: {entry!r}")


class Tokenizer:
    """Text <-> token ids. `encode`: special-token strings inside text encode to their single ids
    (what a caller-owned template wants); `encode_plain` / `encode_segments`: text that is content
    never becomes a special (added) token, only a template's own pieces do."""

    def __init__(self, tokenizer: tokenizers.Tokenizer, bos_token: str | None = None,
                 eos_token: str | None = None):
        self.raw = tokenizer  # the underlying tokenizers.Tokenizer (Rust, thread-safe)
        self.bos_token_id = self._resolve(bos_token, DEFAULT_BOS_TOKEN, DEFAULT_BOS_TOKEN_ID, "bos")
        self.eos_token_id = self._resolve(eos_token, DEFAULT_EOS_TOKEN, DEFAULT_EOS_TOKEN_ID, "eos")
        self.bos_token = self.id_to_token(self.bos_token_id)
        self.eos_token = self.id_to_token(self.eos_token_id)
        special = {i for i, tok in tokenizer.get_added_tokens_decoder().items() if tok.special}
        self.all_special_ids: set[int] = special | {self.bos_token_id, self.eos_token_id}
        self.vocab_size: int = tokenizer.get_vocab_size(with_added_tokens=True)
        # every added token (special or not): content text must never encode to one of them
        self.added_tokens: dict[str, int] = {t.content: i for i, t in tokenizer.get_added_tokens_decoder().items()}
        self.added_ids: frozenset[int] = frozenset(self.added_tokens.values())
        alternatives = sorted(self.added_tokens, key=len, reverse=True)
        self._added_split = re.compile("(" + "|".join(map(re.escape, alternatives)) + ")") if alternatives else None
        self._plain: tokenizers.Tokenizer | None = None  # built on first use (encode_plain)

    def _resolve(self, name: str | None, default_name: str, default_id: int, what: str) -> int:
        if name is not None:
            tid = self.raw.token_to_id(name)
            if tid is None:
                raise ValueError(f"{what} token {name!r} from tokenizer_config.json is not in the vocabulary")
            return tid
        tid = self.raw.token_to_id(default_name)
        return default_id if tid is None else tid

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> Tokenizer:
        """Load `<model_dir>/tokenizer.json` (+ `tokenizer_config.json` for bos/eos when present)."""
        model_dir = Path(model_dir)
        path = model_dir / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer.json not found in {model_dir} (needed to tokenize prompts)")
        try:
            raw = tokenizers.Tokenizer.from_file(str(path))
        except Exception as e:  # the Rust side raises a bare Exception on malformed files
            raise ValueError(f"invalid tokenizer.json at {path}: {e}") from e
        bos = eos = None
        config_path = model_dir / "tokenizer_config.json"
        if config_path.is_file():
            try:
                config = json.loads(config_path.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise ValueError(f"invalid tokenizer_config.json at {config_path}: {e}") from e
            bos = _token_content(config.get("bos_token"))
            eos = _token_content(config.get("eos_token"))
        return cls(raw, bos_token=bos, eos_token=eos)

    def encode(self, text: str, add_special_tokens: bool = False, limit: int | None = None) -> list[int]:
        """Token ids of `text`; add_special_tokens runs the tokenizer's post-processor (e.g. adds BOS).
        Special-token strings in `text` become their ids. More than `limit` ids: `TooManyTokens`,
        raised before the id list exists (a multi-megabyte prompt that cannot fit costs no list)."""
        return _encode(self.raw, text, add_special_tokens, limit)

    def encode_plain(self, text: str, limit: int | None = None) -> list[int]:
        """Token ids of `text` as content: an added token's string is spelled with ordinary tokens."""
        if self._plain is None:
            spec = json.loads(self.raw.to_str())
            for tok in spec.get("added_tokens", []):
                tok["special"] = True  # encode_special_tokens only applies to special ones
            plain = tokenizers.Tokenizer.from_str(json.dumps(spec))
            plain.encode_special_tokens = True  # set once, never toggled: safe across threads
            self._plain = plain
        ids = _encode(self._plain, text, False, limit)
        if self.added_ids.intersection(ids):  # a vocabulary whose merges rebuild an added token's text
            ids = [j for i in ids for j in ([i] if i not in self.added_ids else self._spell(i))]
        return ids

    def _spell(self, token_id: int) -> list[int]:
        """An added token's text as ordinary tokens (split until no piece is an added token)."""
        text = self.raw.decode([token_id], skip_special_tokens=False)
        if len(text) <= 1:
            raise ValueError(f"added token {token_id} cannot be spelled with ordinary tokens")
        return self.encode_plain(text[:1]) + self.encode_plain(text[1:])

    def encode_segments(self, segments: list[tuple[str, bool]], limit: int | None = None) -> list[int]:
        """Token ids of `(text, is_template)` pieces: added tokens are recognized only inside template
        pieces; content pieces are `encode_plain` text. Adjacent ordinary text of both kinds is encoded
        as one run, so the ids equal `encode("".join(texts))` whenever no content holds an added token.
        More than `limit` ids in all: `TooManyTokens` with the exact count (no id list is built)."""
        pieces: list[str | int] = []  # runs of ordinary text and template-placed added-token ids
        run: list[str] = []
        for text, is_template in segments:
            if not is_template or self._added_split is None:
                run.append(text)
                continue
            for part in self._added_split.split(text):
                if part in self.added_tokens:
                    if run:
                        pieces.append("".join(run))
                        run.clear()
                    pieces.append(self.added_tokens[part])
                elif part:
                    run.append(part)
        if run:
            pieces.append("".join(run))
        ids: list[int] = []
        for k, piece in enumerate(pieces):
            if isinstance(piece, int):
                ids.append(piece)
            else:
                try:
                    ids.extend(self.encode_plain(piece, None if limit is None else max(0, limit - len(ids))))
                except TooManyTokens as e:
                    rest = pieces[k + 1:]
                    total = len(ids) + e.num_tokens + sum(1 if isinstance(p, int) else self._count_plain(p)
                                                          for p in rest)
                    raise TooManyTokens(total, limit) from None
            if limit is not None and len(ids) > limit:
                rest = pieces[k + 1:]
                raise TooManyTokens(len(ids) + sum(1 if isinstance(p, int) else self._count_plain(p) for p in rest),
                                    limit)
        return ids

    def _count_plain(self, text: str) -> int:
        try:
            self.encode_plain(text, 0)
        except TooManyTokens as e:
            return e.num_tokens
        return 0

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.raw.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self.raw.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self.raw.id_to_token(token_id)

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str | None]:
        return [self.raw.id_to_token(i) for i in ids]

    def __len__(self) -> int:
        return self.vocab_size


def _encode(tok: tokenizers.Tokenizer, text: str, add_special_tokens: bool, limit: int | None = None) -> list[int]:
    if len(text) < _GIL_FREE_CHARS:
        enc = tok.encode(text, add_special_tokens=add_special_tokens)
    else:  # without offsets (tokenizers >= 0.21): half the time, and a 6x smaller Encoding to free
        batch = getattr(tok, "encode_batch_fast", tok.encode_batch)
        enc = batch([text], add_special_tokens=add_special_tokens)[0]
    try:
        if limit is not None and len(enc) > limit:
            raise TooManyTokens(len(enc), limit)
        return enc.ids
    finally:
        del enc  # freed under the GIL: tens of bytes per token (strings, masks)
        if len(text) >= _TRIM_CHARS:
            trim_heap()


def trim_heap() -> None:
    """glibc keeps freed memory in per-thread arenas; give it back so a one-off multi-megabyte
    prompt does not leave the process gigabytes larger (no-op without glibc)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _load_libc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


_LIBC = _load_libc()
