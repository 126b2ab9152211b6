"""Manifests and data folders: reading, writing, LibriSpeech, scanning, durations, and every bad input."""

from __future__ import annotations

import os

import numpy as np
import pytest
import soundfile

from wav2vec2.errors import AudioError, DataError
from wav2vec2.manifest import (Entry, import_librispeech, load_data, read_manifest, scan_audio, with_durations,
                               write_manifest)


def tone(path, frames: int, rate: int = 16000):
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), 0.1 * np.sin(np.arange(frames) / 10.0).astype(np.float32), rate)
    return path


def test_tsv_paths_are_relative_to_the_manifest_not_the_working_folder(tmp_path, monkeypatch):
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "m.tsv").write_text("audio\tduration\ttext\n"
                                "a.wav\t1.5\tHELLO WORLD\n"
                                "\n"  # blank lines are skipped
                                "sub/b.flac\t\tit's\r\n"
                                f"{tmp_path / 'elsewhere.wav'}\t0\t\n")
    monkeypatch.chdir(tmp_path)
    assert read_manifest("data/m.tsv") == [
        Entry(data / "a.wav", "HELLO WORLD", 1.5),
        Entry(data / "sub" / "b.flac", "it's", None),
        Entry(tmp_path / "elsewhere.wav", "", 0.0),
    ]


def test_json_lines_and_audio_only_tsv(tmp_path):
    (tmp_path / "m.jsonl").write_text('{"audio": "a.wav", "text": "A B", "duration": 2}\n\n'
                                      '{"audio": "/x/b.wav", "speaker": 7}\n')
    assert read_manifest(tmp_path / "m.jsonl") == [Entry(tmp_path / "a.wav", "A B", 2.0), Entry(tmp_path / "/x/b.wav")]
    (tmp_path / "m.json").write_text('{"audio": "c.wav"}\n')
    assert read_manifest(tmp_path / "m.json") == [Entry(tmp_path / "c.wav")]
    (tmp_path / "audio.tsv").write_text("audio\nc.wav\n")
    assert read_manifest(tmp_path / "audio.tsv") == [Entry(tmp_path / "c.wav")]


@pytest.mark.parametrize("suffix", [".tsv", ".jsonl"])
def test_write_then_read_gives_the_same_entries(tmp_path, suffix):
    entries = [Entry(tmp_path / "data" / "a.wav", "HELLO WORLD", 1.25),
               Entry(tmp_path / "data" / "deep" / "b.wav", "ÇA VA 'OUI'", None),
               Entry(tmp_path / "outside.wav", None, 3.0)]
    path = tmp_path / "data" / f"manifest{suffix}"
    write_manifest(path, entries)
    text = path.read_text(encoding="utf-8")
    assert "deep/b.wav" in text and str(tmp_path / "data") not in text  # relative inside the folder
    assert str(tmp_path / "outside.wav") in text  # absolute outside it
    read = read_manifest(path)
    if suffix == ".tsv":  # TSV has no "absent" text: an empty field reads back as ""
        entries[2].text = ""
    assert read == entries
    assert os.listdir(path.parent) == [path.name]  # no temporary file left behind


def test_tsv_columns_follow_the_entries(tmp_path):
    write_manifest(tmp_path / "m.tsv", [Entry(tmp_path / "a.wav"), Entry(tmp_path / "b.wav")])
    assert (tmp_path / "m.tsv").read_text() == "audio\na.wav\nb.wav\n"
    write_manifest(tmp_path / "m.tsv", [Entry(tmp_path / "a.wav", duration=0.5)])
    assert (tmp_path / "m.tsv").read_text() == "audio\tduration\na.wav\t0.5\n"


def test_a_failed_write_leaves_the_old_manifest_and_no_temporary_file(tmp_path):
    path = tmp_path / "m.tsv"
    write_manifest(path, [Entry(tmp_path / "a.wav", "A")])
    before = path.read_text()
    with pytest.raises(DataError, match="tab or line break"):
        write_manifest(path, [Entry(tmp_path / "b.wav", "B"), Entry(tmp_path / "c.wav", "TWO\nLINES")])
    assert path.read_text() == before and os.listdir(tmp_path) == ["m.tsv"]
    with pytest.raises(DataError, match="no entries"):
        write_manifest(path, [])


@pytest.mark.parametrize("name, content, message", [
    ("missing.tsv", None, "no such manifest"),
    ("empty.tsv", "", "no entries"),
    ("header.tsv", "audio\ttext\n", "no entries"),
    ("blank.jsonl", "\n\n", "no entries"),
    ("noaudio.tsv", "path\ttext\na.wav\tA\n", ":1: the header has no 'audio' column"),
    ("fields.tsv", "audio\ttext\na.wav\tA\nb.wav\tB\textra\n", ":3: expected 2 tab-separated fields"),
    ("emptyaudio.tsv", "audio\ttext\n\tA\n", ":2: the audio path is empty"),
    ("word.tsv", "audio\tduration\na.wav\t1.0\nb.wav\tlong\n", ":3: bad duration 'long'"),
    ("negative.tsv", "audio\tduration\na.wav\t-1\n", ":2: bad duration '-1'"),
    ("nan.jsonl", '{"audio": "a.wav", "duration": NaN}\n', ":1: bad duration nan"),
    ("bool.jsonl", '{"audio": "a.wav", "duration": true}\n', ":1: bad duration True"),
    ("broken.jsonl", '{"audio": "a.wav"}\n{"audio": \n', ":2: not valid JSON"),
    ("list.jsonl", '["a.wav", "A"]\n', ":1: expected a JSON object"),
    ("nokey.jsonl", '{"audio": "a.wav"}\n{"path": "b.wav"}\n', ":2: no 'audio' key"),
    ("number.jsonl", '{"audio": 3}\n', ":1: the audio path must be a string"),
    ("text.jsonl", '{"audio": "a.wav", "text": 5}\n', ":1: the text must be a string"),
    ("latin1.tsv", "audio\ttext\na.wav\tGAR\xc7ON\n".encode("latin-1"), "not UTF-8"),
])
def test_bad_manifests_name_the_file_and_line(tmp_path, name, content, message):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(DataError) as caught:
        read_manifest(path)
    assert str(caught.value).startswith(str(path)) and message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_scan_audio_finds_every_audio_file_sorted(tmp_path):
    for name in ["b/z.flac", "a.wav", "b/a.OGG", "c/d/e.mp3", "x.opus", "notes.txt", "b/.hidden.wav"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "folder.wav").mkdir()
    assert [e.audio.relative_to(tmp_path).as_posix() for e in scan_audio(tmp_path)] == [
        "a.wav", "b/a.OGG", "b/z.flac", "c/d/e.mp3", "x.opus"]
    assert all(e.text is None and e.duration is None for e in scan_audio(tmp_path))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no audio files"):
        scan_audio(tmp_path / "empty")
    with pytest.raises(DataError, match="no such folder"):
        scan_audio(tmp_path / "nowhere")


def librispeech(root):
    """Two speakers, three chapters: the layout of an extracted LibriSpeech split."""
    chapters = {("1089", "134686"): ["HE HOPED THERE WOULD BE STEW FOR DINNER", "STUFF IT INTO YOU"],
                ("1089", "134691"): ["HE COULD WAIT NO LONGER"],
                ("121", "121726"): ["ALSO A POPULAR CONTRIVANCE", "BUT IT'S HERE"]}
    expected = []
    for (speaker, chapter), texts in chapters.items():
        folder = root / "test-clean" / speaker / chapter
        folder.mkdir(parents=True)
        lines = []
        for number, text in enumerate(texts):
            utterance = f"{speaker}-{chapter}-{number:04d}"
            tone(folder / f"{utterance}.flac", 1600 * (number + 1))
            lines.append(f"{utterance} {text}")
            expected.append(Entry(folder / f"{utterance}.flac", text))
        (folder / f"{speaker}-{chapter}.trans.txt").write_text("\n".join(lines) + "\n")
    return sorted(expected, key=lambda e: (e.audio.parent, e.audio.name))


def test_librispeech_layout(tmp_path):
    expected = librispeech(tmp_path / "LibriSpeech")
    assert import_librispeech(tmp_path / "LibriSpeech") == expected
    assert import_librispeech(tmp_path / "LibriSpeech" / "test-clean" / "121") == [
        e for e in expected if e.audio.name.startswith("121-")]
    assert load_data(tmp_path / "LibriSpeech" / "test-clean") == expected


def test_librispeech_missing_audio_is_an_error_listing_it(tmp_path):
    expected = librispeech(tmp_path)
    expected[1].audio.unlink()
    with pytest.raises(DataError, match=f"1 of 5 utterances have no audio file \\({expected[1].audio}\\)"):
        import_librispeech(tmp_path)
    with pytest.raises(DataError, match="no such folder"):
        import_librispeech(tmp_path / "nowhere")
    (tmp_path / "plain").mkdir()
    with pytest.raises(DataError, match="no LibriSpeech transcripts"):
        import_librispeech(tmp_path / "plain")


def test_load_data_takes_a_manifest_a_librispeech_folder_or_an_audio_folder(tmp_path):
    tone(tmp_path / "audio" / "one.wav", 800)
    assert load_data(tmp_path / "audio") == [Entry(tmp_path / "audio" / "one.wav")]
    write_manifest(tmp_path / "m.jsonl", [Entry(tmp_path / "audio" / "one.wav", "ONE")])
    assert load_data(tmp_path / "m.jsonl") == [Entry(tmp_path / "audio" / "one.wav", "ONE")]
    with pytest.raises(DataError, match="no such manifest file or data folder"):
        load_data(tmp_path / "nothing.tsv")


def test_durations_are_read_from_the_files_only_where_missing(tmp_path):
    entries = [Entry(tone(tmp_path / "a.wav", 8000, 16000)), Entry(tone(tmp_path / "b.flac", 33075, 44100), "B"),
               Entry(tmp_path / "not-read.wav", "C", 9.5)]
    filled = with_durations(entries)
    assert [e.duration for e in filled] == [0.5, 0.75, 9.5]
    assert filled[1].text == "B" and entries[0].duration is None  # the input is not changed
    with pytest.raises(AudioError, match="missing.wav: no such file"):
        with_durations([Entry(tmp_path / "missing.wav")])
    (tmp_path / "text.wav").write_text("not audio")
    with pytest.raises(AudioError, match="text.wav: not a readable audio file"):
        with_durations([Entry(tmp_path / "text.wav")])
