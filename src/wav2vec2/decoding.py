"""From per-frame CTC outputs to text: greedy decoding with word timings and confidences.

Greedy CTC takes the most likely token of every frame, merges repeats and drops the blank.
Each surviving character keeps the frames it spanned, so words get start and end times
(one frame = 320 samples = 20 ms at 16 kHz).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .vocab import Vocabulary


@dataclass
class Word:
    text: str
    start: float  # seconds
    end: float  # seconds
    confidence: float  # mean over the word's characters of their best frame's probability


@dataclass
class Decoded:
    text: str
    words: list[Word]


def best_path(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(frames, vocab) logits -> the most likely token id of each frame and its probability."""
    probs = logits.float().softmax(-1)
    best, ids = probs.max(-1)
    return ids, best


def greedy_decode(ids: torch.Tensor, probs: torch.Tensor, vocab: Vocabulary,
                  seconds_per_frame: float = 0.02, offset: float = 0.0) -> Decoded:
    """Decode the best-path token ids (frames,) with their probabilities (frames,).

    Text follows `transformers`' Wav2Vec2CTCTokenizer.decode, except that runs of spaces are
    collapsed to one. Word times match its `output_word_offsets` (end frame exclusive).
    """
    ids = ids.tolist()
    probs = probs.tolist()
    # (token, first frame, frame after last, best probability) for each run of equal ids
    characters: list[tuple[str, int, int, float]] = []
    start = 0
    for frame in range(1, len(ids) + 1):
        if frame == len(ids) or ids[frame] != ids[start]:
            if ids[start] != vocab.blank:
                characters.append((vocab.token(ids[start]), start, frame, max(probs[start:frame])))
            start = frame
    return words_from_characters(characters, vocab, seconds_per_frame, offset)


def words_from_characters(characters: list[tuple[str, int, int, float]], vocab: Vocabulary,
                          seconds_per_frame: float = 0.02, offset: float = 0.0) -> Decoded:
    """(token, first frame, frame after last, best probability) of each emitted character -> words.

    Shared by the greedy and the beam-search decoders, so that both time words the same way.
    """
    words: list[Word] = []
    current: list[tuple[str, int, int, float]] = []
    for character in characters + [(vocab.word_delimiter, 0, 0, 0.0)]:
        if character[0] == vocab.word_delimiter:
            if current:
                text = "".join(c[0] for c in current)
                if vocab.do_lower_case:
                    text = text.lower()
                words.append(Word(
                    text=text,
                    start=round(offset + current[0][1] * seconds_per_frame, 3),
                    end=round(offset + current[-1][2] * seconds_per_frame, 3),
                    confidence=round(sum(c[3] for c in current) / len(current), 4),
                ))
            current = []
        else:
            current.append(character)
    return Decoded(" ".join(w.text for w in words), words)
