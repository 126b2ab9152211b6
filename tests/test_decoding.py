"""Greedy CTC decoding against transformers' Wav2Vec2CTCTokenizer and against hand-made paths."""

from __future__ import annotations

import pytest
import torch
import transformers

from wav2vec2.decoding import best_path, greedy_decode
from wav2vec2.vocab import Vocabulary

from .conftest import VOCAB


@pytest.fixture(scope="module")
def vocab(checkpoints) -> Vocabulary:
    return Vocabulary.from_folder(checkpoints["base"])


def test_vocabulary_reads_the_tokenizer_files(vocab):
    assert vocab.tokens[VOCAB["|"]] == "|" and vocab.blank == VOCAB["<pad>"] == 0
    assert vocab.word_delimiter == "|" and len(vocab) == len(VOCAB)


def test_hand_made_path(vocab):
    ids = [VOCAB[t] for t in ["<pad>", "H", "H", "I", "<pad>", "|", "|", "T", "<pad>", "O", "O", "<pad>"]]
    probs = torch.linspace(0.5, 0.9, len(ids))
    decoded = greedy_decode(torch.tensor(ids), probs, vocab)
    assert decoded.text == "HI TO"
    hi, to = decoded.words
    assert (hi.text, hi.start, hi.end) == ("HI", 0.02, 0.08)  # frames 1..3, end exclusive
    assert (to.text, to.start, to.end) == ("TO", 0.14, 0.22)
    assert hi.confidence == pytest.approx((max(probs[1:3]).item() + probs[3].item()) / 2, abs=1e-4)


def test_repeated_letters_need_a_blank_between_them(vocab):
    ids = [VOCAB[t] for t in ["L", "L", "<pad>", "L", "|"]]
    assert greedy_decode(torch.tensor(ids), torch.ones(len(ids)), vocab).text == "LL"


@pytest.mark.parametrize("seed", range(5))
def test_random_logits_decode_like_transformers(checkpoints, vocab, seed):
    processor = transformers.Wav2Vec2Processor.from_pretrained(checkpoints["base"])
    logits = torch.randn(200, len(VOCAB), generator=torch.Generator().manual_seed(seed)) * 3
    logits[:, VOCAB["|"]] += 1.5  # plenty of word boundaries
    ids, probs = best_path(logits)
    decoded = greedy_decode(ids, probs, vocab)
    expected = processor.batch_decode(ids[None])[0]
    assert decoded.text == " ".join(expected.split())
    offsets = processor.tokenizer.decode(ids, output_word_offsets=True)["word_offsets"]
    assert [(w.text, w.start, w.end) for w in decoded.words] == [
        (o["word"], round(o["start_offset"] * 0.02, 3), round(o["end_offset"] * 0.02, 3)) for o in offsets]
