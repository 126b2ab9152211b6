"""Decoding on CPU: what beam search adds to the real-time factor of the base model.

Targets: beam 100 with a 4-gram adds at most 0.05 to the real-time factor of the base model on
2 threads (the network itself: about 0.1); 300 hotwords add at most 0.02 more.

* Inputs: synthetic log-probabilities of the base model's shape (50 frames a second, the 32 tokens
  of facebook/wav2vec2-base-960h), as peaky as a trained model's: each character of a known text
  holds 1-3 frames, blanks fill the gaps (the blank is the runner-up on a character's frames), a
  word delimiter frame separates words (2% of the time only nearly: a blank 2-6 nats above the
  delimiter, so greedy runs the two words together), and 5% of the character frames have a rival letter
  close to (sometimes above) the right one, so greedy decoding makes mistakes that an LM can fix. Random weights would give nearly uniform
  posteriors: the worst case for pruning, and nothing like a trained model.
* The text: sentences of a Markov chain over 2000 made-up words (Zipf-distributed successors);
  the 4-gram is estimated with `wav2vec2.lm.estimate` from other sentences of the same chain.
* Rows: greedy (`best_path` + `greedy_decode`, from the logits), then `wav2vec2.beam` at beam 100:
  without LM, with the 4-gram, with the 4-gram and a lexicon, with 300 hotwords (half of them
  words the LM lacks). If flashlight-text is importable, its lexicon decoder with the same LM
  (through its own KenLM) is timed on the same inputs.
* Columns: decoding seconds per second of audio (the median of --repeats runs over all
  utterances), the word error rate against the true text, and how many utterances decode to a
  different text than greedy's.

Usage: python benchmarks/decoding.py [--seconds 120] [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import jiwer
import numpy as np
import torch

from machine import describe_machine
from wav2vec2.beam import BeamDecoder, BeamSettings
from wav2vec2.decoding import best_path, greedy_decode
from wav2vec2.lm import estimate, load_lm, write_arpa
from wav2vec2.vocab import SPECIAL_TOKENS, Vocabulary

LETTERS = "ETAONISRHDLUMWCFGYPBVK'XJQZ"  # base-960h's order
VOCAB = Vocabulary(list(SPECIAL_TOKENS) + list(LETTERS))
FRAMES_PER_SECOND = 50
UTTERANCE_SECONDS = 10.0
CONFUSION = 0.05  # letter frames with a close rival
TARGET_BEAM_LM = 0.05
TARGET_HOTWORDS = 0.02


def made_up_words(count: int, rng: np.random.Generator) -> list[str]:
    frequency = np.array([12.7, 9.1, 8.2, 7.5, 7.0, 6.7, 6.3, 6.0, 6.1, 4.3, 4.0, 2.8, 2.4, 2.4, 2.8, 2.2, 2.0,
                          2.0, 1.9, 1.5, 1.0, 0.8, 0.3, 0.2, 0.2, 0.1, 0.1])
    letters = [c for c in LETTERS]
    words: set[str] = set()
    while len(words) < count:
        length = int(rng.integers(2, 10))
        words.add("".join(rng.choice(letters, size=length, p=frequency / frequency.sum())))
    return sorted(words)


class Chain:
    """Sentences of a first-order Markov chain: each word has 20 successors with Zipf weights."""

    def __init__(self, words: list[str], rng: np.random.Generator):
        self.words = words
        self.successors = rng.integers(len(words), size=(len(words), 20))
        weights = 1.0 / np.arange(1, 21)
        self.weights = weights / weights.sum()

    def sentence(self, rng: np.random.Generator) -> list[str]:
        word = int(rng.integers(len(self.words)))
        out = [self.words[word]]
        for _ in range(int(rng.integers(4, 16))):
            word = int(self.successors[word, rng.choice(20, p=self.weights)])
            out.append(self.words[word])
        return out


def emissions(words: list[str], seconds: float, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """(frames, 32) log-probabilities of about `seconds` of speech saying the first words of `words`,
    and the text said."""
    ids = VOCAB.ids
    frames: list[int] = [VOCAB.blank] * int(rng.integers(5, 20))
    hesitant: list[int] = []  # frames where the model almost put a word delimiter
    said = []
    for word in words:
        for i, letter in enumerate(word):
            frames += [ids[letter]] * int(rng.integers(1, 4))
            gap = int(rng.integers(0, 4))
            if i + 1 < len(word) and word[i + 1] == letter:
                gap = max(gap, 1)
            frames += [VOCAB.blank] * gap
        if rng.random() >= 0.98:
            hesitant.append(len(frames))
        frames += [VOCAB.blank if hesitant and hesitant[-1] == len(frames) else ids["|"]]
        frames += [VOCAB.blank] * int(rng.integers(0, 4))
        said.append(word)
        if len(frames) >= seconds * FRAMES_PER_SECOND:
            break
    target = np.array(frames)
    letter = target >= len(SPECIAL_TOKENS)
    logits = rng.normal(0.0, 1.0, (len(target), len(VOCAB)))
    logits[np.arange(len(target)), target] += rng.normal(12.0, 1.5, len(target))
    # on a letter's frames the blank is often the runner-up, and sometimes another letter is close
    logits[letter, VOCAB.blank] = logits[letter, target[letter]] - rng.uniform(1.0, 7.0, letter.sum())
    confused = np.flatnonzero(letter & (rng.random(len(target)) < CONFUSION))
    rivals = rng.integers(len(SPECIAL_TOKENS), len(VOCAB), size=len(confused))
    logits[confused, rivals] = logits[confused, target[confused]] - rng.uniform(-1.0, 3.0, len(confused))
    logits[hesitant, ids["|"]] = logits[hesitant, VOCAB.blank] - rng.uniform(2.0, 6.0, len(hesitant))
    logits -= np.logaddexp.reduce(logits, axis=1, keepdims=True)
    return logits.astype(np.float32), " ".join(said)


def ours(decoder: BeamDecoder):
    return lambda log_probs: decoder.decode(log_probs).text


def greedy(log_probs: np.ndarray) -> str:
    ids, probs = best_path(torch.from_numpy(log_probs))
    return greedy_decode(ids, probs, VOCAB).text


def flashlight(arpa: Path, lexicon_words: list[str], beam: int, lm_weight: float, word_score: float):
    """flashlight-text's lexicon decoder with its KenLM (None if flashlight-text is not installed)."""
    try:
        from flashlight.lib.text.decoder import (CriterionType, KenLM, LexiconDecoder, LexiconDecoderOptions,
                                                 SmearingMode, Trie)
        from flashlight.lib.text.dictionary import Dictionary, create_word_dict
    except ImportError:
        return None
    tokens = Dictionary(VOCAB.tokens)
    lexicon = {word: [list(word) + ["|"]] for word in lexicon_words}
    word_dict = create_word_dict({**lexicon, "<unk>": []})
    lm = KenLM(str(arpa), word_dict)
    trie = Trie(len(VOCAB), VOCAB.ids["|"])
    start = lm.start(False)
    for word, spellings in lexicon.items():
        index = word_dict.get_index(word)
        _, score = lm.score(start, index)
        for spelling in spellings:
            trie.insert([tokens.get_index(t) for t in spelling], index, score)
    trie.smear(SmearingMode.MAX)
    options = LexiconDecoderOptions(beam_size=beam, beam_size_token=len(VOCAB), beam_threshold=25.0,
                                    lm_weight=lm_weight, word_score=word_score, unk_score=float("-inf"),
                                    sil_score=0.0, log_add=False, criterion_type=CriterionType.CTC)
    decoder = LexiconDecoder(options, trie, lm, VOCAB.ids["|"], VOCAB.blank, word_dict.get_index("<unk>"), [],
                             False)

    def decode(log_probs: np.ndarray) -> str:
        emissions = np.ascontiguousarray(log_probs, dtype=np.float32)
        best = decoder.decode(emissions.ctypes.data, emissions.shape[0], emissions.shape[1])[0]
        return " ".join(word_dict.get_entry(w) for w in best.words if w >= 0)

    return decode


def measure(decode, utterances: list[np.ndarray], repeats: int) -> tuple[float, list[str]]:
    """Median seconds over `repeats` runs of decoding every utterance, and the texts."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        texts = [decode(u) for u in utterances]
        times.append(time.perf_counter() - started)
    return statistics.median(times), texts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=120.0, help="seconds of audio, in 10 s utterances")
    parser.add_argument("--repeats", type=int, default=3, help="runs per row; the median is shown")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the greedy row uses torch)")
    parser.add_argument("--beam-size", type=int, default=100, help="beam size of every beam row")
    parser.add_argument("--lm-sentences", type=int, default=20000, help="sentences to estimate the 4-gram from")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(describe_machine())

    rng = np.random.default_rng(0)
    words = made_up_words(2000, rng)
    chain = Chain(words, rng)
    started = time.perf_counter()
    model = estimate((chain.sentence(rng) for _ in range(args.lm_sentences)), order=4)
    print(f"4-gram: {', '.join(map(str, model.sizes()))} n-grams, estimated in {time.perf_counter() - started:.1f} s")
    utterances, truths = [], []
    for _ in range(max(1, round(args.seconds / UTTERANCE_SECONDS))):
        text = [w for _ in range(10) for w in chain.sentence(rng)]
        log_probs, said = emissions(text, UTTERANCE_SECONDS, rng)
        utterances.append(log_probs)
        truths.append(said)
    audio_seconds = sum(len(u) for u in utterances) / FRAMES_PER_SECOND
    unknown = [w for w in made_up_words(400, np.random.default_rng(1)) if w not in model.vocabulary]
    hotwords = [f"{w}:5" for w in [*rng.choice(words, 150, replace=False), *unknown[:150]]]

    with tempfile.TemporaryDirectory() as folder:
        arpa = Path(folder) / "lm.arpa"
        write_arpa(model, arpa)
        lm = load_lm(arpa)
        settings = BeamSettings(beam_size=args.beam_size)
        rows = [
            ("greedy", greedy),
            (f"beam {args.beam_size}, no LM", ours(BeamDecoder(VOCAB, settings))),
            (f"beam {args.beam_size}, 4-gram", ours(BeamDecoder(VOCAB, settings, lm=lm))),
            (f"beam {args.beam_size}, 4-gram, lexicon", ours(BeamDecoder(VOCAB, settings, lm=lm, lexicon=words))),
            (f"beam {args.beam_size}, 4-gram, {len(hotwords)} hotwords",
             ours(BeamDecoder(VOCAB, BeamSettings(beam_size=args.beam_size, hotwords=tuple(hotwords)), lm=lm))),
        ]
        fl = flashlight(arpa, words, args.beam_size, settings.lm_weight, 1.0)
        if fl is not None:
            rows.append((f"flashlight-text {args.beam_size}, 4-gram, lexicon", fl))
        print(f"{len(utterances)} utterances, {audio_seconds:.0f} s of audio, {args.threads} threads\n")
        print("| decoder | seconds per second of audio | WER vs the true text | texts != greedy |")
        print("|---|---|---|---|")
        greedy_texts = None
        results = {}
        for name, decode in rows:
            seconds, texts = measure(decode, utterances, args.repeats)
            greedy_texts = greedy_texts or texts
            differ = sum(a != b for a, b in zip(texts, greedy_texts))
            results[name] = seconds / audio_seconds
            print(f"| {name} | {seconds / audio_seconds:.4f} | {100 * jiwer.wer(truths, texts):.2f}% | "
                  f"{differ} of {len(texts)} |", flush=True)
    added = results[rows[2][0]] - results["greedy"]
    more = results[rows[4][0]] - results[rows[2][0]]
    print(f"\nbeam + 4-gram adds {added:.4f} to the RTF (target {TARGET_BEAM_LM}); "
          f"{len(hotwords)} hotwords add {more:.4f} more (target {TARGET_HOTWORDS})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
