"""Word and character error rates of a model on a labelled manifest, scored by `jiwer`; and the
search of a beam-search decoder's LM weight and word score for the lowest error rate (`tune`).

References and hypotheses are normalised the same way (normalize_text with the model's
vocabulary), so a score counts recognition errors, not differences of case or punctuation.
Error rates are corpus-level: all errors over all reference words (or characters), not a mean
of per-utterance rates. A file that cannot be read is reported and left out of the scores.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import jiwer
import numpy as np
import torch

from .audio import SAMPLE_RATE, load_audio
from .beam import BeamDecoder, BeamSettings, as_decoder
from .decoding import best_path, greedy_decode
from .errors import AudioError, CheckpointError, DataError
from .manifest import Entry, write_text_atomically
from .model import Wav2Vec2ForCTC
from .transcribe import chunk_logits, transcribe_many
from .vocab import normalize_text

REPORT_FORMATS = (".json", ".csv")


@dataclass
class Counts:
    """How a hypothesis aligns to its reference: the counts behind an error rate."""

    hits: int = 0
    substitutions: int = 0
    deletions: int = 0
    insertions: int = 0

    @classmethod
    def of(cls, output) -> Counts:
        """The counts of a jiwer WordOutput or CharacterOutput."""
        return cls(output.hits, output.substitutions, output.deletions, output.insertions)

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions


@dataclass
class Utterance:
    """One manifest entry's result; a file that failed has `error` set and no scores."""

    audio: str
    reference: str  # normalised
    hypothesis: str | None = None  # normalised
    duration: float | None = None  # seconds of audio
    wer: float | None = None
    cer: float | None = None
    words: Counts | None = None
    error: str | None = None


@dataclass
class EvaluationResult:
    wer: float
    cer: float
    rtf: float  # processing seconds per second of audio
    words: Counts
    characters: Counts
    audio_seconds: float
    processing_seconds: float
    utterances: list[Utterance] = field(default_factory=list)  # every entry, in manifest order
    unknown_characters: list[str] = field(default_factory=list)  # in references, not in the vocabulary

    @property
    def failed(self) -> list[Utterance]:
        return [u for u in self.utterances if u.error is not None]

    def summary(self) -> dict:
        """The corpus-level numbers as a JSON-ready dict (no per-utterance records)."""
        return {
            "wer": self.wer,
            "cer": self.cer,
            "rtf": self.rtf,
            "utterances": len(self.utterances) - len(self.failed),
            "failed": len(self.failed),
            "failed_files": [u.audio for u in self.failed],
            "words": dataclasses.asdict(self.words),
            "characters": dataclasses.asdict(self.characters),
            "audio_seconds": round(self.audio_seconds, 6),
            "processing_seconds": round(self.processing_seconds, 6),
            "unknown_characters": self.unknown_characters,
        }


def check_labelled(entries: list[Entry]) -> None:
    """Raise DataError unless there are entries and each has a reference text (before any work)."""
    if not entries:
        raise DataError("no entries to evaluate")
    unlabelled = [e for e in entries if e.text is None]
    if unlabelled:
        raise DataError(f"{len(unlabelled)} of {len(entries)} entries have no reference text (first: "
                        f"{unlabelled[0].audio}); evaluation needs a manifest with a text column")


def evaluate(model: Wav2Vec2ForCTC, entries: list[Entry], batch_size: int = 1, chunk_length: float = 20.0,
             stride: float = 2.0, on_utterance: Callable[[Utterance], None] | None = None,
             decoder: BeamDecoder | BeamSettings | None = None) -> EvaluationResult:
    """Transcribe every entry and score the hypotheses against the entries' texts.

    `on_utterance` is called with each result as it comes, failures included (for progress and
    error messages). `decoder`: greedy (None) or beam search, as in transcribe_many. Raises
    DataError for no entries, entries without text, or when no file at all could be read.
    """
    check_labelled(entries)
    if model.vocab is None:
        raise CheckpointError("the model has no vocabulary (vocab.json) to write text with")
    vocab = model.vocab
    decoder = as_decoder(decoder, vocab)  # the LM loads before the clock starts
    references = [normalize_text(e.text, vocab) for e in entries]
    utterances: list[Utterance] = []
    started = time.perf_counter()
    for index, result in transcribe_many(model, [e.audio for e in entries], batch_size=batch_size,
                                         chunk_length=chunk_length, stride=stride,
                                         decoder=decoder):
        entry = entries[index]
        if isinstance(result, Exception):
            utterance = Utterance(str(entry.audio), references[index], duration=entry.duration, error=str(result))
        else:
            hypothesis = normalize_text(result.text, vocab)
            words = jiwer.process_words(references[index], hypothesis)
            utterance = Utterance(str(entry.audio), references[index], hypothesis, result.duration,
                                  wer=words.wer, cer=jiwer.process_characters(references[index], hypothesis).cer,
                                  words=Counts.of(words))
        utterances.append(utterance)
        if on_utterance:
            on_utterance(utterance)
    processing = time.perf_counter() - started
    scored = [u for u in utterances if u.error is None]
    if not scored:
        raise DataError(f"none of the {len(entries)} audio files could be read (first: {utterances[0].error})")
    words = jiwer.process_words([u.reference for u in scored], [u.hypothesis for u in scored])
    characters = jiwer.process_characters([u.reference for u in scored], [u.hypothesis for u in scored])
    audio_seconds = sum(u.duration for u in scored)
    unknown = set().union(*(vocab.unknown_characters(r) for r in references))
    return EvaluationResult(wer=words.wer, cer=characters.cer, rtf=processing / audio_seconds,
                            words=Counts.of(words), characters=Counts.of(characters),
                            audio_seconds=audio_seconds, processing_seconds=processing,
                            utterances=utterances, unknown_characters=sorted(unknown))


@dataclass
class TuneResult:
    """The best LM weight and word score on a dev set, and the word error rate of every pair tried."""

    lm_weight: float
    word_score: float
    wer: float
    greedy_wer: float  # the same utterances decoded greedily
    tried: list[tuple[float, float, float]]  # (lm_weight, word_score, wer)
    utterances: int  # scored (files that could not be read are left out)


def log_probs_of(model: Wav2Vec2ForCTC, audio) -> np.ndarray:
    """(frames, vocab) float32 log-probabilities of one recording, through the chunks transcribe uses."""
    chunks = [logits.log_softmax(-1).numpy() for logits in chunk_logits(model, audio)]
    return np.concatenate(chunks) if chunks else np.zeros((0, len(model.vocab)), dtype=np.float32)


def tune(model: Wav2Vec2ForCTC, entries: list[Entry], decoder: BeamDecoder, lm_weights: list[float],
         word_scores: list[float], on_utterance: Callable[[Utterance], None] | None = None,
         on_pair: Callable[[float, float, float], None] | None = None) -> TuneResult:
    """Search the LM weight and word score of `decoder` on labelled entries for the lowest corpus WER.

    The model runs once per file; its log-probabilities (4 bytes x vocabulary per 20 ms frame: 23 MB
    an hour for 32 tokens) stay in memory while every pair of the grid decodes them again.
    `on_utterance` sees each file once its log-probabilities are ready (or it failed), `on_pair`
    each (lm_weight, word_score, wer) as it is measured. Raises DataError as `evaluate` does.
    """
    check_labelled(entries)
    vocab = model.vocab
    seconds = model.config.samples_per_frame / SAMPLE_RATE
    references, emissions = [], []
    for entry in entries:
        reference = normalize_text(entry.text, vocab)
        try:
            emissions.append(log_probs_of(model, load_audio(entry.audio)))
        except AudioError as error:
            utterance = Utterance(str(entry.audio), reference, duration=entry.duration, error=str(error))
        else:
            references.append(reference)
            utterance = Utterance(str(entry.audio), reference, duration=len(emissions[-1]) * seconds)
        if on_utterance:
            on_utterance(utterance)
    if not emissions:
        raise DataError(f"none of the {len(entries)} audio files could be read")

    def wer(decode) -> float:
        hypotheses = [normalize_text(decode(e), vocab) for e in emissions]
        return jiwer.process_words(references, hypotheses).wer

    def greedy(e: np.ndarray) -> str:
        ids, probs = best_path(torch.from_numpy(e))
        return greedy_decode(ids, probs, vocab).text

    tried = []
    for lm_weight in lm_weights:
        for word_score in word_scores:
            weighted = decoder.with_weights(lm_weight, word_score)
            tried.append((lm_weight, word_score, wer(lambda e: weighted.decode(e).text)))
            if on_pair:
                on_pair(*tried[-1])
    best = min(tried, key=lambda t: t[2])
    return TuneResult(best[0], best[1], best[2], wer(greedy), tried, len(emissions))


CSV_COLUMNS = ["audio", "reference", "hypothesis", "duration", "wer", "cer",
               "hits", "substitutions", "deletions", "insertions", "error"]


def utterance_record(utterance: Utterance) -> dict:
    """One utterance as a flat dict (the CSV columns; word counts are None for a failed file)."""
    counts = dataclasses.asdict(utterance.words) if utterance.words else dict.fromkeys(CSV_COLUMNS[6:10])
    return {"audio": utterance.audio, "reference": utterance.reference, "hypothesis": utterance.hypothesis,
            "duration": None if utterance.duration is None else round(utterance.duration, 3),
            "wer": utterance.wer, "cer": utterance.cer, **counts, "error": utterance.error}


def write_report(result: EvaluationResult, path: str | os.PathLike) -> None:
    """Per-utterance results: `.json` (the summary and every utterance) or `.csv` (one row each)."""
    path = Path(path)
    records = [utterance_record(u) for u in result.utterances]
    if path.suffix.lower() == ".json":
        text = json.dumps({"summary": result.summary(), "utterances": records}, ensure_ascii=False, indent=2) + "\n"
    elif path.suffix.lower() == ".csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in r.items()} for r in records)
        text = buffer.getvalue()
    else:
        raise DataError(f"{path}: a report is written as {' or '.join(REPORT_FORMATS)}")
    write_text_atomically(path, text)
