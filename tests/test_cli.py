"""The real `wav2vec2` command in a subprocess: formats, outputs and every kind of bad input."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import wav2vec2

from .conftest import write_audio
from .test_audio import CASES

COMMAND = str(Path(sys.executable).parent / "wav2vec2")


def run(*args: str, cwd=None, env=None) -> subprocess.CompletedProcess:
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run([COMMAND, *map(str, args)], capture_output=True, text=True, timeout=300,
                          cwd=cwd, env=environment)


@pytest.fixture(scope="module")
def files(tmp_path_factory, speechlike) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("audio")
    return {f"{s}-{r}-{c}ch": write_audio(folder / f"speech-{r}-{c}ch.{s}", speechlike, r, c, **o)
            for s, r, c, o, _ in CASES}


def test_every_format_rate_and_channel_count(checkpoints, files):
    result = run("transcribe", *files.values(), "--model", checkpoints["base"], "--format", "json")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["source"] for line in lines] == [str(p) for p in files.values()]
    model = wav2vec2.load_model(checkpoints["base"], precision="auto")  # the command's default
    for line, path in zip(lines, files.values()):
        assert line["text"] == model.transcribe(path).text
        assert line["duration"] == pytest.approx(3.3, abs=0.01)
    # lossless copies of the same speech at 16 kHz mono decode to the same text as the array
    assert lines[0]["text"] == model.transcribe(np.asarray(wav2vec2.load_audio(files["wav-16000-1ch"]))).text


def test_text_is_printed_and_subtitles_are_written(checkpoints, files, tmp_path):
    path = files["flac-48000-2ch"]
    printed = run("transcribe", path, "--model", checkpoints["lv60"])
    assert printed.returncode == 0, printed.stderr
    expected = wav2vec2.load_model(checkpoints["lv60"], precision="auto").transcribe(path)
    assert printed.stdout == expected.text + "\n"
    for fmt in ("srt", "vtt", "json", "txt"):
        written = run("transcribe", path, "--model", checkpoints["lv60"], "--format", fmt,
                      "--output-dir", tmp_path / "out")
        assert written.returncode == 0 and written.stdout == ""
    srt = (tmp_path / "out" / f"{path.stem}.srt").read_text()
    vtt = (tmp_path / "out" / f"{path.stem}.vtt").read_text()
    assert srt.startswith("1\n00:00:") and " --> " in srt and vtt.startswith("WEBVTT\n\n00:00:")
    cue_words = " ".join(line for line in srt.splitlines() if line and "-->" not in line
                         and not line.isdigit())
    assert cue_words == expected.text
    assert json.loads((tmp_path / "out" / f"{path.stem}.json").read_text())["text"] == expected.text


def test_long_file_with_small_chunks_and_batches(checkpoints, speechlike, tmp_path):
    path = write_audio(tmp_path / "long.wav", np.tile(speechlike, 6), 16000)
    one = run("transcribe", path, "--model", checkpoints["lv60"], "--chunk-length", "3", "--stride", "0.5")
    many = run("transcribe", path, "--model", checkpoints["lv60"], "--chunk-length", "3", "--stride", "0.5",
               "--batch-size", "3")
    assert one.returncode == many.returncode == 0 and one.stdout == many.stdout and one.stdout.strip()


def one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("wav2vec2: error:")]
    assert errors, result.stderr
    for fragment in fragments:
        assert any(fragment in line for line in errors), (fragment, result.stderr)


@pytest.mark.parametrize("kind", ["missing", "not-audio", "empty", "zero-length", "folder"])
def test_bad_audio_is_one_line_and_the_other_files_go_on(checkpoints, files, tmp_path, kind):
    bad = tmp_path / f"{kind}.wav"
    if kind == "not-audio":
        bad.write_text("hello, I am a text file\n" * 20)
    elif kind == "empty":
        bad.write_bytes(b"")
    elif kind == "zero-length":
        write_audio(bad, np.zeros(0, dtype=np.float32), 16000)
    elif kind == "folder":
        bad.mkdir()
    good = files["wav-16000-1ch"]
    result = run("transcribe", good, bad, good, "--model", checkpoints["base"])
    one_line_error(result, str(bad))
    assert result.returncode == 1
    assert len(result.stdout.splitlines()) == 2 and result.stdout.startswith(f"{good}: ")


@pytest.mark.parametrize("kind", ["corrupt-weights", "missing-folder", "unknown-hub-id", "not-wav2vec2"])
def test_bad_models_are_one_line(checkpoints, files, tmp_path, kind):
    model = tmp_path / "model"
    if kind == "corrupt-weights":
        model.mkdir()
        for path in checkpoints["base"].iterdir():
            (model / path.name).write_bytes(path.read_bytes())
        (model / "model.safetensors").write_bytes(b"\x00garbage" * 100)
    elif kind == "unknown-hub-id":
        model = "nobody/no-such-model"
    elif kind == "not-wav2vec2":
        model.mkdir()
        (model / "config.json").write_text(json.dumps({"model_type": "bert"}))
    result = run("transcribe", files["wav-16000-1ch"], "--model", model,
                 env={"HF_HUB_CACHE": str(tmp_path / "cache")})
    one_line_error(result, str(model))
    assert result.stdout == ""


def test_bad_settings_are_usage_errors(checkpoints, files):
    result = run("transcribe", files["wav-16000-1ch"], "--model", checkpoints["base"], "--chunk-length", "1",
                 "--stride", "0.5")
    one_line_error(result, "chunk length")
    assert result.returncode == 2
    assert run("transcribe", files["wav-16000-1ch"], "--batch-size", "0").returncode == 2


def test_every_option_of_every_command_has_a_help_line():
    from wav2vec2.cli import build_parser

    def parsers(parser):
        yield parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    yield from parsers(sub)

    for parser in parsers(build_parser()):
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            assert action.help and action.help.strip(), f"{parser.prog}: {action.option_strings or action.dest}"
