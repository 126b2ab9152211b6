"""What reduced precision costs a trained model: error rates and best tokens against float32.

The accuracy targets of reduced precision are about a real model on real data (random weights
give nearly uniform posteriors, where every frame is a near-tie): the test-set CER within 0.3
points of float32, and the best token of each frame unchanged on at least 99.5 % of the frames.

* The model (default: the shipped demo model) is loaded once per precision with
  `load_model(..., precision=p)`, and every utterance of the manifest goes through the chunks that
  `transcribe` uses (`evaluate.log_probs_of`), greedy decoding after.
* Columns: WER and CER against the manifest's transcripts; "same token": the share of frames
  whose most likely token is float32's; "same text": utterances decoded to float32's text;
  "seconds": wall time of the whole set (with the number of threads given; a side figure, the
  speed targets live in inference.py).
* bf16 runs everywhere but pays only on CPUs with bf16 products (AMX, AVX-512 BF16); --no-bf16 leaves it out.

Usage: python benchmarks/precision.py --manifest data/synthetic/test.tsv [--model demo] [--limit N]
       [--threads 2] [--no-bf16]
"""

from __future__ import annotations

import argparse
import sys
import time

import jiwer
import numpy as np
import torch

from machine import describe_machine

from wav2vec2 import load_model
from wav2vec2.audio import SAMPLE_RATE, load_audio
from wav2vec2.decoding import best_path, greedy_decode
from wav2vec2.evaluate import log_probs_of
from wav2vec2.manifest import read_manifest
from wav2vec2.vocab import normalize_text


def run(model, waveforms: list[np.ndarray]) -> tuple[list[np.ndarray], list[str], float]:
    """Log-probabilities and greedy texts of every waveform, and the wall time they took."""
    start = time.perf_counter()
    log_probs = [log_probs_of(model, waveform) for waveform in waveforms]
    seconds = time.perf_counter() - start
    texts = [normalize_text(greedy_decode(*best_path(torch.from_numpy(lp)), model.vocab).text) for lp in log_probs]
    return log_probs, texts, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--manifest", required=True, help="labelled TSV or JSON-lines manifest to score on")
    parser.add_argument("--model", default="demo", help="model name or folder (default: the shipped demo model)")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N utterances")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    parser.add_argument("--no-bf16", action="store_true", help="leave bf16 out (slow on CPUs without AMX or AVX-512 BF16)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    entries = read_manifest(args.manifest)[:args.limit]
    if not entries or any(entry.text is None for entry in entries):
        sys.exit(f"{args.manifest}: needs transcripts for every utterance")
    waveforms = [load_audio(entry.audio) for entry in entries]
    references = [normalize_text(entry.text) for entry in entries]
    audio_seconds = sum(len(w) for w in waveforms) / SAMPLE_RATE

    print(describe_machine())
    print(f"model {args.model}, {args.manifest}: {len(entries)} utterances, {audio_seconds / 60:.1f} min, "
          f"{args.threads} thread(s)\n")
    print("| precision | WER | CER | same token | same text | seconds |")
    print("|---|---|---|---|---|---|")
    precisions = ["fp32", "int8"] + ([] if args.no_bf16 else ["bf16"])
    reference_log_probs = reference_texts = None
    for precision in precisions:
        model = load_model(args.model, precision=precision)
        log_probs, texts, seconds = run(model, waveforms)
        if reference_log_probs is None:
            reference_log_probs, reference_texts = log_probs, texts
        same = np.concatenate([a.argmax(-1) == b.argmax(-1) for a, b in zip(log_probs, reference_log_probs)])
        same_text = sum(a == b for a, b in zip(texts, reference_texts))
        print(f"| {precision} | {100 * jiwer.wer(references, texts):.2f} % | {100 * jiwer.cer(references, texts):.2f} % "
              f"| {100 * same.mean():.2f} % | {same_text}/{len(texts)} | {seconds:.1f} |", flush=True)


if __name__ == "__main__":
    main()
