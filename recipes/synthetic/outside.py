"""Speech from outside the corpus's text source, to see what the demo model knows beyond WordNet.

    .venv/bin/python recipes/synthetic/outside.py --out data/outside
    .venv/bin/wav2vec2 evaluate --manifest data/outside/outside.tsv --model demo

The sentences are the first twenty Harvard sentences (IEEE Recommended Practice for Speech Quality
Measurements, 1969; lists 1 and 2), which are not WordNet usage examples. Each is spoken without
augmentation by two voices: one the corpus trains on and one it holds out, alternating through
the engines below. The same command writes the same files.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile
import soxr

from make_corpus import RATE, Settings, Voice, synthesise

from wav2vec2.manifest import Entry, write_manifest
from wav2vec2.vocab import normalize_text

HARVARD = [
    "The birch canoe slid on the smooth planks.", "Glue the sheet to the dark blue background.",
    "It's easy to tell the depth of a well.", "These days a chicken leg is a rare dish.",
    "Rice is often served in round bowls.", "The juice of lemons makes fine punch.",
    "The box was thrown beside the parked truck.", "The hogs were fed chopped corn and garbage.",
    "Four hours of steady work faced us.", "A large size in stockings is hard to sell.",
    "The boy was there when the sun rose.", "A rod is used to catch pink salmon.",
    "The source of the huge river is the clear spring.", "Kick the ball straight and follow through.",
    "Help the woman get back to her feet.", "A pot of tea helps to pass the evening.",
    "Smoky fires lack flame and heat.", "The soft cushion broke the man's fall.",
    "The salt breeze came across from the sea.", "The girl at the booth sold fifty bonds.",
]
SEEN = [Voice("espeak-ng", "en-us", "m3"), Voice("flite", "slt"), Voice("espeak-ng", "en-gb", "f2"),
        Voice("festival", "cmu_us_slt_arctic_hts"), Voice("flite", "kal16")]
HELD_OUT = [Voice("flite", "rms"), Voice("espeak-ng", "en-gb-x-gbcwmd", "m4"), Voice("festival", "ked_diphone"),
            Voice("espeak-ng", "en-gb-x-gbcwmd", "f4")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the audio and outside.tsv")
    args = parser.parse_args()
    (args.out / "audio").mkdir(parents=True, exist_ok=True)
    jobs, entries = [], []
    with tempfile.TemporaryDirectory() as temporary:
        for index, text in enumerate(HARVARD):
            for kind, voices in (("seen", SEEN), ("held_out", HELD_OUT)):
                voice = voices[index % len(voices)]
                settings = Settings(voice, 160, 50, 0.1, 0.1, 1.0, None, None, None, None, -3.0)
                name = f"{index:02d}-{kind}-{voice.engine}-{voice.name}{'-' + voice.variant if voice.variant else ''}"
                jobs.append((settings, text, Path(temporary) / f"{name}.wav"))
        synthesise(jobs)
        for settings, text, wav in jobs:
            audio, rate = soundfile.read(str(wav), dtype="float32", always_2d=True)
            audio = soxr.resample(audio.mean(axis=1), rate, RATE) if rate != RATE else audio.mean(axis=1)
            audio *= 10 ** (settings.peak / 20) / max(1e-6, float(np.abs(audio).max()))
            target = (args.out / "audio" / wav.name).with_suffix(".flac")
            soundfile.write(str(target), audio, RATE, subtype="PCM_16")
            entries.append(Entry(audio=target.resolve(), text=normalize_text(text)))
    write_manifest(args.out / "outside.tsv", entries)
    print(f"{args.out / 'outside.tsv'}: {len(entries)} utterances")
    return 0


if __name__ == "__main__":
    sys.exit(main())
