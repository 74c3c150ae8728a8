"""`speculative_config` (vLLM's names): {"method": "mtp", "num_speculative_tokens": k}, k = 1..4."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

MAX_SPECULATIVE_TOKENS = 4
_KEYS = ("method", "num_speculative_tokens")


@dataclass(frozen=True)
class SpeculativeConfig:
    method: str  # "mtp": V4's own multi-token-prediction block drafts (models/mtp.py)
    num_speculative_tokens: int  # k: draft tokens per step (the MTP block applied k times)
    extra: dict = field(default_factory=dict, compare=False)  # unused (always empty: unknown keys are errors)

    @classmethod
    def parse(cls, value) -> "SpeculativeConfig | None":
        """None / {} -> None (off); a dict, a JSON string or a SpeculativeConfig -> validated config."""
        if value is None or isinstance(value, SpeculativeConfig):
            return value
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as e:
                raise ValueError(f"speculative_config is not valid JSON: {e}") from None
        if not isinstance(value, dict):
            raise ValueError(f"speculative_config must be a JSON object, got {type(value).__name__}")
        if not value:
            return None
        unknown = sorted(set(value) - set(_KEYS))
        if unknown:
            raise ValueError(f"speculative_config: unsupported keys {unknown} (supported: {list(_KEYS)})")
        method = value.get("method", "mtp")
        if method not in ("mtp", "deepseek_mtp"):
            raise ValueError(f"speculative_config: method {method!r} is not supported (only 'mtp')")
        k = value.get("num_speculative_tokens")
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_SPECULATIVE_TOKENS:
            raise ValueError("speculative_config: num_speculative_tokens must be an integer in "
                             f"[1, {MAX_SPECULATIVE_TOKENS}], got {k!r}")
        return cls("mtp", k)
