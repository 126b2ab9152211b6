"""Evaluation: the Python API and the `wav2vec2 evaluate` command, scored against jiwer and by hand.

A random model's hypotheses are nonsense, so the oracles are independent computations on the
same strings: jiwer on the hypotheses of `wav2vec2 transcribe`, and counts worked out by hand
for references built from the model's own hypotheses.
"""

from __future__ import annotations

import csv
import json
import re

import jiwer
import numpy as np
import pytest

import wav2vec2
from wav2vec2.errors import DataError
from wav2vec2.evaluate import evaluate
from wav2vec2.manifest import Entry

from .conftest import write_audio
from .test_cli import one_line_error, run

# references as written in a manifest, and as the upper-case vocabulary spells them (by hand)
REFERENCES = ["Hello, world!", "It’s a   TEST of the  system.", "the quick brown fox", "Well-known facts; see."]
NORMALISED = ["HELLO WORLD", "IT'S A TEST OF THE SYSTEM", "THE QUICK BROWN FOX", "WELL KNOWN FACTS SEE"]


def expected_hypothesis(text: str) -> str:
    """A transcription as evaluate scores it: special tokens dropped, spaces collapsed."""
    return " ".join(re.sub(r"<pad>|<s>|</s>|<unk>", "", text).split())


@pytest.fixture(scope="module")
def audio(tmp_path_factory, speechlike) -> list:
    folder = tmp_path_factory.mktemp("evaluate")
    return [write_audio(folder / "a.wav", speechlike, 16000),
            write_audio(folder / "b.flac", speechlike[::-1].copy(), 22050),
            write_audio(folder / "c.wav", speechlike[:32000] * 0.5, 16000),
            write_audio(folder / "d.wav", np.tile(speechlike, 2)[:80000], 16000)]


def manifest(path, rows: list[tuple]) -> str:
    path.write_text("audio\ttext\n" + "".join(f"{audio}\t{text}\n" for audio, text in rows), encoding="utf-8")
    return str(path)


def test_scores_are_jiwers_on_the_hypotheses_of_transcribe(checkpoints, audio, tmp_path):
    transcribed = run("transcribe", *audio, "--model", checkpoints["base"], "--format", "json",
                      "--precision", "fp32")  # as evaluate runs by default
    assert transcribed.returncode == 0, transcribed.stderr
    hypotheses = [expected_hypothesis(json.loads(line)["text"]) for line in transcribed.stdout.splitlines()]
    assert len(hypotheses) == 4 and all(hypotheses)

    # audio paths relative to the manifest's folder
    test = manifest(audio[0].parent / "test.tsv", [(p.name, text) for p, text in zip(audio, REFERENCES)])
    result = run("evaluate", "--model", checkpoints["base"], "--manifest", test, "--json",
                 "--output", tmp_path / "report.json")
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 1
    summary = json.loads(result.stdout)

    words = jiwer.process_words(NORMALISED, hypotheses)
    characters = jiwer.process_characters(NORMALISED, hypotheses)
    assert summary["wer"] == pytest.approx(jiwer.wer(NORMALISED, hypotheses))
    assert summary["cer"] == pytest.approx(jiwer.cer(NORMALISED, hypotheses))
    assert summary["words"] == {"hits": words.hits, "substitutions": words.substitutions,
                                "deletions": words.deletions, "insertions": words.insertions}
    assert summary["characters"] == {"hits": characters.hits, "substitutions": characters.substitutions,
                                     "deletions": characters.deletions, "insertions": characters.insertions}
    assert summary["utterances"] == 4 and summary["failed"] == 0 and summary["failed_files"] == []
    assert summary["audio_seconds"] == pytest.approx(3.3 + 3.3 + 2.0 + 5.0, abs=0.01)
    assert summary["rtf"] == pytest.approx(summary["processing_seconds"] / summary["audio_seconds"], rel=0.01)
    assert summary["rtf"] > 0 and summary["unknown_characters"] == []

    report = json.loads((tmp_path / "report.json").read_text())
    assert report["summary"]["wer"] == summary["wer"]
    records = report["utterances"]
    assert [r["audio"] for r in records] == [str(p) for p in audio]
    assert [r["reference"] for r in records] == NORMALISED
    assert [r["hypothesis"] for r in records] == hypotheses
    for record, reference, hypothesis in zip(records, NORMALISED, hypotheses):
        assert record["wer"] == pytest.approx(jiwer.wer(reference, hypothesis))
        assert record["cer"] == pytest.approx(jiwer.cer(reference, hypothesis))
        assert record["error"] is None


def test_hand_computed_counts_from_the_models_own_hypotheses(checkpoints, audio):
    model = wav2vec2.load_model(checkpoints["lv60"])
    hypotheses = [expected_hypothesis(model.transcribe(path).text) for path in audio[:3]]
    assert all(hypotheses)
    # the same words in another case and punctuation; then two words the model did not say
    entries = [Entry(audio[0], hypotheses[0].lower() + "!"),
               Entry(audio[1], f"“{hypotheses[1].title()}”"),
               Entry(audio[2], hypotheses[2] + ", and more.")]
    result = evaluate(model, entries)
    words = sum(len(h.split()) for h in hypotheses)
    characters = sum(len(h) for h in hypotheses)
    assert [u.hypothesis for u in result.utterances] == hypotheses
    assert (result.words.hits, result.words.substitutions, result.words.deletions, result.words.insertions) == (
        words, 0, 2, 0)
    assert result.wer == pytest.approx(2 / (words + 2))
    # " AND MORE" is 9 characters, all deleted
    assert (result.characters.hits, result.characters.deletions, result.characters.errors) == (characters, 9, 9)
    assert result.cer == pytest.approx(9 / (characters + 9))
    assert [u.wer for u in result.utterances] == [0.0, 0.0, pytest.approx(2 / (len(hypotheses[2].split()) + 2))]
    assert result.audio_seconds == pytest.approx(3.3 + 3.3 + 2.0, abs=0.01)

    batched = evaluate(model, entries, batch_size=3)
    assert [u.audio for u in batched.utterances] == [str(p) for p in audio[:3]]
    assert batched.words.hits + batched.words.substitutions + batched.words.deletions == words + 2


def test_missing_audio_is_reported_counted_and_skipped(checkpoints, audio, tmp_path):
    missing = tmp_path / "missing.wav"
    not_audio = tmp_path / "notes.wav"
    not_audio.write_text("not audio\n")
    test = manifest(tmp_path / "test.tsv", [(audio[0], REFERENCES[0]), (missing, "GONE"),
                                            (audio[2], REFERENCES[2]), (not_audio, "NOPE")])
    result = run("evaluate", "--model", checkpoints["base"], "--manifest", test, "--output", tmp_path / "r.csv")
    assert result.returncode == 1  # documented: results for the others, exit status 1
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("wav2vec2: error:")]
    assert len(errors) == 2 and str(missing) in errors[0] and str(not_audio) in errors[1]
    assert "2 of 4 files failed" in result.stderr
    assert result.stdout.startswith("WER ") and "2 utterances" in result.stdout

    rows = list(csv.DictReader((tmp_path / "r.csv").open(encoding="utf-8")))
    assert [row["audio"] for row in rows] == [str(audio[0]), str(missing), str(audio[2]), str(not_audio)]
    assert [bool(row["error"]) for row in rows] == [False, True, False, True]
    assert rows[1]["hypothesis"] == rows[1]["wer"] == ""
    scored = [rows[0], rows[2]]
    wer = jiwer.wer([r["reference"] for r in scored], [r["hypothesis"] for r in scored])
    assert f"WER {100 * wer:.2f}%" in result.stdout

    as_json = run("evaluate", "--model", checkpoints["base"], "--manifest", test, "--json")
    summary = json.loads(as_json.stdout)
    assert as_json.returncode == 1 and summary["failed"] == 2 and summary["utterances"] == 2
    assert summary["failed_files"] == [str(missing), str(not_audio)]
    assert summary["wer"] == pytest.approx(wer)


def test_no_readable_audio_at_all_is_an_error(checkpoints, tmp_path):
    model = wav2vec2.load_model(checkpoints["base"])
    with pytest.raises(DataError, match="none of the 2 audio files could be read"):
        evaluate(model, [Entry(tmp_path / "a.wav", "A"), Entry(tmp_path / "b.wav", "B")])
    with pytest.raises(DataError, match="1 of 2 entries have no reference text"):
        evaluate(model, [Entry(tmp_path / "a.wav", "A"), Entry(tmp_path / "b.wav")])
    with pytest.raises(DataError, match="no entries"):
        evaluate(model, [])


@pytest.mark.parametrize("kind", ["empty", "header-only", "missing", "bad-line", "unlabelled-folder"])
def test_bad_manifests_are_one_line(checkpoints, audio, tmp_path, kind):
    test = tmp_path / "test.tsv"
    expected = str(test)
    if kind == "empty":
        test.write_text("")
    elif kind == "header-only":
        test.write_text("audio\ttext\n")
    elif kind == "bad-line":
        test.write_text(f"audio\ttext\n{audio[0]}\tA\tB\n")
        expected = f"{test}:2:"
    elif kind == "unlabelled-folder":
        test = audio[0].parent
        expected = "no reference text"
    result = run("evaluate", "--model", checkpoints["base"], "--manifest", test)
    one_line_error(result, expected)
    assert result.returncode == 1 and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1


def test_report_must_be_json_or_csv(checkpoints, tmp_path):
    result = run("evaluate", "--model", checkpoints["base"], "--manifest", tmp_path / "x.tsv",
                 "--output", tmp_path / "report.txt")
    assert result.returncode == 2 and "must end in .json or .csv" in result.stderr
