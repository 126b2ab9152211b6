"""Does pretraining learn on a handful of sentences? The check of issue 17, reproducible.

24 short sentences spoken by espeak-ng (its default voice) are pretrained on with
`wav2vec2 pretrain` for --max-steps updates; then the log is summed up: the mean accuracy and
contrastive loss of the last logged intervals against chance (1/(K+1) and log(K+1)), and the code
perplexity at the end against its peak. The check passes for `small` when the accuracy is at least
0.25 and the perplexity at least half its peak; for `tiny` when it leaves chance (contrastive
loss below 0.95 log(K+1)). The numbers, and why neither passes: RESULTS.md, issue 17's section.

    python recipes/synthetic/pretrain_check.py --out /tmp/check [--config small] [--max-steps 300] [-- OPTIONS]

Options after `--` go to `wav2vec2 pretrain` unchanged (say `-- --gumbel-decay 0.999995`, the old
temperature schedule).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile
import soxr

SENTENCES = [
    "the quick brown fox jumps over the lazy dog", "she sells sea shells by the sea shore",
    "a cup of tea would be lovely now", "the rain in spain stays mainly in the plain",
    "please call me when you get home", "seven silver birds flew home at night",
    "my brother plays the violin very well", "we walked along the river until dark",
    "the children laughed at the funny clown", "open the window and let the air in",
    "he bought fresh bread from the baker", "the train leaves at half past nine",
    "put the red book on the top shelf", "our garden is full of yellow flowers",
    "the old man sat quietly by the fire", "do not forget to water the plants",
    "the cat slept all day in the sun", "they painted the fence a bright green",
    "a strong wind blew across the hills", "i would like a glass of cold water",
    "the teacher wrote a long word on the board", "we ate dinner together on sunday",
    "the music was loud and the room was warm", "turn left at the end of the street",
]
RATE = 16000


def write_corpus(folder: Path) -> Path:
    """The sentences as 16 kHz WAV files, trimmed to the voice."""
    folder.mkdir(parents=True, exist_ok=True)
    for number, sentence in enumerate(SENTENCES):
        raw = folder / f"raw-{number:02d}.wav"
        subprocess.run(["espeak-ng", "-w", str(raw), sentence], check=True, capture_output=True)
        audio, rate = soundfile.read(str(raw), dtype="float32")
        raw.unlink()
        audio = soxr.resample(audio, rate, RATE, quality="HQ")
        voiced = np.flatnonzero(np.abs(audio) > 1e-3)
        soundfile.write(str(folder / f"{number:02d}.wav"), audio[voiced[0]:voiced[-1] + 1], RATE)
    return folder


def summarise(run: Path, last: int = 3) -> dict:
    """The numbers the check is about, from the run's log.jsonl."""
    lines = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]
    settings = lines[0]["settings"]
    records = [r for r in lines if "step" in r]
    chance = math.log(settings["num_negatives"] + settings["cross_negatives"] + 1)
    tail = records[-last:]
    peak = max(r["perplexity"] for r in records)
    left = next((r["step"] for r in records if r["contrastive_loss"] < 0.95 * chance), None)
    return {"steps": records[-1]["step"], "accuracy": float(np.mean([r["accuracy"] for r in tail])),
            "contrastive_loss": float(np.mean([r["contrastive_loss"] for r in tail])), "chance_loss": chance,
            "left_chance_at": left, "perplexity": records[-1]["perplexity"], "peak_perplexity": peak,
            "perplexity_share_of_peak": records[-1]["perplexity"] / peak,
            "codes_used": records[-1].get("codes_used"), "temperature": records[-1]["temperature"],
            "passed": {"accuracy >= 0.25": float(np.mean([r["accuracy"] for r in tail])) >= 0.25,
                       "perplexity >= 0.5 x peak": records[-1]["perplexity"] >= 0.5 * peak,
                       "left chance": left is not None}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="a new folder: data/ and run/ are written there")
    parser.add_argument("--config", default="small", help="the model preset (default: small)")
    parser.add_argument("--max-steps", type=int, default=300, help="updates (default: 300)")
    parser.add_argument("more", nargs="*", help="more options for wav2vec2 pretrain, after --")
    args = parser.parse_args()
    out = Path(args.out)
    data = out / "data" if (out / "data").is_dir() else write_corpus(out / "data")
    command = [str(Path(sys.executable).parent / "wav2vec2"), "pretrain", "--data", str(data), "--out",
               str(out / "run"), "--config", args.config, "--max-steps", str(args.max_steps), "--device", "cpu",
               *args.more]
    print(" ".join(command[1:]), flush=True)
    subprocess.run(command, check=True)
    print(json.dumps(summarise(out / "run"), indent=1))


if __name__ == "__main__":
    main()
