"""CPU inference speed and memory: our wav2vec 2.0 against `transformers`, on the same weights.

What is measured, and why:

* One forward pass (waveform -> CTC logits) of batch 1, for 10, 30 and 60 s of 16 kHz audio, in two
  shapes: "base" (group-norm feature encoder, post-LN Transformer, as facebook/wav2vec2-base-960h)
  and "large" (layer-norm encoder, pre-LN "stable layer norm", as facebook/wav2vec2-large-960h-lv60-self).
  Weights are random: speed does not depend on their values, and no download is needed.
* Implementations, all loaded from one checkpoint folder so the weights are identical:
  `transformers.Wav2Vec2ForCTC` with eager attention, the same with SDPA attention (the faster one,
  and the one to beat), ours via `wav2vec2.load_model` in float32 ("ours"; its products through
  oneDNN on AMD CPUs with AVX-512, where PyTorch's MKL takes a slow path) and at
  `precision="auto"` ("ours-auto": bf16 with AMX, int8 on other CPUs where it pays), and the
  ONNX export run by onnxruntime in float32 and with its dynamic int8 quantization ("ort-fp32",
  "ort-int8"; skipped without the onnx package or with --no-onnx). Once per shape, our float32
  logits are compared with transformers' to show that the speed is not bought with a different
  function, and the reduced-precision logits with ours (SQNR in dB: signal over error power).
* Timing: one warm-up run per implementation and length, then best-of-N wall time. The implementations
  take turns within each repeat (round-robin), so that background load on a shared machine hits all of
  them alike, and the best run is the least disturbed. The real-time factor is wall time / audio
  seconds (lower is better); "vs SDPA" / "vs eager" is their best time divided by ours (above 1: ours
  is faster). "cpu s" is the process's CPU time of the same runs (best of N): it suffers less from
  other work on the machine than wall time does, so it helps to judge a noisy run.
* Memory: the increase of the process's peak resident set during the forward pass over the resident
  set just before it (Linux: reset the peak through /proc/self/clear_refs, read VmHWM afterwards).
  This counts activations and temporaries, not the weights; memory freed by earlier runs is handed
  back first (malloc_trim) so that it does not hide in the baseline. Shown as "-" where unsupported.
* `--long`: transcribing one long WAV file end to end with our streaming pipeline
  (`wav2vec2.transcribe.transcribe_many`, base shape), each length in a fresh subprocess, reporting
  wall time, real-time factor and that subprocess's RSS: after loading the model, its peak while
  transcribing, and its overall peak (weights and all). The point is that memory stays flat as the
  file grows (target: peak below 2 GB for 60 minutes).

The CPU model and its ISA flags (AMX, AVX-512 BF16, VNNI) are printed with the table.

Usage: python benchmarks/inference.py [--quick] [--long] [--repeats N] [--threads N] [--no-onnx]
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import importlib.util
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from machine import describe_machine

SAMPLE_RATE = 16_000
TARGET_RATIO = 1.2  # ours must be at least this much faster than transformers with SDPA
AUTO_TARGET_RATIO = {"bf16": 4.0, "int8": 2.0}  # ours-auto over SDPA (int8: and faster than ort-int8)
MEMORY_TARGET_MB = 2048  # peak RSS of the --long run

CONFIGS = {
    "base": {},  # the defaults of wav2vec2.Wav2Vec2Config()
    "large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                  feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True),
}
IMPLEMENTATIONS = ["hf-eager", "hf-sdpa", "ours", "ours-auto", "ort-fp32", "ort-int8"]

VOCAB = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 4,
         **{chr(ord("A") + i): 5 + i for i in range(26)}, "'": 31}


# ---------------------------------------------------------------------------- memory

def read_status_kb(field: str) -> int | None:
    """A field of /proc/self/status in kB (VmRSS, VmHWM), or None where there is none."""
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    match = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) if match else None


def release_free_memory() -> None:
    """Hand memory that glibc keeps after free() back to the system, so that what the previous run
    left in the heap does not count as "already resident" for the next (no-op elsewhere)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def reset_peak_rss() -> bool:
    """Make VmHWM equal to the current RSS (Linux 4.0+); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as file:
            file.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """This process's peak RSS in MB: VmHWM, or getrusage where /proc is missing.

    The subprocess of --long reports its own VmHWM: getrusage(RUSAGE_CHILDREN) would not do, as a
    child's ru_maxrss keeps the RSS its parent had when forking it (here, several loaded models)."""
    hwm = read_status_kb("VmHWM")
    if hwm is not None:
        return hwm / 1024
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss / 1024 / (1024 if sys.platform == "darwin" else 1)  # bytes on macOS, kB on Linux


def load_average() -> str:
    try:
        return " ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "unknown"


# ---------------------------------------------------------------------------- models

def config_values(name: str) -> dict:
    """The config.json values of one shape, starting from the defaults of our Wav2Vec2Config."""
    import wav2vec2

    values = wav2vec2.Wav2Vec2Config(vocab_size=32, **CONFIGS[name]).to_dict()
    for derived in ("model_type", "num_feat_extract_layers"):  # transformers sets these itself
        values.pop(derived)
    return values


def save_checkpoint(name: str, folder: Path) -> None:
    """A transformers model with random weights, saved with a character vocabulary."""
    import transformers

    torch.manual_seed(0)
    config = transformers.Wav2Vec2Config(**config_values(name))
    transformers.Wav2Vec2ForCTC(config).eval().save_pretrained(folder)
    (folder / "vocab.json").write_text(json.dumps(VOCAB))


def build_models(name: str, folder: Path, threads: int, onnx: bool) -> dict[str, torch.nn.Module]:
    """One random checkpoint in `folder`, loaded as transformers eager, transformers SDPA, ours
    (float32 and auto precision) and, with `onnx`, our ONNX export in onnxruntime."""
    import transformers
    import wav2vec2

    save_checkpoint(name, folder)
    models = {}
    for implementation in ("eager", "sdpa"):
        model = transformers.Wav2Vec2ForCTC.from_pretrained(folder, attn_implementation=implementation)
        assert model.config._attn_implementation == implementation
        assert next(model.parameters()).dtype == torch.float32
        models[f"hf-{implementation}"] = model.eval()
    models["ours"] = wav2vec2.load_model(folder)
    models["ours-auto"] = wav2vec2.load_model(folder, precision="auto")
    if onnx:
        import onnxruntime
        from wav2vec2.export import export_onnx

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        for precision in ("fp32", "int8"):
            path = export_onnx(models["ours"], folder / f"model-{precision}.onnx", precision)
            models[f"ort-{precision}"] = onnxruntime.InferenceSession(str(path), options,
                                                                      providers=["CPUExecutionProvider"])
    return models


def forward(name: str, model, waveform: torch.Tensor) -> torch.Tensor:
    if name.startswith("ours"):
        return model(waveform)
    if name.startswith("ort"):
        feeds = {"waveform": waveform.numpy()}
        if any(node.name == "attention_mask" for node in model.get_inputs()):
            feeds["attention_mask"] = np.ones(waveform.shape, dtype=np.int64)
        return torch.from_numpy(model.run(None, feeds)[0])
    return model(waveform).logits


def check_agreement(models: dict[str, torch.nn.Module], waveform: torch.Tensor) -> dict[str, float]:
    """Max abs difference of our float32 logits from each transformers variant's."""
    with torch.inference_mode():
        ours = forward("ours", models["ours"], waveform)
        return {name: (forward(name, models[name], waveform) - ours).abs().max().item()
                for name in models if name.startswith("hf")}


def check_precision(models: dict[str, torch.nn.Module], waveform: torch.Tensor) -> dict[str, float]:
    """SQNR in dB of the other implementations' logits against our float32 logits."""
    with torch.inference_mode():
        ours = forward("ours", models["ours"], waveform)
        result = {}
        for name in models:
            if name.startswith(("ours-", "ort")):
                error = (forward(name, models[name], waveform) - ours).pow(2).sum().clamp(min=1e-30)
                result[name] = 10 * torch.log10(ours.pow(2).sum() / error).item()
        return result


# ---------------------------------------------------------------------------- timing

def timed_forward(name: str, model: torch.nn.Module,
                  waveform: torch.Tensor) -> tuple[float, float, float | None]:
    """Wall and CPU seconds of one forward pass, and the peak RSS increase during it in MB
    (None: unknown)."""
    gc.collect()
    release_free_memory()
    can_measure = reset_peak_rss()
    before = read_status_kb("VmRSS")
    with torch.inference_mode():
        start, cpu_start = time.perf_counter(), time.process_time()
        logits = forward(name, model, waveform)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    peak = read_status_kb("VmHWM")
    del logits
    if not can_measure or before is None or peak is None:
        return seconds, cpu, None
    return seconds, cpu, (peak - before) / 1024


def measure(models: dict[str, torch.nn.Module], seconds: float, repeats: int) -> dict[str, dict]:
    """Best-of-`repeats` time and largest memory increase of each implementation on one input."""
    generator = torch.Generator().manual_seed(1)
    waveform = torch.randn(1, int(seconds * SAMPLE_RATE), generator=generator)
    for name, model in models.items():  # warm-up: first-call allocations, lazy initialisation
        timed_forward(name, model, waveform)
    results = {name: {"times": [], "cpu": [], "memory": []} for name in models}
    names = list(models)
    for repeat in range(repeats):
        turn = names[repeat % len(names):] + names[:repeat % len(names)]  # rotate who goes first
        for name in turn:
            wall, cpu, memory = timed_forward(name, models[name], waveform)
            results[name]["times"].append(wall)
            results[name]["cpu"].append(cpu)
            if memory is not None:
                results[name]["memory"].append(memory)
    return {name: {"best": min(r["times"]), "cpu": min(r["cpu"]),
                   "memory": max(r["memory"]) if r["memory"] else None}
            for name, r in results.items()}


# ---------------------------------------------------------------------------- table

HEADER = (f"{'config':<6} {'audio s':>7} {'implementation':<14} {'best s':>8} {'cpu s':>8} {'RTF':>7} "
          f"{'peak MB':>8} {'vs SDPA':>8} {'vs eager':>8}")


def format_row(config: str, seconds: float, name: str, result: dict, row: dict) -> str:
    memory = "-" if result["memory"] is None else f"{result['memory']:.0f}"
    versus_sdpa = versus_eager = ""
    if not name.startswith("hf"):
        versus_sdpa = f"{row['hf-sdpa']['best'] / result['best']:.2f}x"
        versus_eager = f"{row['hf-eager']['best'] / result['best']:.2f}x"
    return (f"{config:<6} {seconds:>7.0f} {name:<14} {result['best']:>8.3f} {result['cpu']:>8.3f} "
            f"{result['best'] / seconds:>7.4f} "
            f"{memory:>8} {versus_sdpa:>8} {versus_eager:>8}")


# ---------------------------------------------------------------------------- long files

def write_long_wav(path: Path, minutes: float) -> None:
    """Quiet white noise plus a few tones, written a minute at a time (16-bit PCM, 16 kHz)."""
    import soundfile

    rng = np.random.default_rng(0)
    total = int(minutes * 60 * SAMPLE_RATE)
    with soundfile.SoundFile(str(path), "w", SAMPLE_RATE, 1, subtype="PCM_16") as file:
        for start in range(0, total, 60 * SAMPLE_RATE):
            t = np.arange(start, min(total, start + 60 * SAMPLE_RATE)) / SAMPLE_RATE
            block = 0.01 * rng.standard_normal(len(t))
            for frequency in (220.0, 440.0, 1000.0):
                block += 0.05 * np.sin(2 * np.pi * frequency * t)
            file.write(block.astype(np.float32))


def transcribe_child(folder: str, wav: str, threads: int) -> None:
    """Run in a fresh process: load our model, transcribe one file, print a JSON line of results."""
    import wav2vec2
    from wav2vec2.transcribe import transcribe_many

    torch.set_num_threads(threads)
    model = wav2vec2.load_model(folder)
    loaded_mb = (read_status_kb("VmRSS") or 0) / 1024  # 0: unknown
    load_peak_mb = peak_rss_mb()  # loading briefly holds the weights twice
    reset_peak_rss()  # from here on VmHWM is the peak while transcribing (where clear_refs works)
    start = time.perf_counter()
    (_, result), = transcribe_many(model, [wav])
    wall = time.perf_counter() - start
    if isinstance(result, Exception):
        raise result
    transcribe_peak_mb = peak_rss_mb()
    print(json.dumps({"wall": wall, "duration": result.duration, "loaded_mb": loaded_mb,
                      "transcribe_peak_mb": transcribe_peak_mb,
                      "peak_mb": max(load_peak_mb, transcribe_peak_mb), "characters": len(result.text)}))


def run_long(folder: Path, minutes_list: list[float], threads: int, workdir: Path) -> None:
    print("\nLong files: wav2vec2.transcribe.transcribe_many, base shape, fresh subprocess each")
    print(f"{'minutes':>7} {'wall s':>8} {'RTF':>7} {'RSS loaded MB':>14} {'peak transcribing MB':>21} "
          f"{'peak RSS MB':>12}")
    peaks = []
    for minutes in minutes_list:
        wav = workdir / f"long-{minutes:g}min.wav"
        write_long_wav(wav, minutes)
        command = [sys.executable, str(Path(__file__).resolve()), "--threads", str(threads),
                   "--child", str(folder), str(wav)]
        completed = subprocess.run(command, capture_output=True, text=True)
        wav.unlink()
        if completed.returncode != 0:
            print(f"{minutes:>7g} failed:\n{completed.stderr[-2000:]}")
            continue
        result = json.loads(completed.stdout.strip().splitlines()[-1])
        peaks.append(result["peak_mb"])
        print(f"{minutes:>7g} {result['wall']:>8.1f} {result['wall'] / result['duration']:>7.4f} "
              f"{result['loaded_mb']:>14.0f} {result['transcribe_peak_mb']:>21.0f} "
              f"{result['peak_mb']:>12.0f}")
    if peaks:
        verdict = "held" if max(peaks) < MEMORY_TARGET_MB else "MISSED"
        print(f"Long-file peak RSS at most {max(peaks):.0f} MB: target < {MEMORY_TARGET_MB} MB {verdict}")


# ---------------------------------------------------------------------------- main

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="only 10 s of audio (a smoke test)")
    parser.add_argument("--long", action="store_true", help="also transcribe long files in subprocesses")
    parser.add_argument("--long-minutes", type=float, nargs="+", default=[10, 60], metavar="N",
                        help="lengths of the --long files in minutes (default: 10 60)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per implementation (best of N)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--no-onnx", action="store_true", help="leave out the onnxruntime rows")
    parser.add_argument("--child", nargs=2, metavar=("FOLDER", "WAV"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        transcribe_child(*args.child, args.threads)
        return

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import transformers
    import transformers.utils.logging

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    lengths = [10.0] if args.quick else [10.0, 30.0, 60.0]
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {args.threads} threads, "
          f"best of {args.repeats}, batch 1, random weights and input")
    print(f"load average at start: {load_average()} (other work on the machine makes timings noisy)")
    print(describe_machine())
    from wav2vec2.precision import resolve_precision

    auto = resolve_precision("auto")
    print(f"precision auto here: {auto}")
    onnx = not args.no_onnx and importlib.util.find_spec("onnx") is not None
    if not onnx and not args.no_onnx:
        print("onnx is not installed: no onnxruntime rows (pip install 'wav2vec2[onnx]')")

    rows = []  # (config, seconds, results per implementation)
    agreement, precision = {}, {}
    with tempfile.TemporaryDirectory(prefix="wav2vec2-bench-") as tmp:
        tmp = Path(tmp)
        for config in args.configs:
            folder = tmp / config
            models = build_models(config, folder, args.threads, onnx)
            check_input = torch.randn(1, 5 * SAMPLE_RATE, generator=torch.Generator().manual_seed(2))
            agreement[config] = check_agreement(models, check_input)
            precision[config] = check_precision(models, check_input)
            for seconds in lengths:
                rows.append((config, seconds, measure(models, seconds, args.repeats)))
                print(f"  measured {config} {seconds:.0f} s", file=sys.stderr, flush=True)
            del models
            gc.collect()

        print()
        print(HEADER)
        print("-" * len(HEADER))
        for config, seconds, results in rows:
            for name in IMPLEMENTATIONS:
                if name in results:
                    print(format_row(config, seconds, name, results[name], results))
        print()
        for config, diffs in agreement.items():
            shown = ", ".join(f"{name} {diff:.2e}" for name, diff in diffs.items())
            verdict = "ok" if max(diffs.values()) < 1e-4 else "DIFFERENT (> 1e-4)"
            print(f"Logits of ours vs transformers, {config}, 5 s input: max abs diff {shown} ({verdict})")
        for config, sqnr in precision.items():
            shown = ", ".join(f"{name} {value:.1f} dB" for name, value in sqnr.items())
            print(f"Logits SQNR against ours in float32, {config}, 5 s input: {shown} (ours-auto is {auto})")

        if args.long:
            if "base" not in args.configs:
                save_checkpoint("base", tmp / "base")
            run_long(tmp / "base", args.long_minutes, args.threads, tmp)

    print(f"load average at end: {load_average()}")
    ratios = [results["hf-sdpa"]["best"] / results["ours"]["best"] for _, _, results in rows]
    worst = min(ratios)
    held = "held" if worst >= TARGET_RATIO else "NOT held"
    print(f"\nSummary: ours is at least {worst:.2f}x as fast as transformers SDPA over {len(ratios)} rows; "
          f"target >= {TARGET_RATIO}x {held}.")
    if auto in AUTO_TARGET_RATIO:
        base = [results for config, seconds, results in rows if config == "base" and seconds == 30.0]
        for results in base:
            ratio = results["hf-sdpa"]["best"] / results["ours-auto"]["best"]
            verdict = "held" if ratio >= AUTO_TARGET_RATIO[auto] else "NOT held"
            line = (f"ours-auto ({auto}), base 30 s: {ratio:.2f}x transformers SDPA, target >= "
                    f"{AUTO_TARGET_RATIO[auto]}x {verdict}")
            if "ort-int8" in results:
                faster = results["ort-int8"]["best"] / results["ours-auto"]["best"]
                line += f"; {faster:.2f}x onnxruntime int8 (target > 1x: {'held' if faster > 1 else 'NOT held'})"
            print(line)


if __name__ == "__main__":
    main()
