"""IncrementalDetokenizer against full decodes, with a tiny byte-level BPE trained in the test."""

import random

import pytest
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from engine.detokenizer import IncrementalDetokenizer
from engine.tokenizer import Tokenizer

SPECIALS = ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "</think>"]
CORPUS = ["Hello world, the quick brown fox jumps over the lazy dog.",
          "你好世界，今天天气很好。中文测试",
          "emoji 😀 🎉 👍🏽 mixed 中文 and English</think> done",
          "stop STOP st0p ### end"] * 3


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    raw = HFTokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=330, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    raw.train_from_iterator(CORPUS, trainer)
    return Tokenizer(raw)


def byte_symbols(tok, text):
    """The byte-level alphabet symbols of text's UTF-8 bytes (each is a single token)."""
    return "".join(piece for piece, _ in tok.raw.pre_tokenizer.pre_tokenize_str(text))


def stream(tok, ids, prompt=(), **kw):
    d = IncrementalDetokenizer(tok, list(prompt), **kw)
    pieces = []
    for t in ids:
        step = d.add_token(t)
        pieces.append(step.new_text)
        if step.stop_str is not None:
            return d, pieces, step.stop_str
    pieces.append(d.flush())
    return d, pieces, d.stop_str


@pytest.mark.parametrize("skip", [True, False])
def test_random_sequences_match_full_decode(tok, skip):
    rng = random.Random(skip)
    for _ in range(300):
        ids = [rng.randrange(tok.vocab_size) for _ in range(rng.randrange(1, 50))]
        prompt = [rng.randrange(tok.vocab_size) for _ in range(rng.randrange(0, 8))]
        d, pieces, _ = stream(tok, ids, prompt, skip_special_tokens=skip)
        full = tok.decode(ids, skip_special_tokens=skip)
        assert "".join(pieces) == full == d.text
        assert d.num_tokens == len(ids)


def test_real_text_round_trip_and_special_tokens(tok):
    text = "Hello 你好世界 😀👍🏽</think> done<｜end▁of▁sentence｜>"
    ids = tok.encode(text)
    assert tok.token_to_id("</think>") in ids
    _, pieces, _ = stream(tok, ids, skip_special_tokens=False)
    assert "".join(pieces) == text
    _, pieces, _ = stream(tok, ids, skip_special_tokens=True)
    assert "".join(pieces) == "Hello 你好世界 😀👍🏽 done"


def test_multibyte_char_split_across_tokens_is_never_half_emitted(tok):
    # force one token per byte: byte-level alphabet symbols are single tokens
    byte_ids = [tok.token_to_id(sym) for sym in byte_symbols(tok, "你😀")]
    assert len(byte_ids) == 7 and None not in byte_ids
    d = IncrementalDetokenizer(tok, [])
    steps = [d.add_token(t).new_text for t in byte_ids]
    assert steps == ["", "", "你", "", "", "", "😀"]
    assert "\ufffd" not in d.text


def test_invalid_bytes_are_emitted_as_replacement_eventually(tok):
    cont = tok.token_to_id(byte_symbols(tok, "你")[1])  # a lone UTF-8 continuation byte
    ids = [cont] * 20 + tok.encode("ok")
    d, pieces, _ = stream(tok, ids)
    assert "".join(pieces) == tok.decode(ids) == "\ufffd" * 20 + "ok"
    assert sum(len(p) for p in pieces[:-1]) > 0  # released before the end, not only at flush


@pytest.mark.parametrize("include", [False, True])
def test_stop_string_spanning_tokens(tok, include):
    text = "the quick brown fox jumps over the lazy dog"
    ids = tok.encode(text)
    stop = "fox jumps"
    d = IncrementalDetokenizer(tok, [], stop=[stop, "never"], include_stop_str_in_output=include)
    emitted = ""
    for t in ids:
        step = d.add_token(t)
        emitted += step.new_text
        # nothing emitted so far may end with the beginning of a stop string
        if step.stop_str is None:
            assert not any(emitted.endswith(stop[:k]) for k in range(1, len(stop)))
        else:
            break
    assert step.stop_str == stop and d.finished
    assert emitted == d.text == ("the quick brown fox jumps" if include else "the quick brown ")
    assert d.add_token(ids[-1]).new_text == "" and d.flush() == ""


def test_random_stop_strings_match_reference(tok):
    rng = random.Random(7)
    checked = 0
    for _ in range(400):
        ids = [rng.randrange(3, tok.vocab_size) for _ in range(rng.randrange(2, 40))]
        full = tok.decode(ids)
        a = rng.randrange(len(full))
        stop = full[a:a + rng.randrange(1, 5)]
        if "\ufffd" in stop:
            continue
        include = rng.random() < 0.5
        d, pieces, stop_str = stream(tok, ids, stop=[stop], include_stop_str_in_output=include)
        i = full.find(stop)
        assert stop_str == stop
        assert "".join(pieces) == (full[:i + len(stop)] if include else full[:i])
        checked += 1
    assert checked > 100


def test_held_back_text_is_released_by_flush(tok):
    ids = tok.encode("the end ##")
    d, pieces, stop_str = stream(tok, ids, stop=["###"])
    assert stop_str is None and pieces[-1].endswith("##") and "".join(pieces) == "the end ##"


def test_earliest_stop_wins_and_unrelated_text_not_held(tok):
    d = IncrementalDetokenizer(tok, [], stop=["dog", "lazy"])
    out = d.add_tokens(tok.encode("over the lazy dog"))
    assert out.stop_str == "lazy" and out.new_text == "over the "
    d = IncrementalDetokenizer(tok, [], stop=["xyz"])
    assert d.add_tokens(tok.encode("hello")).new_text == "hello"  # no char can start "xyz"


def test_prompt_context_and_long_runs_of_skipped_specials(tok):
    prompt = tok.encode("Hello world")
    eos = tok.eos_token_id
    ids = [eos] * 100 + tok.encode(" 你好") + [eos] * 3
    d, pieces, _ = stream(tok, ids, prompt)
    assert "".join(pieces) == " 你好"
    assert len(d._ids) - d._prefix < 64  # the decode window stays short through 100 silent tokens


def test_stop_strings_ignored_before_min_tokens(tok):
    """vLLM semantics: a stop string inside the first min_tokens tokens does not stop the sequence."""
    ids = tok.encode("ab ab ab ab")
    first = len(tok.encode("ab"))
    d, pieces, stop = stream(tok, ids, stop=["ab"], min_tokens=first + 1)
    assert stop == "ab" and d.text.startswith("ab") and len(d.text) > 2
    d, pieces, stop = stream(tok, ids, stop=["ab"], min_tokens=0)
    assert stop == "ab" and d.text == ""


# ---- one decode per token, delta reads ---------------------------------------------------------
class CountingDecoder:
    """A decoder that counts tokenizer decodes (no `.raw`: the detokenizer calls this decode)."""

    def __init__(self, tok):
        self.tok, self.calls = tok, 0

    def decode(self, ids, skip_special_tokens=True):
        self.calls += 1
        return self.tok.decode(ids, skip_special_tokens=skip_special_tokens)


class NoCache(dict):
    """A token-text cache that never hits: every window is decoded (the two-decode scheme)."""

    def get(self, key, default=None):
        return default

    def __setitem__(self, key, value):
        pass


def test_one_decode_per_token_on_the_common_path(tok):
    ids = tok.encode("Hello world, the quick brown fox jumps over the lazy dog. " * 3)
    counting, cache = CountingDecoder(tok), {}
    IncrementalDetokenizer(counting, [], token_text_cache=cache).add_tokens(ids)  # warms the shared cache
    counting.calls = 0
    d = IncrementalDetokenizer(counting, tok.encode("Hi"), token_text_cache=cache)
    out = d.add_tokens(ids)
    assert out.new_text + d.flush() == tok.decode(ids)
    assert counting.calls == 1 + len(ids)  # the prompt context once, then one decode per token


def metaspace_tokenizer() -> Tokenizer:
    """SentencePiece-style (Metaspace, byte fallback): a token's text depends on its left context."""
    raw = HFTokenizer(models.BPE(byte_fallback=True))
    raw.pre_tokenizer = pre_tokenizers.Metaspace()
    raw.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    trainer = trainers.BpeTrainer(vocab_size=600, show_progress=False,
                                  special_tokens=SPECIALS + [f"<0x{b:02X}>" for b in range(256)])
    raw.train_from_iterator(CORPUS, trainer)
    return Tokenizer(raw)


@pytest.mark.parametrize("which", ["bytelevel", "metaspace"])
def test_shared_token_cache_changes_nothing(tok, which):
    """The cached single-token texts give exactly what decoding every window gives."""
    t = tok if which == "bytelevel" else metaspace_tokenizer()
    assert t.decode(t.encode("a b")) == "a b"
    rng = random.Random(3)
    cache = {}
    for _ in range(300):
        ids = [rng.randrange(t.vocab_size) for _ in range(rng.randrange(1, 40))]
        prompt = [rng.randrange(t.vocab_size) for _ in range(rng.randrange(0, 8))]
        full = t.decode(ids)
        stop = [full[len(full) // 2:len(full) // 2 + 2]] if full and rng.random() < 0.5 else []
        runs = [stream(t, ids, prompt, stop=stop, token_text_cache=c) for c in (cache, NoCache())]
        (d1, p1, s1), (d2, p2, s2) = runs
        assert (p1, s1, d1.text) == (p2, s2, d2.text)
    assert cache  # the shared cache was used


def test_take_new_text_concatenates_to_text(tok):
    ids = tok.encode("Hello 你好世界 😀👍🏽 the quick brown fox " * 12)  # > 64 pieces: compaction kicks in
    d = IncrementalDetokenizer(tok, [])
    taken = []
    for i, t in enumerate(ids):
        d.add_token(t)
        taken.append(d.take_new_text())
        if i % 7 == 0:
            assert "".join(taken) == d.text  # reading the whole text in between changes nothing
    d.flush()
    taken.append(d.take_new_text())
    assert "".join(taken) == d.text == tok.decode(ids)
    assert d.take_new_text() == ""


@pytest.mark.parametrize("include", [False, True])
def test_stop_string_inside_a_multibyte_char_split_across_tokens(tok, include):
    """The stop string starts in the middle of a character whose bytes arrive one token at a time."""
    text = "ab你好世界cd"
    ids = [tok.token_to_id(sym) for sym in byte_symbols(tok, text)]
    assert None not in ids and len(ids) == len(text.encode())
    stop = "好世"
    d = IncrementalDetokenizer(tok, [], stop=[stop], include_stop_str_in_output=include)
    emitted = ""
    for t in ids:
        step = d.add_token(t)
        emitted += step.new_text
        assert "\ufffd" not in emitted
        if step.stop_str is not None:
            break
        assert not emitted.endswith("好")  # a possible stop-string start is held back
    assert step.stop_str == stop and d.finished
    assert emitted == d.text == ("ab你好世" if include else "ab你")
