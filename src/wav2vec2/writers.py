"""Transcriptions as text, JSON, SubRip (.srt) and WebVTT (.vtt); timed words as Praat TextGrid and CTM."""

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


def textgrid(tiers: list[tuple[str, list[tuple[float, float, str]]]], duration: float) -> str:
    """Praat TextGrid (long text format): one interval tier per (name, [(start, end, text)]).

    Praat wants each tier to cover 0 to the end without gaps, so gaps become empty intervals.
    """
    end = max([duration] + [interval[1] for _, intervals in tiers for interval in intervals])
    lines = ['File type = "ooTextFile"', 'Object class = "TextGrid"', "", "xmin = 0", f"xmax = {end:.3f}",
             "tiers? <exists>", f"size = {len(tiers)}", "item []:"]
    for number, (name, intervals) in enumerate(tiers, start=1):
        filled, time = [], 0.0
        for start, stop, text in intervals:
            start = max(start, time)
            if start > time:
                filled.append((time, start, ""))
            if stop > start:
                filled.append((start, stop, text))
                time = stop
        if time < end:
            filled.append((time, end, ""))
        lines += [f"    item [{number}]:", '        class = "IntervalTier"', f'        name = "{_praat(name)}"',
                  "        xmin = 0", f"        xmax = {end:.3f}", f"        intervals: size = {len(filled)}"]
        for index, (start, stop, text) in enumerate(filled, start=1):
            lines += [f"        intervals [{index}]:", f"            xmin = {start:.3f}",
                      f"            xmax = {stop:.3f}", f'            text = "{_praat(text)}"']
    return "\n".join(lines) + "\n"


def _praat(text: str) -> str:
    return text.replace('"', '""')  # Praat doubles quotes inside strings


def ctm(name: str, words: list[tuple[float, float, str, float]]) -> str:
    """NIST CTM: `NAME 1 START DURATION WORD SCORE` per (start, end, word, score), channel 1."""
    return "".join(f"{name} 1 {start:.3f} {end - start:.3f} {''.join(word.split())} {score:.4f}\n"
                   for start, end, word, score in words)
