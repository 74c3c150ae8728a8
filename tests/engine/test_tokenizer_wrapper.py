"""Tokenizer wrapper: loading from a model dir, bos/eos resolution, special ids, encode/decode."""

import json

import pytest
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from engine.tokenizer import DEFAULT_BOS_TOKEN, DEFAULT_EOS_TOKEN, Tokenizer

SPECIALS = [DEFAULT_BOS_TOKEN, DEFAULT_EOS_TOKEN, "</think>"]


def train(specials=SPECIALS) -> HFTokenizer:
    raw = HFTokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    raw.train_from_iterator(["hello world 你好 😀", "the quick brown fox"] * 3, trainer)
    raw.add_tokens(["<plain_added>"])  # an added token that is not special
    return raw


@pytest.fixture
def model_dir(tmp_path):
    train().save(str(tmp_path / "tokenizer.json"))
    return tmp_path


def test_from_dir_defaults_without_config(model_dir):
    tok = Tokenizer.from_dir(model_dir)
    assert (tok.bos_token_id, tok.eos_token_id) == (0, 1)
    assert (tok.bos_token, tok.eos_token) == (DEFAULT_BOS_TOKEN, DEFAULT_EOS_TOKEN)
    plain = tok.token_to_id("<plain_added>")
    assert tok.all_special_ids == {0, 1, tok.token_to_id("</think>")} and plain not in tok.all_special_ids
    assert tok.vocab_size == len(tok) == plain + 1 == tok.raw.get_vocab_size(with_added_tokens=True)


def test_encode_decode_and_special_strings(model_dir):
    tok = Tokenizer.from_dir(model_dir)
    text = "hello 你好 😀</think>bye" + DEFAULT_EOS_TOKEN
    ids = tok.encode(text)
    assert ids.count(tok.token_to_id("</think>")) == 1 and ids[-1] == tok.eos_token_id
    assert tok.decode(ids, skip_special_tokens=False) == text
    assert tok.decode(ids) == "hello 你好 😀bye"
    assert tok.convert_ids_to_tokens([0, 1]) == [DEFAULT_BOS_TOKEN, DEFAULT_EOS_TOKEN]
    assert tok.id_to_token(tok.token_to_id("</think>")) == "</think>"
    assert tok.token_to_id("no-such-token") is None
    assert tok.encode("") == []


def test_config_names_bos_eos_as_string_or_added_token_dict(model_dir):
    (model_dir / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": {"__type": "AddedToken", "content": "</think>"}, "eos_token": DEFAULT_BOS_TOKEN}))
    tok = Tokenizer.from_dir(str(model_dir))
    assert tok.bos_token_id == tok.token_to_id("</think>") and tok.eos_token_id == 0


def test_config_with_unknown_token_is_an_error(model_dir):
    (model_dir / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<nope>"}))
    with pytest.raises(ValueError, match="eos token '<nope>'"):
        Tokenizer.from_dir(model_dir)


def test_fallback_ids_when_default_names_are_absent(tmp_path):
    raw = train(specials=["<s>", "</s>"])
    tok = Tokenizer(raw)
    assert (tok.bos_token_id, tok.eos_token_id) == (0, 1) and tok.all_special_ids == {0, 1}


def test_missing_or_invalid_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.json not found"):
        Tokenizer.from_dir(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="invalid tokenizer.json"):
        Tokenizer.from_dir(tmp_path)
    train().save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text("[broken")
    with pytest.raises(ValueError, match="invalid tokenizer_config.json"):
        Tokenizer.from_dir(tmp_path)
