"""The synthetic byte-level BPE tokenizer: special tokens, byte round trips, HF files."""

import json

import pytest

from models.synthetic_tokenizer import (
    ASSISTANT_TOKEN,
    BOS_TOKEN,
    DSML_TOKEN,
    EOS_TOKEN,
    LATEST_REMINDER_TOKEN,
    MIN_VOCAB,
    SPECIAL_TOKENS,
    THINK_END,
    THINK_START,
    USER_TOKEN,
    build_tokenizer,
    write_tokenizer_files,
)


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer(512)


def test_special_token_spellings_and_ids(tok):
    assert BOS_TOKEN == "<\uff5cbegin\u2581of\u2581sentence\uff5c>"
    assert EOS_TOKEN == "<\uff5cend\u2581of\u2581sentence\uff5c>"
    assert DSML_TOKEN == "\uff5cDSML\uff5c"
    assert tok.token_to_id(BOS_TOKEN) == 0 and tok.token_to_id(EOS_TOKEN) == 1
    for t in (USER_TOKEN, ASSISTANT_TOKEN, THINK_START, THINK_END, DSML_TOKEN, LATEST_REMINDER_TOKEN):
        assert tok.token_to_id(t) is not None
    assert tok.token_to_id("<tool_result>") is None  # plain text in V4
    assert len(set(tok.token_to_id(t) for t in SPECIAL_TOKENS)) == len(SPECIAL_TOKENS)


def test_special_tokens_are_single_tokens_in_text(tok):
    ids = tok.encode("<｜User｜>hi").ids
    assert ids[0] == tok.token_to_id(USER_TOKEN) and len(ids) >= 2
    text = (f"{BOS_TOKEN}sys{USER_TOKEN}q{ASSISTANT_TOKEN}{THINK_START}r{THINK_END}a"
            f"\n\n<{DSML_TOKEN}tool_calls>{EOS_TOKEN}")
    ids = tok.encode(text).ids
    for t in (BOS_TOKEN, USER_TOKEN, ASSISTANT_TOKEN, THINK_START, THINK_END, DSML_TOKEN, EOS_TOKEN):
        assert ids.count(tok.token_to_id(t)) == 1, t
    assert tok.decode(ids, skip_special_tokens=False) == text
    assert tok.decode(ids, skip_special_tokens=True) == "sysqra\n\n<tool_calls>"


@pytest.mark.parametrize("text", [
    "Hello, world!", "  leading spaces and\ttabs\n\nnewlines ", "你好，世界", "emoji 😀🚀 and é ß",
    "<tool_result>{\"x\": 1}</tool_result>", "def f(x):\n    return x ** 2\n", "\x00\x7f",
])
def test_byte_level_round_trip(tok, text):
    ids = tok.encode(text).ids
    assert all(0 <= i < tok.get_vocab_size() for i in ids)
    assert tok.decode(ids, skip_special_tokens=False) == text


def test_no_bos_added_and_merges_learned(tok):
    ids = tok.encode("the quick brown fox").ids
    assert tok.token_to_id(BOS_TOKEN) not in ids
    assert len(ids) < len("the quick brown fox")  # BPE merges actually compress text


def test_vocab_limits_and_determinism():
    assert build_tokenizer(512).get_vocab_size() <= 512
    small = build_tokenizer(MIN_VOCAB)
    assert small.get_vocab_size() == MIN_VOCAB
    big = build_tokenizer(129280)
    assert 1000 < big.get_vocab_size() <= 129280
    assert big.to_str() == build_tokenizer(129280).to_str()
    with pytest.raises(ValueError, match="too small"):
        build_tokenizer(MIN_VOCAB - 1)


def test_written_files_load_in_transformers(tmp_path):
    write_tokenizer_files(tmp_path, 512)
    cfg = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert cfg["tokenizer_class"] == "PreTrainedTokenizerFast" and cfg["add_bos_token"] is False
    assert cfg["added_tokens_decoder"]["0"]["content"] == BOS_TOKEN
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast.from_pretrained(str(tmp_path))
    assert hf.bos_token_id == 0 and hf.eos_token_id == 1
    ids = hf.encode(f"{USER_TOKEN}你好", add_special_tokens=True)
    assert ids[0] == hf.convert_tokens_to_ids(USER_TOKEN)
    assert hf.decode(ids) == f"{USER_TOKEN}你好"
