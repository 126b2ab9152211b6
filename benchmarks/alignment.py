"""Forced alignment of long recordings: peak memory and speed of `wav2vec2.align`.

Targets: aligning 60 minutes peaks under 2 GB of RSS and runs at a real-time factor of at most 0.2
(base architecture, float32, CPU).

* The model is the base shape with random weights (speed and memory do not depend on the values),
  saved once and loaded in a fresh subprocess per length, as `wav2vec2 align` would.
* The audio is quiet noise with a few tones (16-bit WAV, written a minute at a time); the transcript
  is random words at 150 words a minute, about what a speaker says in that time.
* Timed separately: the emissions (the network over 20 s chunks, keeping only the transcript's
  columns) and the search (`viterbi_windowed`), then words and scores. Random weights give
  nearly uniform posteriors, the hardest case for the search: no state falls out of the beam, so
  the band is always `max_states` wide and paths rarely meet (forced commits); a trained model
  on matching speech keeps a band of a few hundred states.
* Memory: the subprocess's peak RSS after loading the model (VmHWM reset through
  /proc/self/clear_refs), and its overall peak.

Usage: python benchmarks/alignment.py [--minutes 2 60] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from inference import load_average, peak_rss_mb, read_status_kb, reset_peak_rss, write_long_wav  # noqa: E402
from machine import describe_machine  # noqa: E402

MEMORY_TARGET_MB = 2048
RTF_TARGET = 0.2
WORDS = ("the of and to in is was that for it with as his on be at by had not are but from or have an they which "
         "one you were her all she there would their we him been has when who will more no if out so said what up "
         "its about into than them can only other new some could time these two may then do first any my now such "
         "like our over man me even most made after also did many before must through back years where much your "
         "way well down should because each just those people how too little state good very make world still own "
         "see men work long get here between both life being under never day same another know while last might "
         "us great old year off come since against go came right used take three").split()


def save_random_base(folder: Path) -> None:
    import wav2vec2
    from wav2vec2.vocab import SPECIAL_TOKENS, Vocabulary

    torch.manual_seed(0)
    vocab = Vocabulary(list(SPECIAL_TOKENS) + list("ETAONISRHDLUMWCFGYPBVK'XJQZ"))
    wav2vec2.Wav2Vec2ForCTC(wav2vec2.Wav2Vec2Config(vocab_size=len(vocab)), vocab).save(folder)


def write_transcript(path: Path, minutes: float) -> None:
    rng = np.random.default_rng(0)
    path.write_text(" ".join(rng.choice(WORDS, size=int(150 * minutes))) + "\n", encoding="utf-8")


def child(folder: str, wav: str, text: str, threads: int) -> None:
    """In a fresh process: load the model, align, print one JSON line."""
    import wav2vec2
    from wav2vec2.align import (AlignSettings, label_columns, model_emissions, prepare, viterbi_windowed,
                                words_from_path)

    torch.set_num_threads(threads)
    model = wav2vec2.load_model(folder)
    load_peak_mb = peak_rss_mb()
    reset_peak_rss()
    settings = AlignSettings()
    start = time.perf_counter()
    targets = prepare(Path(text).read_text(encoding="utf-8"), model.vocab)
    token_ids, columns = label_columns(targets)
    emissions, seconds = model_emissions(model, wav, token_ids, settings=settings)
    searched = time.perf_counter()
    path, stats = viterbi_windowed(emissions, columns, settings.beam, settings.max_states, settings.window)
    words = words_from_path(targets, columns, emissions, path, 0.02, settings.flag_margin)
    end = time.perf_counter()
    align_peak_mb = peak_rss_mb()
    print(json.dumps({"seconds": seconds, "wall": end - start, "emissions": searched - start,
                      "search": end - searched, "frames": len(emissions), "states": 2 * len(columns) + 1,
                      "words": len(words), "loaded_mb": (read_status_kb("VmRSS") or 0) / 1024,
                      "align_peak_mb": align_peak_mb, "peak_mb": max(load_peak_mb, align_peak_mb),
                      "forced": stats.forced, "commits": stats.commits, "max_pending": stats.max_pending,
                      "band": stats.max_states}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, nargs="+", default=[60.0], help="lengths to align (default: 60)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="PyTorch threads")
    parser.add_argument("--child", nargs=3, metavar=("MODEL", "WAV", "TEXT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child, args.threads)
        return
    print(describe_machine())
    print(f"wav2vec2 align, base shape, random weights, float32, {args.threads} threads, "
          f"load average {load_average()}")
    print(f"{'minutes':>7} {'frames':>7} {'states':>7} {'emissions s':>11} {'search s':>9} {'RTF':>6} "
          f"{'peak aligning MB':>16} {'peak MB':>8} {'band':>5} {'pending':>7} {'forced':>6}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        save_random_base(tmp / "model")
        for minutes in args.minutes:
            wav, text = tmp / f"{minutes:g}.wav", tmp / f"{minutes:g}.txt"
            write_long_wav(wav, minutes)
            write_transcript(text, minutes)
            command = [sys.executable, __file__, "--threads", str(args.threads), "--child",
                       str(tmp / "model"), str(wav), str(text)]
            done = subprocess.run(command, capture_output=True, text=True, env={**os.environ})
            wav.unlink()
            if done.returncode != 0:
                print(f"{minutes:>7g} failed:\n{done.stderr[-2000:]}")
                continue
            r = json.loads(done.stdout.strip().splitlines()[-1])
            rtf = r["wall"] / r["seconds"]
            print(f"{minutes:>7g} {r['frames']:>7} {r['states']:>7} {r['emissions']:>11.1f} {r['search']:>9.1f} "
                  f"{rtf:>6.3f} {r['align_peak_mb']:>16.0f} {r['peak_mb']:>8.0f} {r['band']:>5} "
                  f"{r['max_pending']:>7} {r['forced']:>6}")
            print(f"        targets: peak < {MEMORY_TARGET_MB} MB {'held' if r['peak_mb'] < MEMORY_TARGET_MB else 'MISSED'}"
                  f", RTF <= {RTF_TARGET} {'held' if rtf <= RTF_TARGET else 'MISSED'}")


if __name__ == "__main__":
    main()
