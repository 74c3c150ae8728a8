"""A small deterministic stand-in for the DeepSeek-V4 tokenizer (synthetic checkpoints, tests).

Byte-level BPE trained in-process on the embedded corpus below (no downloads), so any UTF-8 text
round-trips. The V4 special tokens (architecture.md §6.1) are added special tokens with the same
spellings as the real tokenizer (fullwidth bar U+FF5C, lower one-eighth block U+2581); BOS/EOS take
ids 0/1 like the real one, the others get small ids (the real ids ~128800 do not fit a tiny vocab, so
callers must look them up by text, never hard-code them). The trained vocabulary is capped at
`MAX_TRAINED_VOCAB`; a model vocab may be larger than the tokenizer (unused embedding rows).
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

BOS_TOKEN = "<｜begin▁of▁sentence｜>"
EOS_TOKEN = "<｜end▁of▁sentence｜>"
USER_TOKEN = "<｜User｜>"
ASSISTANT_TOKEN = "<｜Assistant｜>"
THINK_START = "<think>"
THINK_END = "</think>"
DSML_TOKEN = "｜DSML｜"
LATEST_REMINDER_TOKEN = "<｜latest_reminder｜>"
TASK_TOKENS = ("<｜action｜>", "<｜query｜>", "<｜authority｜>", "<｜domain｜>", "<｜title｜>", "<｜read_url｜>")

# In id order: BOS = 0, EOS = 1, then the chat / task tokens. `<tool_result>` is plain text in V4.
SPECIAL_TOKENS: tuple[str, ...] = (
    BOS_TOKEN, EOS_TOKEN, USER_TOKEN, ASSISTANT_TOKEN, THINK_START, THINK_END, DSML_TOKEN,
    LATEST_REMINDER_TOKEN, *TASK_TOKENS,
)
BYTE_ALPHABET = 256
MIN_VOCAB = BYTE_ALPHABET + len(SPECIAL_TOKENS)
MAX_TRAINED_VOCAB = 4096  # enough merges for realistic token counts; training stays well under a second
MODEL_MAX_LENGTH = 1048576

_CORPUS = r'''
The quick brown fox jumps over the lazy dog. A language model reads a sequence of tokens and predicts
the next one. The server receives a request, schedules it with other requests, runs the model on a batch
of tokens, samples the next token for every sequence, and streams the text back to the client.
Attention lets every position look at earlier positions. A sliding window keeps the most recent tokens,
while compressed entries summarise long stretches of the past so that a context of one million tokens
still fits into memory. Mixture-of-experts layers route each token to a few experts out of many.
Hello! How are you today? I am fine, thank you. What is the weather like in Paris, London and Tokyo?
Please write a short poem about the sea, the wind, the stars and the moon over the quiet harbour.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 256 1024 4096 65536 3.14159 2.71828 1e-6 -1.5 +7 50% $12.99
Dates and times: 2026-04-24, 12:30:45, Monday, Tuesday, Wednesday, Thursday, Friday, Saturday, Sunday.
The user asked the assistant to explain the answer step by step. First, we read the question carefully.
Then we think about what is known and what is unknown. Finally, we check the result and write it down.
Summary: the function returns the sum of the values; if the list is empty it returns zero instead.
He said, "It's not what you think." She replied: 'Then tell me what it is, and don't leave anything out.'
(parentheses) [brackets] {braces} <angle> a+b=c, x*y/z, a-b, a%b, a^b, a&b, a|b, ~a, !a, a==b, a!=b, a<=b

def fibonacci(n: int) -> int:
    """Return the n-th Fibonacci number."""
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


class Request:
    def __init__(self, request_id: str, prompt_token_ids: list[int], max_tokens: int = 16):
        self.request_id = request_id
        self.prompt_token_ids = prompt_token_ids
        self.output_token_ids: list[int] = []
        self.max_tokens = max_tokens

    def is_finished(self) -> bool:
        return len(self.output_token_ids) >= self.max_tokens


import json
import torch

x = torch.randn(4, 8, dtype=torch.float32)
y = torch.nn.functional.softmax(x @ x.T / 8 ** 0.5, dim=-1)
print(json.dumps({"shape": list(y.shape), "sum": float(y.sum())}, indent=2))

for i in range(10):
    if i % 2 == 0:
        continue
    while True:
        break
try:
    value = int("123")
except ValueError as error:
    raise RuntimeError("could not parse the value") from error

#include <stdio.h>
int main(int argc, char **argv) {
    for (int i = 0; i < argc; ++i) {
        printf("%d: %s\n", i, argv[i]);
    }
    return 0;
}

fn main() {
    let v: Vec<u32> = (0..10).map(|x| x * x).collect();
    println!("{:?}", v);
}

function add(a, b) { return a + b; }
const items = [1, 2, 3].map((item) => item * 2);
SELECT name, COUNT(*) FROM users WHERE age > 21 GROUP BY name ORDER BY name;
{"model": "deepseek-v4", "messages": [{"role": "user", "content": "Hi"}], "stream": true, "max_tokens": 64}
<tool_result>{"temperature": 21, "unit": "celsius"}</tool_result>
<html><body><p class="note">Hello, world!</p></body></html>
$ pip install v4serve && python -m server --model ./ckpt --port 8000
你好，世界！今天天气很好。我们一起学习语言模型。 こんにちは世界。 안녕하세요. Привет, мир! 😀🚀✨
'''


def build_tokenizer(vocab_size: int) -> Tokenizer:
    """Train the byte-level BPE (<= min(vocab_size, MAX_TRAINED_VOCAB) tokens incl. specials)."""
    if vocab_size < MIN_VOCAB:
        raise ValueError(f"vocab_size {vocab_size} too small: need >= {MIN_VOCAB} (256 bytes + specials)")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=min(vocab_size, MAX_TRAINED_VOCAB),
        min_frequency=1,
        special_tokens=list(SPECIAL_TOKENS),  # ids 0.. in this order
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    lines = [ln for ln in _CORPUS.splitlines(keepends=True) if ln.strip()]
    tok.train_from_iterator(lines, trainer=trainer)
    for i, t in enumerate(SPECIAL_TOKENS):
        assert tok.token_to_id(t) == i, f"special token {t!r} got id {tok.token_to_id(t)}, expected {i}"
    assert tok.get_vocab_size() <= vocab_size
    return tok


def tokenizer_config(tok: Tokenizer) -> dict:
    """HF `tokenizer_config.json` for `PreTrainedTokenizerFast` (BOS is added by the chat encoder)."""
    decoder = {
        str(tok.token_to_id(t)): {
            "content": t, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
            "special": True,
        }
        for t in SPECIAL_TOKENS
    }
    return {
        "add_bos_token": False,
        "add_eos_token": False,
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "pad_token": EOS_TOKEN,
        "clean_up_tokenization_spaces": False,
        "legacy": True,
        "model_max_length": MODEL_MAX_LENGTH,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "added_tokens_decoder": decoder,
    }


def write_tokenizer_files(out_dir: str | Path, vocab_size: int) -> Tokenizer:
    """Write `tokenizer.json` + `tokenizer_config.json` into `out_dir`; returns the tokenizer."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(vocab_size)
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(tok), indent=2, ensure_ascii=False))
    return tok
