"""Text normalisation, encoding and new vocabularies, with transformers' tokenizer as the oracle."""

from __future__ import annotations

import json

import pytest
import transformers

from wav2vec2.errors import DataError
from wav2vec2.vocab import Vocabulary, build_vocabulary, normalize_text

from .conftest import VOCAB

SENTENCES = ["HE HOPED THERE WOULD BE STEW FOR DINNER", "IT'S O'BRIEN'S TURN", "A",
             "QUICK ZEPHYRS BLOW VEXING DAFT JIM", "X Y Z"]


def english() -> Vocabulary:
    """The layout of facebook/wav2vec2-base-960h (the conftest checkpoints' vocabulary)."""
    tokens = [""] * len(VOCAB)
    for token, index in VOCAB.items():
        tokens[index] = token
    return Vocabulary(tokens)


def tokenizer_for(vocab: Vocabulary, folder) -> transformers.Wav2Vec2CTCTokenizer:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in vocab.files().items():
        (folder / name).write_text(text, encoding="utf-8")
    return transformers.Wav2Vec2CTCTokenizer.from_pretrained(folder)


@pytest.mark.parametrize("text, expected", [
    ("Hello,  world!", "HELLO WORLD"),
    ("  It’s O'Brien‘s\tturn.\n", "IT'S O'BRIEN'S TURN"),
    ("well-known; (really) \"quoted\"", "WELL KNOWN REALLY QUOTED"),
    ("MDPH</s>CK<s>MY <unk>P<pad>", "MDPHCKMY P"),  # a random model's special tokens are not words
    ("A|B", "A B"),
    ("Naïve café 42", "NAÏVE CAFÉ 42"),  # kept, so that unknown_characters can report them
    ("e\u0301t\u00e9", "ÉTÉ"),  # decomposed accents are composed (NFC)
    ("...", ""),
])
def test_normalize_for_an_upper_case_vocabulary(text, expected):
    assert normalize_text(text, english()) == expected


def test_normalize_follows_the_vocabulary():
    lower = Vocabulary(["<pad>", "<s>", "</s>", "<unk>", "|", *"abc-"])
    assert normalize_text("A-B, C’s", lower) == "a-b cs"  # it has "-" but no apostrophe
    with_apostrophe = Vocabulary(["<pad>", "<s>", "</s>", "<unk>", "|", *"ab'"])
    assert normalize_text("A-B’s", with_apostrophe) == "a b's"
    mixed = Vocabulary(["<pad>", "|", *"aBc"])
    assert normalize_text("Abc", mixed) == "Abc"
    assert normalize_text("Well-known, isn’t it?") == "WELL KNOWN ISN'T IT"


def test_encode_agrees_with_transformers(tmp_path):
    vocab = english()
    tokenizer = tokenizer_for(vocab, tmp_path / "english")
    for sentence in SENTENCES:
        assert normalize_text(sentence, vocab) == sentence
        assert vocab.encode(sentence) == tokenizer(sentence).input_ids
    # unknown characters: an error by default, the unk token as in transformers when allowed
    text = "CAFÉ NO 42"
    assert vocab.unknown_characters(text) == {"É", "4", "2"}
    with pytest.raises(DataError, match="'2' '4' 'É'"):
        vocab.encode(text)
    assert vocab.encode(text, allow_unknown=True) == tokenizer(text).input_ids
    assert vocab.unknown_characters("GOOD TEXT") == set()


def test_build_vocabulary_layout_and_round_trip(tmp_path):
    texts = ["Hello world", "It’s here.", "zoë, 1"]
    vocab = build_vocabulary(texts)
    assert vocab.tokens == ["<pad>", "<s>", "</s>", "<unk>", "|",
                            "'", "1", "D", "E", "H", "I", "L", "O", "R", "S", "T", "W", "Z", "Ë"]
    assert vocab.tokens[:5] == list(VOCAB)[:5] and vocab.blank == 0  # base-960h's special ids
    for text in texts:
        assert normalize_text(text, vocab) == normalize_text(text)
    tokenizer = tokenizer_for(vocab, tmp_path / "built")
    assert tokenizer.get_vocab() == {t: i for i, t in enumerate(vocab.tokens)}
    assert Vocabulary.from_folder(tmp_path / "built") == vocab
    assert json.loads((tmp_path / "built" / "vocab.json").read_text(encoding="utf-8"))["Ë"] == 18
    for text in texts:
        normalised = normalize_text(text, vocab)
        assert vocab.encode(normalised) == tokenizer(normalised).input_ids
    with pytest.raises(DataError, match="no characters"):
        build_vocabulary(["...", ""])
