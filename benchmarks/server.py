"""The live server on CPU: how many simultaneous real-time streams one `wav2vec2 serve` sustains.

What is measured, and why:

* N WebSocket clients stream speech synthesised with espeak-ng (phrases of 2-3 s, 1 s of silence
  between them, so the true end of every phrase is known) to `wav2vec2 serve` at real-time pace,
  in 0.1 s pcm16 messages (what the page sends). Each client starts at a random moment within
  one phrase period, so that the streams' model windows do not line up by accident: what
  cross-stream batching gets is what real, unsynchronised clients would give it.
* Final delay: wall time from the moment the last sample of a phrase's speech was "recorded" to
  the arrival of its final at the client. It includes the 0.3 s pause that ends a phrase.
* N streams are sustained when every phrase of every stream got its final and the 95th
  percentile of the final delays is at most 1.0 s. N grows from 1 until it fails.
* Each configuration runs with cross-stream batching (`--max-batch 8`), once for each value of
  --parallel (`serve --parallel 2`, "on x2": two passes at once, one thread each), and without
  (`--max-batch 1`). The server is a subprocess with `--threads` PyTorch threads, as in use; the
  clients run in this process (they cost little: a socket and a sleep per message).
* Models: "base" (random weights, the shape of facebook/wav2vec2-base-960h, fp32: speed does not
  depend on the values) and "demo" (the shipped model, at `--precision`), when the package has it.

Usage: python benchmarks/server.py [--models base demo] [--phrases 6] [--max-streams 12] [--threads 2]
                                   [--parallel 1 2]
       python benchmarks/server.py --quick      # 2 phrases, N = 1 and 2: does it run at all?
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

import wav2vec2
from machine import describe_machine
from streaming import build_model, synthesise  # noqa: I001 (benchmarks/streaming.py)

RATE = 16000
MESSAGE = 1600  # samples per message: 0.1 s
TARGET_DELAY = 1.0  # seconds, 95th percentile
TARGET_STREAMS = 4  # base, fp32, on this project's 2-core machine
DEMO = Path(wav2vec2.__file__).parent / "demo" / "config.json"


class Server:
    """`wav2vec2 serve` in a subprocess on a free port."""

    def __init__(self, model: str, threads: int, max_batch: int, parallel: int, max_streams: int, precision: str):
        command = [sys.executable, "-m", "wav2vec2", "serve", "--model", model, "--port", "0",
                   "--threads", str(threads), "--max-batch", str(max_batch), "--parallel", str(parallel),
                   "--max-streams", str(max_streams),
                   "--precision", precision, "--idle-timeout", "120"]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                        env={**os.environ, "HF_HUB_OFFLINE": "1"})
        line = self.process.stderr.readline()
        match = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        if not match:
            sys.exit(f"the server did not start: {line}{self.process.stderr.read()}")
        self.url = f"http://127.0.0.1:{match.group(1)}"
        self.ws = f"ws://127.0.0.1:{match.group(1)}/v1/listen"
        threading.Thread(target=self.process.stderr.read, daemon=True).start()  # keep the pipe flowing

    def health(self) -> dict:
        with urllib.request.urlopen(f"{self.url}/health", timeout=30) as response:
            return json.loads(response.read())

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(60)


def client(url: str, audio: np.ndarray, delay: float, realtime: bool = True) -> tuple[float, list]:
    """Stream `audio` after `delay` seconds; returns (the monotonic time of its first sample,
    [(arrival time, event)])."""
    from websockets.sync.client import connect

    time.sleep(delay)
    events: list = []
    pcm = np.round(np.clip(audio, -1, 32767 / 32768) * 32768).astype("<i2")
    with connect(url, max_size=None, open_timeout=60) as ws:
        ws.send(json.dumps({"type": "start", "sample_rate": RATE, "encoding": "pcm16"}))

        def read() -> None:
            for message in ws:
                events.append((time.monotonic(), json.loads(message)))

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        started = time.monotonic()
        for position in range(0, len(pcm), MESSAGE):
            block = pcm[position:position + MESSAGE]
            if realtime:  # a microphone hands a block over once its last sample is recorded
                time.sleep(max(0.0, started + (position + len(block)) / RATE - time.monotonic()))
            ws.send(block.tobytes())
        ws.send(json.dumps({"type": "stop"}))
        reader.join(300)
    return started, events


def trial(server: Server, streams: int, audio: np.ndarray, spans: list[tuple[int, int]], seed: int) -> dict:
    """N streams at once; the final delays of all their phrases, and what the server did meanwhile."""
    rng = np.random.default_rng(seed)
    period = len(audio) / RATE / len(spans)
    results: list = [None] * streams
    before, cpu_before, wall_before = server.health()["batching"], server.cpu_seconds(), time.monotonic()

    starts = rng.uniform(0, period, streams)

    def run(index: int) -> None:
        results[index] = client(server.ws, audio, float(starts[index]))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(streams)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    cpu = (server.cpu_seconds() - cpu_before) / (time.monotonic() - wall_before)
    after = server.health()["batching"]
    delays, missing = [], 0
    for started, events in results:
        finals = [(t, e) for t, e in events if e["type"] == "final"]
        for start, end in spans:
            arrived = [t for t, e in finals if e["start"] * RATE < end and e["end"] * RATE > start]
            if arrived:
                delays.append(arrived[-1] - (started + end / RATE))
            else:
                missing += 1
    passes = after["live_passes"] - before["live_passes"]
    windows = after["live_windows"] - before["live_windows"]
    p95 = float(np.percentile(delays, 95)) if delays else float("inf")
    return dict(streams=streams, delays=delays, missing=missing, p95=p95,
                ok=missing == 0 and p95 <= TARGET_DELAY, batch=windows / passes if passes else 0.0, cpu=100 * cpu)


def measure(name: str, model: str, precision: str, args, audio, spans) -> dict[str, int]:
    """Sustained streams with batching (for each --parallel) and without: {setting: N}."""
    sustained = {}
    for max_batch, parallel in [(8, p) for p in args.parallel] + [(1, 1)]:
        setting = ("on" if max_batch > 1 else "off") + (f" x{parallel}" if parallel > 1 else "")
        server = Server(model, args.threads, max_batch, parallel, args.max_streams, precision)
        try:
            client(server.ws, audio[:3 * RATE], 0.0, realtime=False)  # warm up: first passes allocate
            best = 0
            counts = (1, 2) if args.quick else range(1, args.max_streams + 1)
            for streams in counts:
                r = trial(server, streams, audio, spans, seed=streams)
                verdict = "yes" if r["ok"] else "NO"
                print(f"{name:5} {precision:5} {setting:8} {streams:>7} "
                      f"{len(r['delays'])}/{len(r['delays']) + r['missing']:<5} {np.median(r['delays']):>8.3f}s "
                      f"{r['p95']:>8.3f}s {max(r['delays']):>7.3f}s {r['batch']:>10.2f} {r['cpu']:>6.0f}  "
                      f"{verdict}", flush=True)
                if not r["ok"]:
                    break
                best = streams
            sustained[setting] = best
        finally:
            server.stop()
    return sustained


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", choices=("base", "demo"), default=["base", "demo"])
    parser.add_argument("--phrases", type=int, default=6, help="phrases per stream (default: 6)")
    parser.add_argument("--max-streams", type=int, default=12, help="the largest N tried (default: 12)")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1), help="PyTorch threads")
    parser.add_argument("--demo-precision", default="auto", help="precision of the demo model (default: auto)")
    parser.add_argument("--parallel", type=int, nargs="+", default=[1, 2],
                        help="`serve --parallel` values tried with batching (default: 1 2)")
    parser.add_argument("--quick", action="store_true", help="2 phrases, N = 1 and 2 only: a smoke test")
    args = parser.parse_args()
    audio, spans = synthesise(2 if args.quick else args.phrases)
    try:
        load = " ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        load = "unknown"
    print(f"wav2vec2 {wav2vec2.__version__}, {args.threads} threads, {os.cpu_count()} CPUs, load average {load}; "
          f"{len(audio) / RATE:.1f} s of audio per stream, {len(spans)} phrases, messages of {MESSAGE / RATE} s")
    print(describe_machine())
    header = (f"{'model':5} {'prec.':5} {'batching':8} {'streams':>7} {'finals':6} {'median':>9} {'p95':>9} "
              f"{'max':>8} {'mean batch':>10} {'CPU %':>6}  p95<={TARGET_DELAY}s")
    print(header)
    print("-" * len(header))
    summary = []
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models:
            if name == "base":
                build_model("base").save(folder)
                model, precision = folder, "fp32"
            elif DEMO.exists():
                model, precision = "demo", args.demo_precision
            else:
                print("demo: the demo model is not in this installation; skipped", flush=True)
                continue
            sustained = measure(name, model, precision, args, audio, spans)
            summary.append((name, precision, sustained))
    print()
    for name, precision, sustained in summary:
        target = f" (target: at least {TARGET_STREAMS})" if name == "base" else ""
        settings = ", ".join(f"{n} with batching {setting}" for setting, n in sustained.items())
        print(f"{name} ({precision}), streams sustained: {settings}{target}")


if __name__ == "__main__":
    main()
