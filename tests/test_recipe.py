"""The synthetic-corpus recipe (recipes/synthetic/make_corpus.py), run at a tiny scale.

It needs the Debian TTS engines; where they are missing the tests are skipped, except under
CI=true, where a missing engine is a failure.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile

from wav2vec2.manifest import read_manifest

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "synthetic" / "make_corpus.py"
SPLITS = ("pretrain", "train_1h", "train_10min", "dev", "test", "test_voices")


def require_engines() -> None:
    missing = [name for name in ("espeak-ng", "flite", "festival") if shutil.which(name) is None]
    if not Path("/usr/share/wordnet/data.noun").is_file():
        missing.append("wordnet-base")
    if missing:
        message = f"the recipe needs the Debian packages {', '.join(missing)}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def corpora(tmp_path_factory) -> tuple[Path, Path]:
    """The same tiny corpus built twice, with one worker and with two."""
    require_engines()
    root = tmp_path_factory.mktemp("recipe")
    folders = []
    for jobs in (1, 2):
        out = root / f"jobs{jobs}"
        result = subprocess.run([sys.executable, str(RECIPE), "--out", str(out), "--seed", "0", "--scale", "0.01",
                                 "--pretrain-hours", "2", "--jobs", str(jobs)],
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        folders.append(out)
    return folders[0], folders[1]


def metadata(folder: Path) -> list[dict[str, str]]:
    lines = (folder / "metadata.tsv").read_text(encoding="utf-8").splitlines()
    columns = lines[0].split("\t")
    return [dict(zip(columns, line.split("\t"))) for line in lines[1:]]


def test_same_bytes_whatever_the_number_of_workers(corpora):
    one, two = corpora
    assert (one / "checksums.sha256").read_bytes() == (two / "checksums.sha256").read_bytes()
    for split in SPLITS:
        assert (one / f"{split}.tsv").read_bytes() == (two / f"{split}.tsv").read_bytes()
    for line in (one / "checksums.sha256").read_text().splitlines():  # and the checksums are right
        digest, path = line.split("  ", 1)
        assert hashlib.sha256((one / path).read_bytes()).hexdigest() == digest, path


def test_held_out_sentences_and_voices(corpora):
    folder = corpora[0]
    texts = {split: {entry.text for entry in read_manifest(folder / f"{split}.tsv")} for split in SPLITS}
    for held_out in ("test", "test_voices"):
        for split in SPLITS:
            if split != held_out:
                assert not texts[held_out] & texts[split], (held_out, split)
    assert {e.audio for e in read_manifest(folder / "train_10min.tsv")} <= \
        {e.audio for e in read_manifest(folder / "train_1h.tsv")}
    voices: dict[str, set[tuple[str, str, str]]] = {}
    for row in metadata(folder):
        voices.setdefault(row["split"], set()).add((row["engine"], row["voice"], row["variant"]))
    assert set(voices) == set(SPLITS) - {"train_10min"}
    for split, seen in voices.items():
        if split != "test_voices":
            assert not voices["test_voices"] & seen, split


def test_transcripts_and_audio(corpora):
    folder = corpora[0]
    for split in SPLITS:
        entries = read_manifest(folder / f"{split}.tsv")
        assert entries, split
        for entry in entries:
            assert re.fullmatch(r"[A-Z']+( [A-Z']+)*", entry.text), entry.text
            info = soundfile.info(str(entry.audio))
            assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
            assert info.frames / 16000 == pytest.approx(entry.duration)


def test_a_second_voicing_speaks_the_same_sentences_anew(corpora, tmp_path):
    """--voicing 1: train_1h's sentences (the same ones, in the same order) with other voices and
    augmentation; the held-out splits cannot be re-voiced."""
    out = tmp_path / "voicing1"
    subprocess.run([sys.executable, str(RECIPE), "--out", str(out), "--seed", "0", "--scale", "0.01",
                    "--pretrain-hours", "2", "--splits", "train_1h", "--voicing", "1"],
                   check=True, capture_output=True, timeout=300)
    first, second = metadata(corpora[0]), metadata(out)
    first = [row for row in first if row["split"] == "train_1h"]
    shared = min(len(first), len(second))
    assert shared >= 3
    assert [row["tts_text"] for row in second[:shared]] == [row["tts_text"] for row in first[:shared]]
    drawn = ("engine", "voice", "variant", "speed_wpm", "pitch", "tempo", "noise", "peak_dbfs")
    assert [[row[k] for k in drawn] for row in second] != [[row[k] for k in drawn] for row in first[:len(second)]]
    refused = subprocess.run([sys.executable, str(RECIPE), "--out", str(tmp_path / "refused"), "--voicing", "1",
                              "--splits", "test"], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1
    assert refused.stderr.strip() == ("error: --voicing N (N > 0) needs --splits with pretrain, train_1h or "
                                      "definitions only")


def test_the_definitions_split_speaks_wordnet_definitions_and_no_example(corpora, tmp_path, monkeypatch):
    """--splits definitions: WordNet's definitions (dog's first one among them), none of them an
    example sentence, so none of them a scored sentence; the other splits' bytes stay as they were."""
    monkeypatch.syspath_prepend(str(RECIPE.parent))
    from make_corpus import read_definitions, read_sentences

    definitions = {sentence.transcript for sentence in read_definitions()}
    assert "A MEMBER OF THE GENUS CANIS THAT HAS BEEN DOMESTICATED BY MAN SINCE PREHISTORIC TIMES" in definitions
    assert not definitions & {sentence.transcript for sentence in read_sentences()}
    out = tmp_path / "definitions"
    subprocess.run([sys.executable, str(RECIPE), "--out", str(out), "--seed", "0", "--scale", "0.01",
                    "--definitions-hours", "1", "--splits", "definitions", "train_1h"],
                   check=True, capture_output=True, timeout=300)
    spoken = read_manifest(out / "definitions.tsv")
    assert sum(entry.duration for entry in spoken) >= 36 and {entry.text for entry in spoken} <= definitions
    assert (out / "train_1h.tsv").read_bytes() == (corpora[0] / "train_1h.tsv").read_bytes()


@pytest.mark.slow
def test_the_full_test_set_is_rebuilt_byte_for_byte(tmp_path):
    """`--splits test` on another day and machine gives the 400 files of the corpus the experiment
    was scored on (recipes/synthetic/test.sha256 holds their checksums)."""
    require_engines()
    out = tmp_path / "corpus"
    subprocess.run([sys.executable, str(RECIPE), "--out", str(out), "--seed", "0", "--splits", "test"],
                   check=True, capture_output=True, timeout=600)
    assert sorted(path.name for path in out.glob("*.tsv")) == ["metadata.tsv", "test.tsv"]  # the only manifest
    rebuilt = (out / "checksums.sha256").read_text().splitlines()
    expected = (RECIPE.parent / "test.sha256").read_text().splitlines()
    assert [line for line in rebuilt if " audio/test/" in line or line.endswith("  test.tsv")] == expected


@pytest.mark.slow
def test_the_experiment_runs_end_to_end_and_repeats_without_rerunning(corpora, tmp_path):
    """At 1 % of the budget on the tiny corpus: every run, every score, and a second invocation
    that finds every run done and writes the same table."""
    command = [sys.executable, str(RECIPE.parent / "experiment.py"), "--data", str(corpora[0]),
               "--out", str(tmp_path), "--budget", "0.01", "--device", "cpu"]
    first = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr
    pretraining = [json.loads(line) for line in (tmp_path / "pretrain" / "log.jsonl").read_text().splitlines()]
    assert pretraining[-1]["step"] == 30  # 1 % of 3,000 updates
    hours = [r["audio_hours"] for r in pretraining if "audio_hours" in r]
    assert hours == sorted(hours) and hours[0] > 0
    assert sorted(p.name for p in (tmp_path / "pretrain" / "models").iterdir()) == [
        "step-0000010", "step-0000020", "step-0000030"]
    results = json.loads((tmp_path / "results.json").read_text())
    pretrained = [f"pretrained{step}_{labels}" for step in (10, 20, 30) for labels in ("train_10min", "train_1h")]
    assert sorted(results) == sorted([*pretrained, "scratch_train_10min", "scratch_train_1h"])
    for scores in results.values():  # every test utterance scored (10 updates: the scores themselves mean nothing)
        for test in ("test", "test_voices"):
            utterances = len((corpora[0] / f"{test}.tsv").read_text().splitlines()) - 1
            assert scores[test]["utterances"] == utterances and scores[test]["failed"] == 0
            assert scores[test]["cer"] >= 0 and scores[test]["wer"] >= 0
    probed = json.loads((tmp_path / "probe" / "probe.json").read_text())["results"]
    assert sorted(probed) == sorted(f"{encoder} {head}" for head in ("last", "layers") for encoder in
                                    [*(str(tmp_path / "pretrain" / "models" / f"step-{s:07d}") for s in (10, 20, 30)),
                                     "random"])
    for result in probed.values():
        assert sum(result["layer_weights"]) == pytest.approx(1, abs=0.01) and 0 <= result["test"]["cer"]
    table = [line for line in first.stdout.splitlines() if line.startswith(("| scratch", "| pre", "| random"))]
    assert len(table) == 8 + 8  # the fine-tunings; the probes of three pretrained models and the random one
    assert "- Probe (1 h of labels)" in first.stdout
    second = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    assert second.stdout.count("(already there)") == 10
    assert [line for line in second.stdout.splitlines() if line in table] == table


def test_the_lm_text_leaves_out_the_scored_sentences_and_the_lexicon_holds_a_dictionary(corpora, tmp_path):
    command = [sys.executable, str(RECIPE.parent / "lm_text.py"), "--data", str(corpora[0]),
               "--out", str(tmp_path / "lm.txt"), "--lexicon", str(tmp_path / "lexicon.txt"), "--wordnet-words",
               "--glosses"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    sentences = (tmp_path / "lm.txt").read_text().splitlines()
    scored = {e.text for name in ("dev", "test", "test_voices") for e in read_manifest(corpora[0] / f"{name}.tsv")}
    assert sentences and scored and not scored & set(sentences)
    # dog's gloss in data.noun: "a member of the genus Canis (probably descended from the common
    # wolf) that has been domesticated by man since prehistoric times; occurs in many breeds; ..."
    assert {"A MEMBER OF THE GENUS CANIS THAT HAS BEEN DOMESTICATED BY MAN SINCE PREHISTORIC TIMES",
            "OCCURS IN MANY BREEDS"} <= set(sentences)
    lexicon = (tmp_path / "lexicon.txt").read_text().splitlines()
    assert lexicon == sorted(set(lexicon)) and {w for s in sentences for w in s.split()} <= set(lexicon)
    # WordNet's lemmas (index.noun) and irregular forms (verb.exc, noun.exc), spelled as transcripts
    assert {"DOG", "RAN", "GEESE", "O'CLOCK"} <= set(lexicon)
    assert all(re.fullmatch(r"[A-Z][A-Z']*", word) for word in lexicon)
    # --inflections: English's regular forms of those lemmas, by the rules of a grammar book
    command.append("--inflections")
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    inflected = set((tmp_path / "lexicon.txt").read_text().splitlines())
    regular = {"BOXES", "BERRIES", "DOGS", "DOG'S", "DOGS'", "CARRIED", "BAKED", "BAKING", "TYING", "BARKS"}
    assert regular <= inflected and not regular <= set(lexicon) and set(lexicon) < inflected
    assert not {"RUNED", "GOED", "STOPED", "RUNING"} & inflected
