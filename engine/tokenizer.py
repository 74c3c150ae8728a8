"""`Tokenizer`: a thin wrapper over a Hugging Face `tokenizers.Tokenizer` (tokenizer.json).

It knows where BOS/EOS are and which ids are special, and nothing about chat formats: the V4 chat
encoding (roles, `<think>`, tool calls) lives in the server's chat-format module, incremental
decoding in `engine/detokenizer.py`.
"""

from __future__ import annotations

import json
from pathlib import Path

import tokenizers

# DeepSeek-V4 defaults, used when tokenizer_config.json is absent or names no bos/eos token.
DEFAULT_BOS_TOKEN = "<｜begin▁of▁sentence｜>"
DEFAULT_EOS_TOKEN = "<｜end▁of▁sentence｜>"
DEFAULT_BOS_TOKEN_ID = 0
DEFAULT_EOS_TOKEN_ID = 1


def _token_content(entry: object) -> str | None:
    """bos/eos in tokenizer_config.json is a string or an AddedToken dict {"content": ...}."""
    if entry is None or isinstance(entry, str):
        return entry
    if isinstance(entry, dict) and isinstance(entry.get("content"), str):
        return entry["content"]
    raise ValueError(f"unrecognised special token entry in tokenizer_config.json: {entry!r}")


class Tokenizer:
    """Text <-> token ids. Special-token strings inside text encode to their single ids."""

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

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of `text`; add_special_tokens runs the tokenizer's post-processor (e.g. adds BOS)."""
        return self.raw.encode(text, add_special_tokens=add_special_tokens).ids

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
