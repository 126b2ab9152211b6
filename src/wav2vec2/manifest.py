"""Lists of audio files, with transcripts for fine-tuning and evaluation or without for pretraining.

A manifest is a TSV file whose header names its columns (`audio`, and optionally `text` and
`duration`), or a JSON-lines file (`.jsonl`, `.json`) with one object of the same keys per line.
Relative audio paths are relative to the manifest's folder, so a data set and its manifests can
be moved together. A folder works too: the LibriSpeech layout, or any tree of audio files.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from .audio import AudioFile
from .errors import DataError

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".opus")
JSON_SUFFIXES = (".jsonl", ".json")


@dataclass
class Entry:
    audio: Path
    text: str | None = None  # the transcript; None for unlabelled audio
    duration: float | None = None  # seconds; None until with_durations() reads it


def read_manifest(path: str | os.PathLike) -> list[Entry]:
    """Read a TSV or JSON-lines manifest; every problem is a DataError naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such manifest file" if not path.exists() else f"{path}: not a file")
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    if path.suffix.lower() in JSON_SUFFIXES:
        entries = _read_json_lines(path, lines)
    else:
        entries = _read_tsv(path, lines)
    if not entries:
        raise DataError(f"{path}: no entries")
    return entries


def _read_tsv(path: Path, lines: list[str]) -> list[Entry]:
    numbered = [(number, line) for number, line in enumerate(lines, 1) if line.strip()]
    if not numbered:
        return []
    header_number, header = numbered[0]
    columns = [name.strip() for name in header.split("\t")]
    if "audio" not in columns:
        raise DataError(f"{path}:{header_number}: the header has no 'audio' column "
                        f"(expected tab-separated column names such as audio, text, duration; found {header!r})")
    entries = []
    for number, line in numbered[1:]:
        fields = line.split("\t")
        if len(fields) != len(columns):
            raise DataError(f"{path}:{number}: expected {len(columns)} tab-separated fields "
                            f"({', '.join(columns)}), found {len(fields)}")
        entries.append(_entry(path, number, dict(zip(columns, fields))))
    return entries


def _read_json_lines(path: Path, lines: list[str]) -> list[Entry]:
    entries = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as error:
            raise DataError(f"{path}:{number}: not valid JSON ({error}); "
                            "expected one JSON object per line") from None
        if not isinstance(record, dict):
            raise DataError(f"{path}:{number}: expected a JSON object with an 'audio' key, "
                            f"found {type(record).__name__}")
        if "audio" not in record:
            raise DataError(f"{path}:{number}: no 'audio' key")
        entries.append(_entry(path, number, record))
    return entries


def _entry(path: Path, number: int, record: dict) -> Entry:
    """One manifest record (a TSV line's fields, or a JSON object) as an Entry."""
    where = f"{path}:{number}"
    audio, text, duration = record.get("audio"), record.get("text"), record.get("duration")
    if not isinstance(audio, str):
        raise DataError(f"{where}: the audio path must be a string, not {audio!r}")
    if not audio.strip():
        raise DataError(f"{where}: the audio path is empty")
    if text is not None and not isinstance(text, str):
        raise DataError(f"{where}: the text must be a string, not {text!r}")
    try:
        seconds = _seconds(duration)
    except ValueError:
        raise DataError(f"{where}: bad duration {duration!r} (expected seconds as a non-negative number)") from None
    audio_path = Path(audio.strip()).expanduser()
    if not audio_path.is_absolute():  # absolute, so that it stays right if the working folder changes
        audio_path = Path(os.path.abspath(path.parent)) / audio_path
    return Entry(audio_path, text, seconds)


def _seconds(value) -> float | None:
    """A duration field as seconds: None when absent or empty, ValueError unless a number >= 0."""
    if isinstance(value, str):
        value = value.strip() or None
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(value)
    seconds = float(value)
    if not (math.isfinite(seconds) and seconds >= 0):
        raise ValueError(value)
    return seconds


def write_manifest(path: str | os.PathLike, entries: Iterable[Entry]) -> None:
    """Write TSV, or JSON lines for a `.jsonl`/`.json` path, atomically (a reader never sees half a file).

    Audio paths under the manifest's folder are written relative to it, others absolute. Columns
    `text` and `duration` are written when any entry has them.
    """
    path = Path(path)
    entries = list(entries)
    if not entries:
        raise DataError(f"{path}: no entries to write")
    folder = Path(os.path.abspath(path.parent))

    def audio_text(entry: Entry) -> str:
        audio = Path(os.path.abspath(entry.audio))
        try:
            return audio.relative_to(folder).as_posix()
        except ValueError:
            return str(audio)

    if path.suffix.lower() in JSON_SUFFIXES:
        lines = []
        for entry in entries:
            record = {"audio": audio_text(entry), "text": entry.text, "duration": entry.duration}
            lines.append(json.dumps({k: v for k, v in record.items() if v is not None}, ensure_ascii=False))
    else:
        columns = ["audio"] + [name for name in ("text", "duration")
                               if any(getattr(e, name) is not None for e in entries)]
        lines = ["\t".join(columns)]
        for entry in entries:
            fields = {"audio": audio_text(entry), "text": entry.text or "",
                      "duration": "" if entry.duration is None else repr(float(entry.duration))}
            for name in columns:
                if any(c in fields[name] for c in "\t\n\r"):
                    raise DataError(f"{path}: the {name} of {entry.audio} contains a tab or line break, "
                                    "which TSV cannot hold (write a .jsonl manifest instead)")
            lines.append("\t".join(fields[name] for name in columns))
    write_text_atomically(path, "\n".join(lines) + "\n")


def write_text_atomically(path: Path, text: str) -> None:
    """Write to a temporary file beside `path`, then rename it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="") as file:
            file.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def scan_audio(folder: str | os.PathLike) -> list[Entry]:
    """Every audio file under `folder` (by extension, any case), sorted, without transcripts.

    Hidden files (names starting with "."), such as macOS's "._x.wav" resource forks, are skipped.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder")
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS
                   and not p.name.startswith(".") and p.is_file())
    if not paths:
        raise DataError(f"{folder}: no audio files ({', '.join(AUDIO_EXTENSIONS)}) in this folder or below")
    return [Entry(p) for p in paths]


def import_librispeech(root: str | os.PathLike) -> list[Entry]:
    """The utterances of a LibriSpeech-style tree: SPEAKER/CHAPTER/SPEAKER-CHAPTER.trans.txt files.

    Each transcript line is "UTTERANCE-ID TEXT", and the audio is UTTERANCE-ID.flac beside it.
    `root` may be any folder above the transcripts (LibriSpeech/, LibriSpeech/test-clean/, ...).
    Utterances whose audio is missing are an error listing them, not skipped: an incomplete
    download would otherwise give quietly different numbers from the published ones.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such folder")
    transcripts = sorted(root.rglob("*.trans.txt"))
    if not transcripts:
        raise DataError(f"{root}: no LibriSpeech transcripts (*.trans.txt) in this folder or below")
    entries: list[Entry] = []
    missing: list[Path] = []
    for transcript in transcripts:
        try:
            lines = transcript.read_text(encoding="utf-8-sig").splitlines()
        except UnicodeDecodeError as error:
            raise DataError(f"{transcript}: not UTF-8 text ({error.reason} at byte {error.start})") from None
        for line in lines:
            if not line.strip():
                continue
            utterance, _, text = line.strip().partition(" ")
            audio = transcript.parent / f"{utterance}.flac"
            if not audio.is_file():
                missing.append(audio)
            entries.append(Entry(audio, text.strip()))
    if missing:
        shown = ", ".join(str(p) for p in missing[:3]) + (", ..." if len(missing) > 3 else "")
        raise DataError(f"{root}: {len(missing)} of {len(entries)} utterances have no audio file ({shown})")
    if not entries:
        raise DataError(f"{root}: the transcripts hold no utterances")
    return entries


def load_data(path: str | os.PathLike) -> list[Entry]:
    """A manifest file, a LibriSpeech-style folder (it has *.trans.txt files), or a folder of audio."""
    path = Path(path)
    if path.is_dir():
        if next(path.rglob("*.trans.txt"), None) is not None:
            return import_librispeech(path)
        return scan_audio(path)
    if not path.exists():
        raise DataError(f"{path}: no such manifest file or data folder")
    return read_manifest(path)


def with_durations(entries: Iterable[Entry]) -> list[Entry]:
    """The entries, with `duration` read from each file's header where it is missing.

    Reading headers is cheap but not free over a large data set, so it happens only when asked
    (length bucketing needs it; evaluation does not). Raises AudioError for an unreadable file.
    """
    return [entry if entry.duration is not None else replace(entry, duration=AudioFile(entry.audio).duration)
            for entry in entries]
