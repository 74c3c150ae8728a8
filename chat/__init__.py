"""The DeepSeek-V4 chat format, shared by the engine's offline `LLM.chat` and the HTTP server:
`encoder.py` renders messages / tools into prompt segments, `reasoning.py` resolves the reasoning
modes, `output_parser.py` splits generated text into reasoning, content and tool calls. It imports
nothing of engine/ or server/ (docs/architecture.md, import rule)."""
