"""Forced alignment: when each word and character of a known transcript is spoken.

The transcript becomes a sequence of L labels (characters, `|` between words) and the CTC trellis
has S = 2L + 1 states, a blank before, between and after the labels. A path stays in a state or
moves to the next one; it may also skip the blank before a label unless that label repeats the
previous one. The alignment is the path of highest total log-probability (Viterbi); a word's
times are the first and last frames of its characters.

Memory stays bounded for hours of audio:

* Emissions are computed chunk by chunk (`transcribe.split_into_chunks`: the kept frames are those
  of one pass over the whole file) and only the columns the transcript uses are kept: blank, the
  wildcard, and its distinct characters, so (frames x about 30) floats.
* The search (`viterbi_windowed`) keeps scores for a band of states only: those within `beam`
  nats of the frame's best (at most `max_states` of them) that can still reach the end in the
  frames left. Backpointers (int8: 0 stay, 1 or 2 states back) are kept only for the frames
  not yet committed. Every few frames the paths of the band's lowest and highest states are
  traced back; paths of a Viterbi search never cross (ties go to the shorter step), so where
  these two meet every surviving path meets, and all frames up to there are final. If they do
  not meet within `window` frames, the path through the best state is committed up to the middle
  of the window and the band is cut to the states whose paths go through it.

The result is the exact Viterbi path (`viterbi`, the full T x S search, is the reference) unless
(1) the best path's prefix falls more than `beam` below the best prefix of some frame, (2) more
than `max_states` states lie within the beam, or (3) a forced commit happens. None of these
occurred in the tests on random emissions (up to 400 frames) and on transcripts that disagree
with the audio. (1) and (2) become likely only where the posteriors hardly depend on the audio
(random weights; long random emissions, whose best prefixes drift apart by hundreds of nats).

Characters outside the vocabulary (after numbers are spelled out and accents dropped where the
plain letter exists) become a wildcard label, whose emission at each frame is the best token's
(a little less where that is the blank): it absorbs whatever is spoken between its neighbours,
and the silence around goes to the blanks, so an unknown word's times are those of that speech. Scores are geometric means of the posteriors along
the path: exp(mean log-probability of the frames from a word's first character to its last).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .audio import SAMPLE_RATE, AudioFile, resample
from .errors import AudioError, DataError
from .numbers import spell_numbers
from .transcribe import Transcription, forward_chunks, release_freed_memory, split_into_chunks
from .vocab import Vocabulary, normalize_text
from .writers import ctm, render, textgrid

FORMATS = ("json", "srt", "vtt", "textgrid", "ctm")
WILDCARD = -1  # the label of a run of characters outside the vocabulary
LOG_FLOOR = -1e4  # log-probabilities below this count as this: no path is ever impossible
WILDCARD_SILENCE = 1e-3  # nats a wildcard pays for a frame where the blank is the best token


@dataclass
class AlignSettings:
    chunk_length: float = 20.0  # seconds of audio per forward pass
    stride: float = 2.0  # seconds of context on each side of a chunk
    beam: float = 1000.0  # nats: states this far below the frame's best state are dropped
    max_states: int = 2048  # at most this many states per frame, around the best one
    window: int = 3000  # frames (60 s) of backpointers kept before a forced commit
    flag_margin: float = 3.0  # nats below the typical word's mean log-probability: "unalignable"


@dataclass
class AlignedChar:
    text: str  # one character; for a wildcard, the unknown characters it stands for
    start: float  # seconds
    end: float
    score: float  # geometric mean posterior of its frames


@dataclass
class AlignedWord:
    text: str  # the transcript's token as written ("1984", "Hello,")
    start: float
    end: float
    score: float  # geometric mean posterior of the frames from its first character to its last
    status: str  # "aligned", "interpolated" (no known character: a wildcard took its place) or
    # "unalignable" (probably not in the audio: score far below the other words')
    chars: list[AlignedChar]


@dataclass
class Alignment:
    words: list[AlignedWord]
    duration: float  # seconds of audio
    source: str | None = None


@dataclass
class Targets:
    """A transcript as CTC labels, with the word and characters each label stands for."""

    words: list[str]  # the transcript's tokens
    labels: list[int]  # vocabulary id of each label, WILDCARD for unknown characters
    texts: list[str]  # the characters of each label ("" for the word delimiter)
    owners: list[int]  # the word each label belongs to (-1: a delimiter between words)


@dataclass
class SearchStats:
    commits: int = 0  # times the surviving paths met and frames became final
    forced: int = 0  # forced commits (the result may then differ from the exact path)
    max_pending: int = 0  # most frames of backpointers held at once
    max_states: int = 0  # widest band of states


def prepare(transcript: str, vocab: Vocabulary) -> Targets:
    """Split the transcript into tokens, spell each as the model does and label it.

    A token with no spoken form (a dash, say) is attached to the word before it (or after it, at
    the start). Raises DataError if nothing in the transcript can be aligned.
    """
    ids = vocab.ids
    delimiter = ids.get(vocab.word_delimiter)
    targets = Targets([], [], [], [])
    prefix = ""
    for token in transcript.split():
        spoken = [w for w in normalize_text(spell_numbers(token), vocab).split() if w.strip("'")]
        if not spoken:
            if targets.words:
                targets.words[-1] += " " + token
            else:
                prefix += token + " "
            continue
        word = len(targets.words)
        targets.words.append(prefix + token)
        prefix = ""
        for part in spoken:
            if targets.labels and delimiter is not None:
                _add(targets, delimiter, "", -1)
            for character in part:
                known = character if character in ids else _strip_accents(character)
                if known and all(c in ids for c in known):
                    for c in known:
                        _add(targets, ids[c], character, word)
                elif targets.labels and targets.labels[-1] == WILDCARD and targets.owners[-1] == word:
                    targets.texts[-1] += character
                else:
                    _add(targets, WILDCARD, character, word)
    if not targets.words:
        raise DataError("the transcript is empty: there is nothing to align")
    if all(label in (WILDCARD, delimiter) for label in targets.labels):
        unknown = sorted({c for text, label in zip(targets.texts, targets.labels) if label == WILDCARD for c in text})
        raise DataError("the transcript has no character that the model knows (unknown: "
                        f"{' '.join(unknown[:20])})")
    return targets


def _add(targets: Targets, label: int, text: str, owner: int) -> None:
    targets.labels.append(label)
    targets.texts.append(text)
    targets.owners.append(owner)


def _strip_accents(character: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFKD", character) if not unicodedata.combining(c))


def emission_columns(log_probs: np.ndarray, token_ids: np.ndarray, blank: int) -> np.ndarray:
    """(frames, vocab) log-probabilities -> (frames, 2 + tokens): blank, wildcard, then the tokens'
    columns, floored at LOG_FLOOR. The wildcard's is the best token's, but WILDCARD_SILENCE below the
    blank's where the blank is best, so that silence around an unknown word goes to the blanks."""
    wildcard = np.maximum(np.delete(log_probs, blank, axis=1).max(axis=1), log_probs[:, blank] - WILDCARD_SILENCE)
    columns = np.concatenate([log_probs[:, [blank]], wildcard[:, None],
                              log_probs[:, token_ids]], axis=1)
    return np.maximum(columns, LOG_FLOOR).astype(np.float32)


def label_columns(targets: Targets) -> tuple[np.ndarray, np.ndarray]:
    """The distinct vocabulary ids of the labels, and each label's column in emission_columns."""
    token_ids = np.array(sorted({label for label in targets.labels if label != WILDCARD}), dtype=np.int64)
    position = {token: 2 + i for i, token in enumerate(token_ids.tolist())}
    columns = np.array([1 if label == WILDCARD else position[label] for label in targets.labels], dtype=np.int64)
    return token_ids, columns


# ---------------------------------------------------------------------------- the search

def trellis(columns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels' emission columns (L,) -> each state's column (S = 2L + 1; blanks are column 0) and
    whether the state may be entered from two states back (a label that differs from the previous)."""
    states = np.zeros(2 * len(columns) + 1, dtype=np.int64)
    states[1::2] = columns
    skip = np.zeros(len(states), dtype=bool)
    skip[3::2] = columns[1:] != columns[:-1]
    return states, skip


def frames_to_finish(skip: np.ndarray) -> np.ndarray:
    """For each state, the fewest frames after the current one that reach a final state (the last
    label or the last blank). Never increases with the state."""
    rest = np.zeros(len(skip), dtype=np.int64)
    for s in range(len(skip) - 3, -1, -1):
        rest[s] = 1 + (min(rest[s + 1], rest[s + 2]) if skip[s + 2] else rest[s + 1])
    return rest


def min_frames(columns: np.ndarray) -> int:
    """The fewest frames any path through these labels needs."""
    return 1 + int(frames_to_finish(trellis(columns)[1])[1])


def _step(stay: np.ndarray, one: np.ndarray, two: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The best of the three predecessors of each state, and how far back it is (ties: nearer)."""
    best = np.maximum(stay, one)
    choice = (one > stay).astype(np.int8)
    choice[two > best] = 2
    np.maximum(best, two, out=best)
    return best, choice


def viterbi(emissions: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """The exact best path (a state per frame) over the full T x S trellis: the reference for
    viterbi_windowed, for inputs whose T x S bytes of backpointers fit in memory."""
    if len(emissions) < min_frames(columns):
        raise ValueError(f"{len(emissions)} frames are too few for these labels (at least {min_frames(columns)})")
    states, skip = trellis(columns)
    frames, size = len(emissions), len(states)
    penalty = np.where(skip, 0.0, -np.inf)
    score = np.full(size + 2, -np.inf)  # state s at s + 2: two -inf states in front
    score[2:4] = emissions[0, states[:2]]
    back = np.zeros((frames, size), dtype=np.int8)
    for t in range(1, frames):
        best, back[t] = _step(score[2:], score[1:-1], score[:-2] + penalty)
        score[2:] = best + emissions[t, states]
    path = np.empty(frames, dtype=np.int64)
    path[-1] = size - 1 if score[size + 1] >= score[size] else size - 2
    for t in range(frames - 1, 0, -1):
        path[t - 1] = path[t] - back[t, path[t]]
    return path


def viterbi_windowed(emissions: np.ndarray, columns: np.ndarray, beam: float = 1000.0, max_states: int = 2048,
                     window: int = 3000, check_every: int = 50) -> tuple[np.ndarray, SearchStats]:
    """The best path in bounded memory (see the module's docstring): a state per frame."""
    states, skip = trellis(columns)
    frames, size = len(emissions), len(states)
    rest = frames_to_finish(skip)
    if frames - 1 < rest[1]:
        raise ValueError(f"{frames} frames are too few for these labels (at least {rest[1] + 1})")
    penalty = np.where(skip, 0.0, -np.inf)
    score = np.full(size + 2, -np.inf)
    stats = SearchStats()
    path = np.empty(frames, dtype=np.int64)
    lo, hi = 0, 1
    score[2:4] = emissions[0, states[:2]]
    if rest[0] > frames - 1:  # the first blank cannot be used: no frame to spare
        lo, score[2] = 1, -np.inf
    los, backs = [lo], [np.zeros(hi - lo + 1, dtype=np.int8)]
    first = 0  # the first frame whose state is not final; los[0] and backs[0] belong to it
    lowest = np.searchsorted(-rest, -(frames - 1 - np.arange(frames)))  # lowest feasible state per frame

    def back(t: int, s: int) -> int:
        return s - int(backs[t - first][s - los[t - first]])

    def survivor(t: int, s: int, target: int) -> int:
        while t > target:
            s, t = back(t, s), t - 1
        return s

    def commit(t: int, s: int) -> None:
        nonlocal first
        for u in range(t, first - 1, -1):
            path[u] = s
            if u > 0:
                s = back(u, s)
        del los[:t + 1 - first], backs[:t + 1 - first]
        first = t + 1
        stats.commits += 1

    for t in range(1, frames):
        a, b = max(lo, int(lowest[t])), min(hi + 2, size - 1)
        new, choice = _step(score[a + 2:b + 3], score[a + 1:b + 2], score[a:b + 1] + penalty[a:b + 1])
        new += emissions[t, states[a:b + 1]]
        best = int(new.argmax())
        keep = np.flatnonzero(new >= max(new[best] - beam, np.finfo(np.float64).min))
        k0, k1 = int(keep[0]), int(keep[-1])
        if k1 - k0 >= max_states:
            k0 = max(k0, best - max_states // 2)
            k1 = min(k1, k0 + max_states - 1)
        score[lo + 2:hi + 3] = -np.inf
        score[a + k0 + 2:a + k1 + 3] = new[k0:k1 + 1]
        lo, hi = a + k0, a + k1
        los.append(lo)
        backs.append(choice[k0:k1 + 1])
        stats.max_states = max(stats.max_states, hi - lo + 1)
        stats.max_pending = max(stats.max_pending, len(backs))
        if t == frames - 1:
            break
        if t % check_every == 0 and lo < hi:  # where the paths of the band's two ends meet, all do
            u, s1, s2 = t, lo, hi
            while s1 != s2 and u > first:
                s1, s2, u = back(u, s1), back(u, s2), u - 1
            if s1 == s2 and u >= first:
                commit(u, s1)
        elif lo == hi:
            commit(t, lo)
        if t - first >= window:  # forced: commit the best state's path up to the window's middle
            middle = t - window // 2
            best_state = int(lo + score[lo + 2:hi + 3].argmax())
            anchor = survivor(t, best_state, middle)
            low, high = lo, best_state  # the lowest state whose path goes through the anchor
            while low < high:
                mid = (low + high) // 2
                low, high = (mid + 1, high) if survivor(t, mid, middle) < anchor else (low, mid)
            top, high = best_state, hi  # the highest one
            while top < high:
                mid = (top + high + 1) // 2
                top, high = (mid, high) if survivor(t, mid, middle) <= anchor else (top, mid - 1)
            score[lo + 2:low + 2] = -np.inf
            score[top + 3:hi + 3] = -np.inf
            lo, hi = low, top
            commit(middle, anchor)
            stats.forced += 1
    end = size - 1 if score[size + 1] >= score[size] else size - 2
    if frames == 1:
        path[0] = end
    else:
        commit(frames - 1, end)
    return path, stats


# ---------------------------------------------------------------------------- results

def words_from_path(targets: Targets, columns: np.ndarray, emissions: np.ndarray, path: np.ndarray,
                    seconds_per_frame: float, flag_margin: float) -> list[AlignedWord]:
    """Times and scores of the words and characters along a path, and each word's status."""
    states, _ = trellis(columns)
    along = emissions[np.arange(len(path)), states[path]].astype(np.float64)
    total = np.concatenate([[0.0], np.cumsum(along)])
    label_states = 2 * np.arange(len(columns)) + 1
    starts = np.searchsorted(path, label_states, side="left")
    ends = np.searchsorted(path, label_states, side="right")

    def mean(start: int, end: int) -> float:
        return float((total[end] - total[start]) / (end - start))

    def seconds(frame: int) -> float:
        return round(frame * seconds_per_frame, 3)

    by_word: list[list[int]] = [[] for _ in targets.words]
    for label, owner in enumerate(targets.owners):
        if owner >= 0:
            by_word[owner].append(label)
    words, logs = [], []
    for text, labels in zip(targets.words, by_word):
        start, end = int(starts[labels[0]]), int(ends[labels[-1]])
        chars = [AlignedChar(targets.texts[j], seconds(starts[j]), seconds(ends[j]),
                             round(math.exp(mean(starts[j], ends[j])), 4)) for j in labels]
        unknown = all(targets.labels[j] == WILDCARD for j in labels)
        logs.append(None if unknown else mean(start, end))
        words.append(AlignedWord(text, seconds(start), seconds(end), round(math.exp(mean(start, end)), 4),
                                 "interpolated" if unknown else "aligned", chars))
    known = [value for value in logs if value is not None]
    threshold = min(float(np.median(known)), math.log(0.5)) - flag_margin
    for word, value in zip(words, logs):
        if value is not None and value < threshold:
            word.status = "unalignable"
    return words


def align_emissions(log_probs: np.ndarray | torch.Tensor, transcript: str, vocab: Vocabulary,
                    settings: AlignSettings | None = None, seconds_per_frame: float = 0.02) -> Alignment:
    """Align a transcript to (frames, vocab) log-probabilities (log-softmax of a CTC model's logits)."""
    settings = settings or AlignSettings()
    if isinstance(log_probs, torch.Tensor):
        log_probs = log_probs.detach().float().cpu().numpy()
    targets = prepare(transcript, vocab)
    token_ids, columns = label_columns(targets)
    emissions = emission_columns(np.asarray(log_probs, dtype=np.float32), token_ids, vocab.blank)
    return _align(targets, columns, emissions, settings, seconds_per_frame, len(emissions) * seconds_per_frame)


def _align(targets: Targets, columns: np.ndarray, emissions: np.ndarray, settings: AlignSettings,
           seconds_per_frame: float, duration: float, source: str | None = None) -> Alignment:
    needed = min_frames(columns)
    if len(emissions) < needed:
        raise DataError(f"the audio is too short for its transcript: {len(emissions) * seconds_per_frame:.2f} s, "
                        f"and the transcript needs at least {needed * seconds_per_frame:.2f} s "
                        f"({needed} frames of {seconds_per_frame * 1000:g} ms)")
    path, _ = viterbi_windowed(emissions, columns, settings.beam, settings.max_states, settings.window)
    words = words_from_path(targets, columns, emissions, path, seconds_per_frame, settings.flag_margin)
    return Alignment(words, round(duration, 3), source)


def align(model, audio: str | os.PathLike | np.ndarray, transcript: str, sample_rate: int = SAMPLE_RATE,
          settings: AlignSettings | None = None) -> Alignment:
    """Align `transcript` (the text said in `audio`) to a file or a mono array at `sample_rate`,
    with a loaded CTC model (wav2vec2.load_model). Raises DataError for a transcript that cannot
    be aligned, AudioError for audio that cannot be read."""
    settings = settings or AlignSettings()
    targets = prepare(transcript, model.vocab)  # before any audio work: a bad transcript fails fast
    token_ids, columns = label_columns(targets)
    emissions, seconds = model_emissions(model, audio, token_ids, sample_rate, settings)
    source = None if isinstance(audio, (np.ndarray, torch.Tensor)) else str(audio)
    seconds_per_frame = model.config.samples_per_frame / SAMPLE_RATE
    return _align(targets, columns, emissions, settings, seconds_per_frame, seconds, source)


def model_emissions(model, audio: str | os.PathLike | np.ndarray, token_ids: np.ndarray,
                    sample_rate: int = SAMPLE_RATE, settings: AlignSettings | None = None) -> tuple[np.ndarray, float]:
    """The emission_columns of a whole recording, computed chunk by chunk from a file read as a
    stream, and its length in seconds."""
    settings = settings or AlignSettings()
    if isinstance(audio, torch.Tensor):
        audio = audio.detach().cpu().numpy()
    if isinstance(audio, np.ndarray):
        if audio.ndim != 1 or audio.size == 0:
            raise ValueError("audio must be a non-empty 1-D (mono) array")
        blocks = [resample(audio.astype(np.float32), sample_rate)]
    else:
        blocks = AudioFile(audio).blocks()
    samples, parts = 0, []

    def counted():
        nonlocal samples
        for block in blocks:
            samples += len(block)
            yield block

    for chunk in split_into_chunks(counted(), model.config, settings.chunk_length, settings.stride):
        if chunk.keep_stop > chunk.keep_start:
            log_probs = forward_chunks(model, [chunk])[0].log_softmax(-1).numpy()
            parts.append(emission_columns(log_probs, token_ids, model.vocab.blank))
            release_freed_memory()
    if not parts:
        raise AudioError(f"{'the audio' if isinstance(audio, np.ndarray) else audio}: too short to hold a frame")
    return np.concatenate(parts), samples / SAMPLE_RATE


def read_transcript(path: str | os.PathLike) -> str:
    """A UTF-8 text file's contents; DataError if it is missing or not text."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file" if not path.exists() else f"{path}: not a file")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text") from None


def render_alignment(alignment: Alignment, fmt: str) -> str:
    """The alignment in one of FORMATS, ending with a newline."""
    if fmt == "json":
        return json.dumps(dataclasses.asdict(alignment), ensure_ascii=False) + "\n"
    if fmt in ("srt", "vtt"):
        text = " ".join(word.text for word in alignment.words)
        return render(Transcription(text, alignment.words, alignment.duration, alignment.source), fmt)
    if fmt == "textgrid":
        chars = [(c.start, c.end, c.text) for word in alignment.words for c in word.chars if c.text]
        return textgrid([("words", [(w.start, w.end, w.text) for w in alignment.words]), ("chars", chars)],
                        alignment.duration)
    if fmt == "ctm":
        name = Path(alignment.source).stem if alignment.source else "utt"
        return ctm(name, [(w.start, w.end, w.text, w.score) for w in alignment.words])
    raise ValueError(f"unknown format {fmt!r} (known: {', '.join(FORMATS)})")
