"""Ship a trained CTC model as the package's demo model, with example recordings.

    .venv/bin/python recipes/synthetic/ship_demo.py --model runs/demo/stage1/final --data data/synthetic

The model goes to src/wav2vec2/demo/ with its weights in float16 (half the size; loading casts them
back to float32), where `wav2vec2 ... --model demo` finds it. The examples are chosen by a fixed
rule, not by how well the model does on them: from the `test` split (sentences held out of
training), the first utterance of at least six words of each engine, and of a second espeak-ng
accent; from `test_voices`, the first such utterance (a voice held out of training). They are
copied to examples/ with examples/examples.tsv (audio, text), which `wav2vec2 evaluate` reads.
"""

from __future__ import annotations

import argparse
import csv
import shutil
from pathlib import Path

import torch

from wav2vec2.checkpoints import DEMO_FOLDER, load_model, save_model
from wav2vec2.manifest import Entry, read_manifest, write_manifest

ROOT = Path(__file__).resolve().parents[2]
MIN_WORDS = 6


def choose_examples(data: Path) -> list[dict]:
    """The metadata rows of the examples, by the rule of the module docstring."""
    with open(data / "metadata.tsv", newline="") as file:
        rows = [row for row in csv.DictReader(file, delimiter="\t") if len(row["tts_text"].split()) >= MIN_WORDS]
    chosen: dict[str, dict] = {}
    for row in rows:
        if row["split"] == "test_voices":
            slot = "held-out voice"
        elif row["split"] != "test":
            continue
        elif row["engine"] != "espeak-ng":
            slot = row["engine"]
        elif "espeak-ng" not in chosen:
            slot = "espeak-ng"
        elif row["voice"] != chosen["espeak-ng"]["voice"]:
            slot = "second espeak-ng accent"
        else:
            continue
        chosen.setdefault(slot, row)
    return list(chosen.values())


def ship_examples(data: Path, out: Path) -> list[Entry]:
    texts = {}
    for split in ("test", "test_voices"):
        texts.update({Path(e.audio).resolve(): e.text for e in read_manifest(data / f"{split}.tsv")})
    out.mkdir(parents=True, exist_ok=True)
    entries = []
    for row in choose_examples(data):
        source = (data / "audio" / f"{row['id']}.flac").resolve()
        voice = row["voice"] + (f"-{row['variant']}" if row["variant"] else "")
        name = f"{row['engine']}-{voice}.flac".replace("_", "-")
        shutil.copyfile(source, out / name)
        entries.append(Entry(audio=(out / name).resolve(), text=texts[source]))
        print(f"{name}: {row['id']}: {texts[source]}")
    write_manifest(out / "examples.tsv", entries)
    return entries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="the trained CTC checkpoint folder (a run's final/)")
    parser.add_argument("--data", required=True, type=Path, help="the corpus of make_corpus.py")
    parser.add_argument("--examples", type=Path, default=ROOT / "examples", help="where the examples go")
    args = parser.parse_args()
    model = load_model(args.model)
    shutil.rmtree(DEMO_FOLDER, ignore_errors=True)
    save_model(model, DEMO_FOLDER, dtype=torch.float16)
    size = sum(f.stat().st_size for f in DEMO_FOLDER.iterdir()) / 1e6
    print(f"demo model: {DEMO_FOLDER} ({size:.1f} MB)")
    ship_examples(args.data, args.examples)


if __name__ == "__main__":
    main()
