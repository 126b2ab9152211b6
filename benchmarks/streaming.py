"""Live transcription on CPU: how soon finals come, how often partials refresh, what it costs.

What is measured, and why:

* A simulated microphone: speech synthesised with espeak-ng (phrases of 2-3 s with 1 s of silence
  between them, so the true end of every phrase is known) is handed over in 20 ms blocks at
  real-time pace by a producer thread, each block at the moment its last sample would have been
  recorded. The main thread feeds a `StreamingRecognizer` as `wav2vec2 listen` does. If the
  recogniser is slower than real time, blocks wait in the queue and every delay below grows.
* Final delay: wall time from the moment the last sample of a phrase's speech was "recorded" to
  the moment its final event came out. It includes the pause that ends a phrase
  (`StreamingConfig.pause`, 0.3 s by default): the target is 0.5 s for the base model on 2 cores.
* Partial refresh: the largest gap between consecutive partials of a phrase, in seconds of audio
  (what the recogniser promises: at most 0.5 s) and in wall time (what a user sees).
* Real-time factor: seconds spent in `feed` per second of audio (target: below 0.5). CPU use:
  process CPU time over wall time while listening, in % of one core (200% = both cores busy).
* Two shapes with random weights (speed does not depend on the values; nothing is downloaded):
  "base" as facebook/wav2vec2-base-960h and "large" as facebook/wav2vec2-large-960h-lv60-self.
  Random weights emit random characters; the text does not matter here.

Usage: python benchmarks/streaming.py [--configs base large] [--phrases 8] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import soundfile
import soxr
import torch

import wav2vec2
from machine import describe_machine
from wav2vec2.audio import Preprocessing
from wav2vec2.model import Wav2Vec2Config, Wav2Vec2ForCTC
from wav2vec2.precision import PRECISIONS, apply_precision
from wav2vec2.streaming import StreamingConfig, StreamingRecognizer
from wav2vec2.vocab import Vocabulary

RATE = 16000
BLOCK = 320  # 20 ms, a typical microphone block
TARGET_DELAY = 0.5  # seconds from the end of speech to the final (base model)
TARGET_RTF = 0.5
CONFIGS = {
    "base": dict(),
    "large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                  feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True),
}
SENTENCES = [
    "the quick brown fox jumps over the lazy dog", "speech recognition on a small computer",
    "seven silver birds flew home at night", "please call me back in the morning",
    "a cup of tea would be lovely", "the train leaves from platform nine",
    "turn left at the second traffic light", "we will meet again next summer",
]


def build_model(name: str) -> Wav2Vec2ForCTC:
    """A random model of the named shape with a 32-character vocabulary."""
    tokens = ["<pad>", "<s>", "</s>", "<unk>", "|", *"ABCDEFGHIJKLMNOPQRSTUVWXYZ", "'"]
    torch.manual_seed(0)
    config = Wav2Vec2Config(vocab_size=len(tokens), **CONFIGS[name])
    preprocessing = Preprocessing(do_normalize=True, return_attention_mask=name == "large")
    return Wav2Vec2ForCTC(config, Vocabulary(tokens), preprocessing).eval()


def synthesise(count: int) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """`count` phrases of espeak-ng speech, 1 s of silence between them; their true spans in samples."""
    if shutil.which("espeak-ng") is None:
        sys.exit("benchmarks/streaming.py needs espeak-ng (apt-get install espeak-ng)")
    parts, spans, position = [np.zeros(RATE // 2, np.float32)], [], RATE // 2
    with tempfile.TemporaryDirectory() as folder:
        for i in range(count):
            path = Path(folder) / f"{i}.wav"
            subprocess.run(["espeak-ng", "-w", str(path), SENTENCES[i % len(SENTENCES)]], check=True)
            data, rate = soundfile.read(str(path), dtype="float32")
            voice = soxr.resample(data, rate, RATE)
            voiced = np.flatnonzero(np.abs(voice) > 1e-3)
            voice = voice[voiced[0]:voiced[-1] + 1]
            spans.append((position, position + len(voice)))
            parts += [voice, np.zeros(RATE, np.float32)]
            position += len(voice) + RATE
    return np.concatenate(parts), spans


def listen(model: Wav2Vec2ForCTC, audio: np.ndarray, spans: list[tuple[int, int]]) -> dict:
    """Play `audio` to a recogniser in real time; return the measurements, measured and replayed."""
    recognizer = StreamingRecognizer(model, StreamingConfig())
    recognizer.feed(np.zeros(RATE, np.float32))  # warm up (first passes allocate), before the clock starts
    recognizer = StreamingRecognizer(model, StreamingConfig())
    blocks: queue.Queue = queue.Queue()
    started = time.monotonic() + 0.1

    def microphone() -> None:
        for position in range(0, len(audio), BLOCK):
            block = audio[position:position + BLOCK]
            due = started + (position + len(block)) / RATE
            time.sleep(max(0.0, due - time.monotonic()))
            blocks.put((due - started, block))
        blocks.put((len(audio) / RATE, None))

    producer = threading.Thread(target=microphone, daemon=True)
    cpu_before = time.process_time()
    feeds = []  # (audio time when the block was recorded, CPU seconds spent, [(wall time, event)])
    busy = 0.0  # wall seconds spent in the recogniser
    producer.start()
    while True:
        recorded, block = blocks.get()
        cpu, began = time.process_time(), time.monotonic()
        events = recognizer.feed(block) if block is not None else recognizer.flush()
        busy += time.monotonic() - began
        feeds.append((recorded, time.process_time() - cpu, [(time.monotonic() - started, e) for e in events]))
        if block is None:
            break
    wall = time.monotonic() - started
    cpu = time.process_time() - cpu_before

    # the same run replayed on a clock that advances only with this process's CPU time: what an idle
    # machine would show (exact with one thread; with more, every thread's time is counted)
    replayed, clock = [], 0.0
    for recorded, spent, events in feeds:
        clock = max(clock, recorded) + spent
        replayed += [(clock, e) for _, e in events]
    measured = [item for _, _, events in feeds for item in events]
    seconds, spent = len(audio) / RATE, sum(spent for _, spent, _ in feeds)
    return dict(measured=summarise(measured, spans, busy, seconds), replayed=summarise(replayed, spans, spent, seconds),
                cpu=100 * cpu / wall)


def summarise(events: list, spans: list[tuple[int, int]], busy: float, seconds: float) -> dict:
    """Final delays, partial gaps and the real-time factor from (time since the start of the stream, event)
    pairs and the seconds spent (`busy`) on `seconds` of audio."""
    delays, audio_gaps, time_gaps = [], [], []
    for start, end in spans:
        finals = [(t, e) for t, e in events if e.type == "final" and e.start * RATE < end and e.end * RATE > start]
        if finals:
            delays.append(finals[-1][0] - end / RATE)
        partials = [(t, e) for t, e in events if e.type == "partial" and start <= e.end * RATE <= end + 0.5 * RATE]
        audio_gaps += list(np.diff([start / RATE] + [e.end for _, e in partials]))
        time_gaps += list(np.diff([t for t, _ in partials]))
    return dict(finals=sum(e.type == "final" for _, e in events), delays=delays, time_gaps=time_gaps,
                audio_gap=max(audio_gaps, default=float("nan")), rtf=busy / seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--phrases", type=int, default=8)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1), help="PyTorch CPU threads")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS,
                        help="precision of the model, as `wav2vec2 listen --precision` (default: auto)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    audio, spans = synthesise(args.phrases)
    try:
        load = " ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        load = "unknown"
    print(f"wav2vec2 {wav2vec2.__version__}, torch {torch.__version__}, {args.threads} threads, "
          f"{os.cpu_count()} CPUs, load average {load}; {len(audio) / RATE:.1f} s of audio, {len(spans)} phrases, "
          f"default StreamingConfig {StreamingConfig()}")
    print(describe_machine())
    header = (f"{'model':6} {'clock':9} {'finals':>6} {'final delay median':>19} {'max':>6} "
              f"{'partial gap: audio max':>23} {'time median':>12} {'max':>6} {'RTF':>6} {'CPU %':>6}  targets")
    print(header)
    print("-" * len(header))
    for name in args.configs:
        model = apply_precision(build_model(name), args.precision)
        print(f"{name}: precision {model.precision}", flush=True)
        result = listen(model, audio, spans)
        for clock in ("measured", "replayed"):
            r = result[clock]
            delays, gaps = r["delays"], r["time_gaps"]
            verdict = [f"RTF<{TARGET_RTF}: {'yes' if r['rtf'] < TARGET_RTF else 'NO'}"]
            if name == "base":
                verdict.append(f"delay<{TARGET_DELAY}s: {'yes' if delays and max(delays) <= TARGET_DELAY else 'NO'}")
            cpu = f"{result['cpu']:>6.0f}" if clock == "measured" else f"{'':>6}"
            print(f"{name:6} {clock:9} {r['finals']:>2}/{len(spans):<3} {np.median(delays):>18.3f}s "
                  f"{max(delays):>5.3f}s {r['audio_gap']:>22.3f}s {np.median(gaps):>11.3f}s {max(gaps):>5.3f}s "
                  f"{r['rtf']:>6.3f} {cpu}  {', '.join(verdict)}", flush=True)
    print("measured: wall clock on this machine as it is now; replayed: the same run on a clock that advances "
          "only with this process's CPU time, as on an idle machine (exact with --threads 1)")


if __name__ == "__main__":
    main()
