"""Guided (structured) decoding: regular patterns, JSON schemas and free JSON compiled to byte DFAs,
and per-state token masks over the tokenizer's vocabulary."""
