"""Forced alignment: the search against brute force and the full trellis, times against known
boundaries, numbers against hand-written spellings, the writers, the command and bad input."""

from __future__ import annotations

import dataclasses
import io
import itertools
import json
import os
import shutil
import subprocess

import numpy as np
import pytest
import torch

import wav2vec2
from wav2vec2.align import (WILDCARD, AlignSettings, align_emissions, emission_columns, label_columns, min_frames,
                            prepare, render_alignment, trellis, viterbi, viterbi_windowed)
from wav2vec2.errors import DataError
from wav2vec2.numbers import spell_numbers
from wav2vec2.vocab import SPECIAL_TOKENS, Vocabulary

from .conftest import write_audio
from .test_cli import run

VOCAB = Vocabulary(list(SPECIAL_TOKENS) + list("ABCDEFGHIJKLMNOPQRSTUVWXYZ'"))
FRAME = 0.02


# ---------------------------------------------------------------------------- numbers

@pytest.mark.parametrize("written, spoken", [
    ("0", "zero"), ("7", "seven"), ("13", "thirteen"), ("40", "forty"), ("42", "forty two"),
    ("100", "one hundred"), ("115", "one hundred fifteen"), ("999", "nine hundred ninety nine"),
    ("1,000", "one thousand"), ("12,345", "twelve thousand three hundred forty five"),
    ("1,000,000", "one million"), ("2,000,001", "two million one"), ("-3", "minus three"),
    ("1st", "first"), ("2nd", "second"), ("3rd", "third"), ("4th", "fourth"), ("11th", "eleventh"),
    ("12th", "twelfth"), ("21st", "twenty first"), ("30th", "thirtieth"), ("100th", "one hundredth"),
    ("112th", "one hundred twelfth"),
    ("1984", "nineteen eighty four"), ("1905", "nineteen oh five"), ("1900", "nineteen hundred"),
    ("2023", "twenty twenty three"), ("2005", "two thousand five"), ("1066", "ten sixty six"),
    ("3000", "three thousand"), ("1980s", "nineteen eighties"),
    ("3.14", "three point one four"), ("0.05", "zero point zero five"), (".5", "point five"),
    ("50%", "fifty percent"), ("3.5%", "three point five percent"), ("007", "zero zero seven"),
    ("in 1984, 21st.", "in nineteen eighty four , twenty first ."), ("COVID-19", "COVID- nineteen"),
    ("R&D", "R and D"), ("no digits", "no digits"),
])
def test_numbers_are_spelled_as_spoken(written, spoken):
    assert spell_numbers(written) == spoken


# ---------------------------------------------------------------------------- transcript -> labels

def spelled(targets, word: int) -> str:
    """The labels of one word as text, `|` between its spoken words and `*` for a wildcard."""
    labels = [j for j, owner in enumerate(targets.owners) if owner == word]
    out = []
    for j in range(labels[0], labels[-1] + 1):
        label = targets.labels[j]
        out.append("*" if label == WILDCARD else VOCAB.tokens[label])
    return "".join(out)


def test_words_keep_their_written_form_and_are_spelled_for_the_model():
    targets = prepare("— In 1984, the café — 21st smørrebrød", VOCAB)
    assert targets.words == ["— In", "1984,", "the", "café —", "21st", "smørrebrød"]
    assert [spelled(targets, i) for i in range(6)] == [
        "IN", "NINETEEN|EIGHTY|FOUR", "THE", "CAFE", "TWENTY|FIRST", "SM*RREBR*D"]
    assert targets.texts[targets.labels.index(WILDCARD)] == "Ø"
    delimiters = [j for j, owner in enumerate(targets.owners) if owner == -1]
    assert all(VOCAB.tokens[targets.labels[j]] == "|" for j in delimiters) and len(delimiters) == 5 + 3


@pytest.mark.parametrize("text, message", [("", "empty"), ("  \n ", "empty"), ("— … !", "empty"),
                                           ("日本語 €", "no character that the model knows")])
def test_transcripts_with_nothing_to_align_are_refused(text, message):
    with pytest.raises(DataError, match=message):
        prepare(text, VOCAB)


# ---------------------------------------------------------------------------- the search

def path_tokens(path: np.ndarray, columns: np.ndarray) -> list[int]:
    return trellis(columns)[0][path].tolist()


def collapse(tokens) -> list[int]:
    """CTC's rule: merge repeats, then drop blanks (column 0)."""
    return [c for i, c in enumerate(tokens) if c != 0 and (i == 0 or tokens[i - 1] != c)]


def brute_force(emissions: np.ndarray, columns: np.ndarray) -> tuple[float, list[int]]:
    """The best of every frame-by-frame token sequence that collapses to the labels."""
    alphabet = sorted({0, *columns.tolist()})
    best, best_tokens = -np.inf, None
    for tokens in itertools.product(alphabet, repeat=len(emissions)):
        if collapse(tokens) == columns.tolist():
            score = sum(float(emissions[t, c]) for t, c in enumerate(tokens))
            if score > best:
                best, best_tokens = score, list(tokens)
    return best, best_tokens


def random_case(rng, frames: int, labels: int, columns: int = 8, scale: float = 2.0):
    cols = rng.integers(1, columns, size=labels)
    logits = rng.standard_normal((frames, columns)) * scale
    emissions = (logits - np.log(np.exp(logits).sum(1, keepdims=True))).astype(np.float32)
    return emissions, cols


def test_viterbi_equals_brute_force_over_every_path():
    rng = np.random.default_rng(0)
    checked = 0
    while checked < 40:
        frames, labels = int(rng.integers(1, 8)), int(rng.integers(1, 4))
        emissions, columns = random_case(rng, frames, labels, columns=4)  # columns 1-3: repeats are common
        if frames < min_frames(columns):
            continue
        score, tokens = brute_force(emissions, columns)
        for path in (viterbi(emissions, columns), viterbi_windowed(emissions, columns)[0]):
            assert path_tokens(path, columns) == tokens
            assert float(emissions[np.arange(frames), tokens].astype(np.float64).sum()) == pytest.approx(score)
        checked += 1


def test_repeated_labels_need_a_blank_between():
    columns = np.array([2, 2])
    assert min_frames(columns) == 3 and min_frames(np.array([2, 3])) == 2
    emissions = np.log(np.full((3, 4), 0.25, dtype=np.float32))
    assert path_tokens(viterbi(emissions, columns), columns) == [2, 0, 2]


def is_valid_path(path: np.ndarray, columns: np.ndarray) -> bool:
    _, skip = trellis(columns)
    steps = np.diff(path)
    return (path[0] in (0, 1) and path[-1] in (len(skip) - 2, len(skip) - 1) and set(steps.tolist()) <= {0, 1, 2}
            and bool(skip[path[1:][steps == 2]].all()))


def test_windowed_search_equals_the_full_trellis_on_random_emissions():
    rng = np.random.default_rng(1)
    for _ in range(30):
        frames = int(rng.integers(20, 400))
        emissions, columns = random_case(rng, frames, int(rng.integers(1, frames // 3)),
                                         scale=float(rng.choice([0.5, 2.0, 6.0])))
        full = viterbi(emissions, columns)
        windowed, stats = viterbi_windowed(emissions, columns)
        assert np.array_equal(windowed, full) and stats.forced == 0
        # tiny windows force commits: the path stays valid and never beats the exact one
        forced, stats = viterbi_windowed(emissions, columns, window=12, check_every=3)
        assert stats.forced > 0 and stats.max_pending <= 13 and is_valid_path(forced, columns)
        score = emissions[np.arange(frames), trellis(columns)[0][forced]].sum()
        assert score <= emissions[np.arange(frames), trellis(columns)[0][full]].sum() + 1e-3


def speak(text: str, rng, noise: float = 1.0, gap: tuple[int, int] = (5, 15)) -> tuple[np.ndarray, list]:
    """Peaky log-probabilities of `text` as a CTC model would emit them: each character for one or
    two frames with blanks between, `|` between words, silence around. Returns them with each
    word's true (first frame, frame after its last character)."""
    ids = VOCAB.ids
    frames, truth = [0] * int(rng.integers(5, 20)), []
    for word in text.split():
        start = len(frames)
        for character in word:
            frames += [ids[character]] * int(rng.integers(1, 3))
            end = len(frames)
            frames += [0] * int(rng.integers(1, 4))
        truth.append((start, end))
        frames += [0] * int(rng.integers(*gap)) + [ids["|"]] + [0] * int(rng.integers(*gap))
    logits = noise * rng.standard_normal((len(frames), len(VOCAB)))
    logits[np.arange(len(frames)), frames] += 12.0
    return (logits - np.log(np.exp(logits).sum(1, keepdims=True))).astype(np.float32), truth


SENTENCES = ["THE CAT SAT ON THE MAT", "A QUICK BROWN FOX JUMPS OVER THE LAZY DOG",
             "SHE SELLS SEA SHELLS BY THE SEA SHORE", "ALL OF THEM WERE OFF TO LOOK AT THE BOOKS"]


@pytest.mark.parametrize("spoken, written", [
    (SENTENCES[0], "the cat sat quietly on the mat"),  # a word that is not in the audio
    (SENTENCES[1], "a brown fox jumps over the dog"),  # words of the audio missing from the text
    (SENTENCES[2], "she sells sea shells by the shore but it is not so"),  # a tail that is not there
    (SENTENCES[3], "all the men were off to cook the books"),  # substitutions
])
def test_windowed_search_equals_the_full_trellis_when_text_and_audio_disagree(spoken, written):
    rng = np.random.default_rng(2)
    emissions, _ = speak(" ".join([spoken] * 8), rng)
    targets = prepare(" ".join([written] * 8), VOCAB)
    token_ids, columns = label_columns(targets)
    columns_only = emission_columns(emissions, token_ids, VOCAB.blank)
    full = viterbi(columns_only, columns)
    windowed, stats = viterbi_windowed(columns_only, columns)
    assert np.array_equal(windowed, full) and stats.forced == 0


def test_memory_stays_bounded_on_long_input_and_the_path_stays_exact():
    rng = np.random.default_rng(3)
    text = " ".join(rng.choice(SENTENCES, size=30))
    emissions, _ = speak(text, rng)
    targets = prepare(text, VOCAB)
    token_ids, columns = label_columns(targets)
    columns_only = emission_columns(emissions, token_ids, VOCAB.blank)
    full = viterbi(columns_only, columns)
    windowed, stats = viterbi_windowed(columns_only, columns)
    assert np.array_equal(windowed, full) and stats.forced == 0
    # the backpointers held at once are a small part of the full trellis's T x S
    assert len(emissions) > 5000 and stats.commits > 10, stats
    assert stats.max_pending * stats.max_states < 0.02 * len(emissions) * (2 * len(columns) + 1), stats
    # even with a window far shorter than what the paths need to meet, clean speech comes out exact
    tight, stats = viterbi_windowed(columns_only, columns, window=20, check_every=5)
    assert stats.forced > 0 and np.array_equal(tight, full)


# ---------------------------------------------------------------------------- times and statuses

def test_word_times_are_the_known_boundaries_of_synthetic_speech():
    rng = np.random.default_rng(4)
    for sentence in SENTENCES:
        emissions, truth = speak(sentence, rng)
        result = align_emissions(emissions, sentence.lower(), VOCAB)
        assert [w.text for w in result.words] == sentence.lower().split()
        assert [(w.start, w.end) for w in result.words] == [(round(s * FRAME, 3), round(e * FRAME, 3))
                                                            for s, e in truth]
        assert all(w.status == "aligned" and w.score > 0.9 for w in result.words)
        word = result.words[0]
        assert "".join(c.text for c in word.chars) == sentence.split()[0]
        assert word.chars[0].start == word.start and word.chars[-1].end == word.end
        assert all(a.end <= b.start for a, b in zip(word.chars, word.chars[1:]))


def test_numbers_are_aligned_as_spoken_and_keep_their_written_form():
    rng = np.random.default_rng(5)
    emissions, truth = speak("IN NINETEEN EIGHTY FOUR IT WAS THE TWENTY FIRST", rng)
    result = align_emissions(emissions, "In 1984 it was the 21st.", VOCAB)
    assert [w.text for w in result.words] == ["In", "1984", "it", "was", "the", "21st."]
    assert (result.words[1].start, result.words[1].end) == (round(truth[1][0] * FRAME, 3),
                                                             round(truth[3][1] * FRAME, 3))
    assert result.words[5].end == round(truth[-1][1] * FRAME, 3)
    assert all(w.status == "aligned" for w in result.words)


def test_unknown_characters_become_a_wildcard_that_takes_the_speech_between_neighbours():
    rng = np.random.default_rng(6)
    emissions, truth = speak("THE EURO FELL BY TEN PERCENT", rng)
    result = align_emissions(emissions, "the € fell by 10%", VOCAB)
    assert [w.status for w in result.words] == ["aligned", "interpolated", "aligned", "aligned", "aligned"]
    euro = result.words[1]
    assert (euro.start, euro.end) == (round(truth[1][0] * FRAME, 3), round(truth[1][1] * FRAME, 3))
    assert result.words[4].text == "10%" and result.words[4].end == round(truth[5][1] * FRAME, 3)


def test_words_that_are_not_in_the_audio_are_flagged():
    rng = np.random.default_rng(7)
    emissions, truth = speak("THE CAT SAT ON THE MAT", rng, gap=(10, 20))
    result = align_emissions(emissions, "The cat sat quietly on the mat.", VOCAB)
    assert [w.status for w in result.words] == ["aligned"] * 3 + ["unalignable"] + ["aligned"] * 3
    kept = [w for w in result.words if w.status == "aligned"]
    assert [(w.start, w.end) for w in kept] == [(round(s * FRAME, 3), round(e * FRAME, 3)) for s, e in truth]
    # missing speech is absorbed by blanks, and flags nothing
    emissions, truth = speak("THE BIG CAT SAT", rng)
    result = align_emissions(emissions, "the cat sat", VOCAB)
    assert all(w.status == "aligned" for w in result.words)
    assert result.words[1].start == round(truth[2][0] * FRAME, 3)


def test_audio_too_short_for_the_transcript_is_refused():
    emissions, _ = speak("HI", np.random.default_rng(8))
    with pytest.raises(DataError, match="too short"):
        align_emissions(emissions[:10], "a very long transcript indeed for so few frames", VOCAB)


# ---------------------------------------------------------------------------- writers

def test_textgrid_is_read_back_by_praat_tools_and_ctm_has_one_line_per_word(tmp_path):
    praatio = pytest.importorskip("praatio.textgrid")
    emissions, _ = speak("SAY HELLO TO THE WORLD", np.random.default_rng(9))
    result = align_emissions(emissions, 'Say "hello" to the world!', VOCAB)
    path = tmp_path / "a.TextGrid"
    path.write_text(render_alignment(result, "textgrid"))
    grid = praatio.openTextgrid(str(path), includeEmptyIntervals=False)
    assert grid.tierNames == ("words", "chars")
    words = grid.getTier("words").entries
    assert [(e.label, e.start, e.end) for e in words] == [(w.text, w.start, w.end) for w in result.words]
    assert "".join(e.label for e in grid.getTier("chars").entries) == "SAYHELLOTOTHEWORLD"
    assert grid.maxTimestamp == pytest.approx(len(emissions) * FRAME)
    lines = [line.split() for line in render_alignment(result, "ctm").splitlines()]
    assert [(line[0], line[1], line[4]) for line in lines] == [("utt", "1", w.text) for w in result.words]
    assert all(float(line[2]) == w.start and float(line[3]) == pytest.approx(w.end - w.start)
               and float(line[5]) == w.score for line, w in zip(lines, result.words))
    srt = render_alignment(result, "srt")
    assert srt.startswith("1\n00:00:") and 'Say "hello" to the world!' in srt
    assert json.loads(render_alignment(result, "json"))["words"][0]["chars"][0]["text"] == "S"


# ---------------------------------------------------------------------------- with a model

def test_chunked_emissions_are_those_of_transcription(checkpoints, speechlike):
    from wav2vec2.audio import normalize
    from wav2vec2.transcribe import chunk_logits

    model = wav2vec2.load_model(checkpoints["base"])
    transcript = "hello there world"
    for chunk_length, stride in ((1.0, 0.3), (20.0, 2.0)):
        settings = AlignSettings(chunk_length=chunk_length, stride=stride)
        chunked = wav2vec2.align(model, speechlike, transcript, settings=settings)
        logits = torch.cat(list(chunk_logits(model, speechlike, chunk_length, stride)))
        expected = align_emissions(logits.log_softmax(-1), transcript, model.vocab)
        assert dataclasses.asdict(chunked)["words"] == dataclasses.asdict(expected)["words"]
        assert chunked.duration == pytest.approx(3.3)
    with torch.inference_mode():  # one chunk: the whole recording in one pass
        log_probs = model(torch.from_numpy(normalize(speechlike))[None])[0].log_softmax(-1)
    assert chunked.words == align_emissions(log_probs, transcript, model.vocab).words


def test_command_writes_every_format_and_the_api_agrees(checkpoints, speechlike, tmp_path):
    praatio = pytest.importorskip("praatio.textgrid")
    audio = write_audio(tmp_path / "speech.wav", speechlike, 16000, subtype="FLOAT")
    (tmp_path / "text.txt").write_text("Hello there, 2 worlds.\n")
    printed = run("align", audio, tmp_path / "text.txt", "--model", checkpoints["base"])
    assert printed.returncode == 0, printed.stderr
    expected = wav2vec2.align(wav2vec2.load_model(checkpoints["base"]), audio, "Hello there, 2 worlds.")
    assert json.loads(printed.stdout) == json.loads(render_alignment(expected, "json"))
    written = run("align", audio, tmp_path / "text.txt", "--model", checkpoints["base"], "--format", "textgrid",
                  "--output", tmp_path / "out.TextGrid")
    assert written.returncode == 0 and written.stdout == ""
    grid = praatio.openTextgrid(str(tmp_path / "out.TextGrid"), includeEmptyIntervals=False)
    assert [e.label for e in grid.getTier("words").entries] == ["Hello", "there,", "2", "worlds."]


@pytest.mark.parametrize("kind", ["empty transcript", "unknown characters", "missing audio",
                                  "missing transcript", "transcript too long"])
def test_bad_input_is_one_line_and_a_failure(checkpoints, speechlike, tmp_path, kind):
    audio = write_audio(tmp_path / "speech.wav", speechlike, 16000)
    text = tmp_path / "text.txt"
    text.write_text({"empty transcript": " \n", "unknown characters": "日本語 €€",
                     "transcript too long": "word " * 200}.get(kind, "hello"))
    if kind == "missing audio":
        audio = tmp_path / "nothing.wav"
    if kind == "missing transcript":
        text = tmp_path / "nothing.txt"
    result = run("align", audio, text, "--model", checkpoints["base"])
    assert result.returncode != 0 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("wav2vec2: error: "), result.stderr


# ---------------------------------------------------------------------------- accuracy on speech

WORDS = ("morning", "river", "seven", "yellow", "garden", "window", "happy", "number", "little", "market",
         "silver", "doctor", "winter", "paper", "forest", "simple")


def espeak_words(words, rng) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Each word synthesised on its own by espeak-ng, trimmed to its sound, and joined with
    silences of known random length: 16 kHz audio and every word's true (start, end) in seconds."""
    import soundfile
    import soxr

    parts, truth, at = [np.zeros(int(0.3 * 16000), np.float32)], [], 0.3
    for word in words:
        wav = subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "--stdout", word],
                             capture_output=True, check=True).stdout
        audio, rate = soundfile.read(io.BytesIO(wav), dtype="float32")
        audio = soxr.resample(audio, rate, 16000)
        loud = np.flatnonzero(np.abs(audio) > 0.02 * np.abs(audio).max())
        clip = audio[loud[0]:loud[-1] + 1]
        truth.append((at, at + len(clip) / 16000))
        pause = float(rng.uniform(0.15, 0.5))
        parts += [clip, np.zeros(int(pause * 16000), np.float32)]
        at += len(clip) / 16000 + int(pause * 16000) / 16000
    return np.concatenate(parts), truth


def boundary_errors(words, truth) -> np.ndarray:
    return np.abs(np.array([[w.start, w.end] for w in words]) - np.array(truth)).ravel()


needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")


@needs_espeak
def test_espeak_words_joined_with_silences_have_known_boundaries(checkpoints):
    """The accuracy test's machinery, without a trained model: the truth is where the sound is,
    and the pipeline aligns such audio end to end (with random weights the times mean nothing)."""
    rng = np.random.default_rng(10)
    audio, truth = espeak_words(WORDS[:5], rng)
    for (start, end), (next_start, _) in zip(truth, truth[1:] + [(len(audio) / 16000, None)]):
        inside = audio[round(start * 16000):round(end * 16000)]
        assert np.abs(inside[:40]).max() > 0.01 and np.abs(inside[-40:]).max() > 0.01
        assert not audio[round(end * 16000) + 1:round(next_start * 16000) - 1].any()
    result = wav2vec2.align(wav2vec2.load_model(checkpoints["base"]), audio, " ".join(WORDS[:5]))
    assert [w.text for w in result.words] == list(WORDS[:5])
    assert all(0 <= a.start < a.end <= b.start for a, b in zip(result.words, result.words[1:]))
    assert boundary_errors(result.words, truth).shape == (10,)


@needs_espeak
@pytest.mark.slow
def test_word_boundaries_of_a_trained_model_on_synthetic_speech():
    """Median boundary error <= 40 ms, 95th percentile <= 100 ms, with the demo model trained on
    synthetic speech (or the model in WAV2VEC2_ALIGN_MODEL)."""
    from wav2vec2.checkpoints import DEMO_FOLDER

    name = os.environ.get("WAV2VEC2_ALIGN_MODEL", "demo")
    if name == "demo" and not (DEMO_FOLDER / "config.json").is_file():
        pytest.skip("no trained model: the demo model is not built yet")
    model = wav2vec2.load_model(name)
    rng = np.random.default_rng(11)
    errors = []
    for _ in range(4):
        words = list(rng.choice(WORDS, size=8))
        audio, truth = espeak_words(words, rng)
        result = wav2vec2.align(model, audio, " ".join(words))
        errors.append(boundary_errors(result.words, truth))
    errors = np.concatenate(errors)
    assert np.median(errors) <= 0.040 and np.percentile(errors, 95) <= 0.100, (
        f"median {np.median(errors) * 1000:.0f} ms, 95th percentile {np.percentile(errors, 95) * 1000:.0f} ms")
