"""Transcriptions as text, JSON, SubRip (.srt) and WebVTT (.vtt)."""

from __future__ import annotations

import dataclasses
import json

from .decoding import Word
from .transcribe import Transcription

FORMATS = ("txt", "json", "srt", "vtt")


def cues(words: list[Word], max_seconds: float = 6.0, max_gap: float = 1.0,
         max_characters: int = 84) -> list[list[Word]]:
    """Group words into subtitle cues: a cue ends at a pause, or when it grows too long."""
    groups: list[list[Word]] = []
    for word in words:
        current = groups[-1] if groups else None
        if (current is None or word.start - current[-1].end > max_gap
                or word.end - current[0].start > max_seconds
                or sum(len(w.text) + 1 for w in current) + len(word.text) > max_characters):
            groups.append([word])
        else:
            current.append(word)
    return groups


def timestamp(seconds: float, separator: str) -> str:
    milliseconds = round(seconds * 1000)
    hours, milliseconds = divmod(milliseconds, 3_600_000)
    minutes, milliseconds = divmod(milliseconds, 60_000)
    seconds, milliseconds = divmod(milliseconds, 1000)
    return f"{hours:02d}:{minutes:02d}:{seconds:02d}{separator}{milliseconds:03d}"


def render(result: Transcription, fmt: str) -> str:
    """The transcription in one of FORMATS, ending with a newline."""
    if fmt == "txt":
        return result.text + "\n"
    if fmt == "json":
        return json.dumps(dataclasses.asdict(result), ensure_ascii=False) + "\n"
    if fmt not in ("srt", "vtt"):
        raise ValueError(f"unknown format {fmt!r} (known: {', '.join(FORMATS)})")
    separator = "," if fmt == "srt" else "."
    blocks = ["WEBVTT\n"] if fmt == "vtt" else []
    for number, cue in enumerate(cues(result.words), start=1):
        times = f"{timestamp(cue[0].start, separator)} --> {timestamp(cue[-1].end, separator)}"
        text = " ".join(w.text for w in cue)
        blocks.append(f"{number}\n{times}\n{text}\n" if fmt == "srt" else f"{times}\n{text}\n")
    return "\n".join(blocks)
