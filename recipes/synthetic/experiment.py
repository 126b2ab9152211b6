"""Does pretraining help when labels are few, and from how much audio on? The wav2vec 2.0
experiment at a CPU's scale.

One small model (recipes/synthetic/model.json) is pretrained on the unlabelled set, keeping a
model at three points of the run (a third, two thirds and all of it, reported in hours of audio
seen). Each of them is fine-tuned with CTC on the 10-minute and the 1-hour labelled sets; the same
model is fine-tuned from random initialisation (feature encoder included) on the same labels with
the same number of updates. A probe (probe.py) asks what the features alone are worth: a CTC head
trained on the frozen features of each kept pretrained model, against the same head on the frozen
features of the random initialisation (1-hour labels). Every model is scored on both test sets
(held-out sentences; held-out voices) with greedy decoding, and the tables go to OUT/RESULTS.md.

    python recipes/synthetic/experiment.py --data data/synthetic --out runs/synthetic [--budget 1.0]

Each run is one `wav2vec2` command or the probe (written to the report as it was run) in a
subprocess with its own log. On a CPU the runs go in two lanes of one thread each, which does
more work than one lane of two threads for a model this small: the pretraining beside the runs
that do not need it, then the fine-tunings of the pretrained models. On a GPU (used when present)
they run one after another. A run whose final/ (the probe's: probe.json) exists is not run again
and an interrupted one resumes from its last checkpoint, so the command can be repeated after a
crash, or stopped and started again with other `--lanes` and `--threads` (one lane of one thread
beside other work, two when the cores are free). `--budget` scales every run's number of
updates.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODEL_CONFIG = HERE / "model.json"
PRETRAIN_STEPS = 3000
SNAPSHOTS = 3  # pretrained models kept: after a third, two thirds and all of the pretraining
FINETUNE_UPDATES = 1000
TEST_SETS = {"test": "held-out sentences", "test_voices": "held-out voices"}
LABELS = {"train_10min": "10 min", "train_1h": "1 h"}


@dataclass
class Run:
    name: str
    arguments: list[str]  # of the `wav2vec2` command, or of probe.py
    after: list[str] = field(default_factory=list)  # runs that must have finished first
    seconds: float | None = None  # wall time, once run

    @property
    def is_probe(self) -> bool:
        return self.name == "probe"

    def command(self) -> str:
        program = f"python {os.path.relpath(HERE / 'probe.py')}" if self.is_probe else "wav2vec2"
        return f"{program} {shlex.join(self.arguments)}"

    def finished(self, out: Path) -> bool:
        return (out / self.name / ("probe.json" if self.is_probe else "final")).exists()


def plan(data: Path, out: Path, budget: float, device: str, seed: int, lanes: int) -> list[list[Run]]:
    """The runs, in lanes: each lane runs its runs in order, waiting for their `after` runs."""
    steps = SNAPSHOTS * max(10, round(PRETRAIN_STEPS * budget / SNAPSHOTS))
    updates = max(10, round(FINETUNE_UPDATES * budget))
    common = ["--device", device, "--seed", str(seed)]
    config = os.path.relpath(MODEL_CONFIG)  # as a reader would type it, from the repository
    pretrain = Run("pretrain", ["pretrain", "--data", str(data / "pretrain.tsv"), "--config", config,
                                "--out", str(out / "pretrain"), "--max-steps", str(steps), "--diversity-weight", "0.3",
                                "--normalize", "--mask-length", "5", "--max-batch-seconds", "20",
                                "--models-every", str(steps // SNAPSHOTS), "--log-every", "25",
                                "--save-every", "250", *common])

    def finetune(name: str, init: str, labels: str, *extra: str, lr: str = "5e-4", after: tuple[str, ...] = ()) -> Run:
        return Run(name, ["finetune", "--init", init, "--train", str(data / f"{labels}.tsv"),
                          "--dev", str(data / "dev.tsv"), "--out", str(out / name), "--max-steps", str(updates),
                          "--lr", lr, "--max-batch-seconds", "16", "--mask-time-prob", "0.3", "--best-metric", "cer",
                          "--eval-every", str(max(1, updates // 5)), "--save-every", str(max(1, updates // 5)),
                          "--log-every", "25", *extra, *common], list(after))

    scratch = [finetune(f"scratch_{labels}", config, labels, "--train-feature-encoder") for labels in LABELS]
    # A pretrained Transformer is kept frozen for the first half of the updates while the new head
    # learns, as in the paper: without it the head's first large gradients undo the pretraining.
    freeze = ("--freeze-steps", str(updates // 2))
    finetuned = [finetune(f"pretrained{step}_{labels}", str(out / "pretrain" / "models" / f"step-{step:07d}"),
                          labels, *freeze, after=("pretrain",))
                 for step in snapshot_steps(steps) for labels in LABELS]
    # The probe: heads on the frozen features of every kept model and of the random initialisation.
    probe = Run("probe", ["--pretrained", *(str(out / "pretrain" / "models" / f"step-{step:07d}")
                                            for step in snapshot_steps(steps)),
                          "--random", config, "--data", str(data), "--labels", "train_1h", "--out", str(out / "probe"),
                          "--seed", str(seed)], ["pretrain"])
    if lanes == 1:
        return [[pretrain, *scratch, *finetuned, probe]]
    later = [*finetuned, probe]
    return [[pretrain, *later[1::2]], [*scratch, *later[::2]]]


def snapshot_steps(steps: int) -> list[int]:
    return [steps // SNAPSHOTS * k for k in range(1, SNAPSHOTS + 1)]


def hours_seen(out: Path) -> dict[int, float]:
    """Hours of audio the pretraining had trained on at each logged step."""
    records = [json.loads(line) for line in (out / "pretrain" / "log.jsonl").read_text().splitlines()]
    return {r["step"]: r["audio_hours"] for r in records if "audio_hours" in r}


def execute(run: Run, out: Path, threads: int) -> None:
    """Run one command (resuming it if it was interrupted); its output goes to OUT/NAME.log."""
    folder = out / run.name
    if run.finished(out):
        return
    arguments = [str(HERE / "probe.py")] if run.is_probe else ["-m", "wav2vec2"]
    arguments += run.arguments
    if (folder / "checkpoints").is_dir() and any((folder / "checkpoints").iterdir()):
        arguments.append("--resume")
    environment = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    with open(out / f"{run.name}.log", "a") as log:
        code = subprocess.run([sys.executable, *arguments], stdout=log, stderr=subprocess.STDOUT,
                              env=environment).returncode
    if code != 0:
        raise RuntimeError(f"{run.name} failed (exit {code}); see {out / f'{run.name}.log'}")
    run.seconds = time.perf_counter() - start


def run_lanes(lanes: list[list[Run]], out: Path, threads: int) -> None:
    """Each lane in its own thread; a run waits for the runs it needs. After a failure no lane starts
    another run (a run in progress is left to finish, so that its checkpoints stay usable)."""
    done = {run.name: threading.Event() for lane in lanes for run in lane}
    failures: list[BaseException] = []

    def work(lane: list[Run]) -> None:
        for run in lane:
            for name in run.after:
                while not done[name].wait(5):
                    if failures:
                        return
            if failures:
                return
            print(f"[{time.strftime('%H:%M:%S')}] {run.name}: {run.command()}", flush=True)
            try:
                execute(run, out, threads)
            except (RuntimeError, OSError) as error:  # reported below, once the other lanes stop
                failures.append(error)
                return
            print(f"[{time.strftime('%H:%M:%S')}] {run.name} done"
                  + (f" in {run.seconds / 60:.1f} min" if run.seconds else " (already there)"), flush=True)
            done[run.name].set()

    workers = [threading.Thread(target=work, args=(lane,)) for lane in lanes]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    if failures:
        raise failures[0]


def score(out: Path, data: Path, name: str, test: str, device: str, threads: int) -> dict:
    """WER and CER of one fine-tuned model on one test set (greedy decoding), cached in OUT."""
    cached = out / f"{name}.{test}.json"
    if not cached.is_file():
        result = subprocess.run([sys.executable, "-m", "wav2vec2", "evaluate", "--model", str(out / name / "final"),
                                 "--manifest", str(data / f"{test}.tsv"), "--json", "--device", device,
                                 "--threads", str(threads), "--output", str(out / f"{name}.{test}.csv")],
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"evaluating {name} on {test} failed: {result.stderr.strip()[-500:]}")
        cached.write_text(result.stdout)
    return json.loads(cached.read_text())


def best_dev(out: Path, name: str) -> dict:
    """The dev WER and CER of the model the fine-tuning kept (its evaluation of lowest CER)."""
    for line in reversed((out / name / "log.jsonl").read_text().splitlines()):
        record = json.loads(line)
        if record.get("event") == "end":
            return record["best"]
    raise RuntimeError(f"{name}: the fine-tuning log has no end record")


def hardware(device: str) -> str:
    import torch

    if device == "cuda":
        return f"{torch.cuda.get_device_name()}, torch {torch.__version__}"
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    return f"{os.cpu_count()} × {model}, torch {torch.__version__}"


def describe(name: str, hours: dict[int, float]) -> str:
    """The init column of a run's row."""
    if name.startswith("scratch"):
        return "scratch"
    step = int(name.split("_")[0].removeprefix("pretrained"))
    return f"pretrained, {hours.get(step, float('nan')):.1f} h seen (update {step})"


def report(lanes: list[list[Run]], out: Path, data: Path, device: str, lane_threads: int, wall: float,
           command: str) -> str:
    runs = {run.name: run for lane in lanes for run in lane if run.name not in ("pretrain", "probe")}
    hours = hours_seen(out)
    lines = ["| init | labels | updates | dev CER | " + " | ".join(
        f"{test} WER | {test} CER" for test in TEST_SETS) + " |",
             "|---|---|---|---|" + "---|---|" * len(TEST_SETS)]
    results = {}
    for name in sorted(runs, key=lambda n: (n.endswith("1h"), n)):
        labels = name[name.index("train_"):]
        arguments = runs[name].arguments
        updates = arguments[arguments.index("--max-steps") + 1]
        scores = {test: score(out, data, name, test, device, os.cpu_count() or 1) for test in TEST_SETS}
        dev = best_dev(out, name)
        results[name] = {"dev": dev, **scores}
        cells = " | ".join(f"{100 * s['wer']:.1f} % | {100 * s['cer']:.1f} %" for s in scores.values())
        lines.append(f"| {describe(name, hours)} | {LABELS[labels]} | {updates} | {100 * dev['cer']:.1f} % | {cells} |")
    (out / "results.json").write_text(json.dumps(results, indent=1))
    findings = []
    probe = out / "probe" / "probe.json"
    if probe.is_file():
        probed = json.loads(probe.read_text())["results"]
        lines += ["", "| probe: frozen features of | head | dev CER | test CER | test_voices CER | "
                      "relative to random |", "|---|---|---|---|---|---|"]
        for r in probed.values():
            random = probed[f"random {r['head']}"]["test"]["cer"]
            step = None if r["encoder"] == "random" else int(Path(r["encoder"]).name.removeprefix("step-"))
            encoder = describe(f"pretrained{step}", hours) if step else "random initialisation"
            lines.append(f"| {encoder} | {r['head']} | {100 * r['dev']['cer']:.1f} % | {100 * r['test']['cer']:.1f} % | "
                         f"{100 * r['test_voices']['cer']:.1f} % | {100 * (1 - r['test']['cer'] / random):+.0f} % |")
        findings.append("- Probe (1 h of labels): the target is pretrained features at least 25 % better "
                        "(relative test CER) than random ones; `last` is a head on the encoder's output, `layers` "
                        "on a learnt mix of every layer's.")
    for labels in LABELS:
        if f"scratch_{labels}" not in results:
            continue
        scratch = results[f"scratch_{labels}"]["test"]["cer"]
        pretrained = sorted((int(name.split("_")[0].removeprefix("pretrained")), name) for name in results
                            if name.startswith("pretrained") and name.endswith(labels))
        gaps = ", ".join(f"{hours.get(step, float('nan')):.1f} h: {100 * (results[name]['test']['cer'] - scratch):+.1f}"
                         for step, name in pretrained)
        findings.append(f"- {LABELS[labels]} of labels: test CER of pretrained minus scratch ({100 * scratch:.1f} %), "
                        f"in points, by hours of audio pretrained on: {gaps or 'none run'}.")
    times = "\n".join(f"- `{run.name}`: {run.seconds / 60:.1f} min" for lane in lanes for run in lane if run.seconds) or \
        "- (every run was already there: see the logs of the invocations that ran them)"
    commands = "\n".join(run.command() for lane in lanes for run in lane)
    return f"""## Results

{chr(10).join(lines)}

{chr(10).join(findings)}

Test sets: `test` = {TEST_SETS['test']} ({data / 'test.tsv'}), `test_voices` = {TEST_SETS['test_voices']}
({data / 'test_voices.tsv'}). Greedy CTC decoding, no language model. Each fine-tuning kept its
model of lowest dev CER (with few labels a model that writes nothing has a WER of 100 %, lower than
one that spells most words nearly right but inserts a few).

Command: `{command}`; wall time {wall / 60:.1f} min on {hardware(device)}
({len(lanes)} lane(s) of {lane_threads} thread(s)). Per run:
{times}

The runs, as executed:

```sh
{commands}
```
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("data/synthetic"), help="the corpus of make_corpus.py")
    parser.add_argument("--out", type=Path, default=Path("runs/synthetic"),
                        help="folder for the runs, their logs and RESULTS.md (default: runs/synthetic)")
    parser.add_argument("--budget", type=float, default=1.0, help="scales every run's updates (default: 1.0)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto (default): cuda when a GPU is present, else cpu")
    parser.add_argument("--seed", type=int, default=0, help="seed of every run (default: 0)")
    parser.add_argument("--lanes", type=int, choices=(1, 2),
                        help="runs side by side (default: 2 on a CPU, 1 on a GPU)")
    parser.add_argument("--threads", type=int,
                        help="threads of each run (default: the CPU's cores shared among the lanes)")
    args = parser.parse_args()
    for name in ("pretrain", "train_10min", "train_1h", "dev", *TEST_SETS):
        if not (args.data / f"{name}.tsv").is_file():
            sys.exit(f"experiment: error: {args.data / f'{name}.tsv'} is missing (run recipes/synthetic/make_corpus.py)")
    if args.device == "auto":
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    args.out.mkdir(parents=True, exist_ok=True)
    lanes = plan(args.data, args.out, args.budget, args.device, args.seed,
                 args.lanes or (1 if args.device == "cuda" else 2))
    threads = args.threads or max(1, (os.cpu_count() or 1) // len(lanes))
    start = time.perf_counter()
    try:
        run_lanes(lanes, args.out, threads)
        text = report(lanes, args.out, args.data, args.device, threads, time.perf_counter() - start,
                      "python recipes/synthetic/experiment.py " + shlex.join(sys.argv[1:]))
    except (RuntimeError, OSError) as error:
        sys.exit(f"experiment: error: {error}")
    (args.out / "RESULTS.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
