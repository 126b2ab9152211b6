"""Pretraining throughput: our training step against transformers.Wav2Vec2ForPreTraining.

Both models get the same configuration, the same weights, the same batch, the same span mask and
the same distractor indices; one step is forward, backward and an AdamW update. Dropout is left
at the configuration's values (its random choices differ, its cost does not); LayerDrop is turned
off, because which layers it skips changes the amount of work, and a best-of-N time would favour
whichever model happened to skip more. Throughput is seconds of audio trained on per second of wall
time; the best of several interleaved repeats is kept, so background load hits both alike. The
page faults per step (the mean over the repeats) show how much fresh memory each step touches,
which on this project's machine costs transformers much of its time.

--floor adds, per configuration, the matrix products of our step: their GFLOP, their time inside
the step, and a floor, each shape at the faster of its time in the step and its time measured
alone in its best layout. transformers' step divided by that floor bounds the speed-up of any step
that does the same products, and nothing else.

--bf16 adds our step under bf16 autocast (float32 weights and optimizer, what `--precision bf16`
trains with): on CPUs with AMX the target is half our float32 step.

    python benchmarks/pretraining.py [--configs small base] [--seconds 4] [--batch 2] [--repeats 3] [--floor] [--bf16]
"""

from __future__ import annotations

import argparse
import itertools
import resource
import time

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile
import transformers

from machine import describe_machine
from wav2vec2.checkpoints import from_hf_keys, load_state
from wav2vec2.model import Wav2Vec2Config, frame_lengths
from wav2vec2.pretraining import Wav2Vec2ForPreTraining, sample_distractors, span_mask
from wav2vec2.train.presets import PRESETS


def build(name: str) -> tuple[Wav2Vec2ForPreTraining, transformers.Wav2Vec2ForPreTraining]:
    torch.manual_seed(0)
    config = Wav2Vec2Config.from_dict({**PRESETS[name], "layerdrop": 0.0})
    values = {k: v for k, v in config.to_dict().items() if k != "extra"}
    theirs = transformers.Wav2Vec2ForPreTraining(transformers.Wav2Vec2Config(**values)).train()
    ours = Wav2Vec2ForPreTraining(config).train()
    load_state(ours, from_hf_keys(theirs.state_dict()), "transformers")
    return ours, theirs


def step_ours(model, optimizer, batch):
    waveform, mask, distractors = batch
    output = model(waveform, None, mask, distractors)
    output.loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return output.contrastive_loss.item()


def step_ours_bf16(model, optimizer, batch):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return step_ours(model, optimizer, batch)


def step_theirs(model, optimizer, batch):
    waveform, mask, distractors = batch
    output = model(waveform, mask_time_indices=mask, sampled_negative_indices=distractors)
    # the same objective as ours: means over masked steps, plus the feature penalty transformers lacks
    (output.loss / mask.sum()).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return output.contrastive_loss.item() / mask.sum().item()


def measure(name: str, seconds: float, batch_size: int, repeats: int, floor: bool, bf16: bool
            ) -> tuple[list[tuple], str]:
    ours, theirs = build(name)
    samples = int(seconds * 16000)
    frames = int(frame_lengths(torch.tensor(samples), ours.config))
    rng = np.random.default_rng(0)
    waveform = torch.randn(batch_size, samples, generator=torch.Generator().manual_seed(0))
    mask = span_mask([frames] * batch_size, frames, rng=rng)
    distractors = sample_distractors(mask, ours.config.num_negatives, rng=rng)
    batch = (waveform, mask, distractors)
    runs = {"transformers": (theirs, step_theirs), "ours": (ours, step_ours)}
    if bf16:
        runs["ours bf16"] = (ours, step_ours_bf16)
    # fused AdamW for both: the transformers Trainer's default optimizer with torch >= 2.8
    optimizers = {k: torch.optim.AdamW(m.parameters(), lr=1e-5, fused=True) for k, (m, _) in runs.items()}
    best = {k: float("inf") for k in runs}
    faults = {k: 0 for k in runs}
    for key, (model, step) in runs.items():  # warm-up
        step(model, optimizers[key], batch)
    for _ in range(repeats):
        for key, (model, step) in runs.items():
            faults_before, start = page_faults(), time.perf_counter()
            step(model, optimizers[key], batch)
            best[key] = min(best[key], time.perf_counter() - start)
            faults[key] += (page_faults() - faults_before) / repeats
    audio = seconds * batch_size
    rows = []
    for key in runs:
        rows.append((name, f"{batch_size}x{seconds:g}s", key, best[key], audio / best[key],
                     best["transformers"] / best[key], faults[key]))
    return rows, matrix_product_floor(ours, optimizers["ours"], batch, best["transformers"]) if floor else ""


def page_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def best_time(function, calls: int = 10) -> float:
    function()
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(calls):
            function()
        best = min(best, (time.perf_counter() - start) / calls)
    return best


def matrix_product_floor(model, optimizer, batch, theirs: float) -> str:
    """Profile one of our steps, then time each matrix-product shape alone in its best layout."""
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as profiler:
        step_ours(model, optimizer, batch)
    flop = in_step = floor = 0.0
    for event in profiler.key_averages(group_by_input_shape=True):
        shapes = event.input_shapes
        if event.key == "aten::bmm":
            (count, m, k), (_, _, n) = shapes[0], shapes[1]
        elif event.key == "aten::mm":
            count, (m, k), (_, n) = 1, shapes[0], shapes[1]
        elif event.key in ("aten::addmm", "aten::addmm_"):
            count, (m, k), (_, n) = 1, shapes[1], shapes[2]
        else:
            continue
        fastest = event.self_cpu_time_total / 1e6 / event.count
        for a_transposed, b_transposed in itertools.product((False, True), repeat=2):
            a = torch.randn(count, k, m).transpose(1, 2) if a_transposed else torch.randn(count, m, k)
            b = torch.randn(count, n, k).transpose(1, 2) if b_transposed else torch.randn(count, k, n)
            product = (lambda: torch.bmm(a, b)) if count > 1 else (lambda a=a[0], b=b[0]: torch.mm(a, b))
            fastest = min(fastest, best_time(product))
        flop += 2 * count * m * k * n * event.count
        in_step += event.self_cpu_time_total / 1e6
        floor += fastest * event.count
    return (f"  matrix products of our step: {flop / 1e9:.0f} GFLOP, {in_step:.3f} s in the step "
            f"({flop / 1e9 / in_step:.0f} GFLOP/s), floor {floor:.3f} s ({flop / 1e9 / floor:.0f} GFLOP/s): "
            f"at most {theirs / floor:.2f}x transformers' {theirs:.3f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["small", "base"], choices=list(PRESETS),
                        help="model sizes to time (default: small base)")
    parser.add_argument("--seconds", type=float, default=4.0, help="seconds per utterance (default: 4)")
    parser.add_argument("--batch", type=int, default=2, help="utterances per batch (default: 2)")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per implementation; the best is kept "
                                                              "(default: 3)")
    parser.add_argument("--threads", type=int, default=2, help="PyTorch threads (default: 2)")
    parser.add_argument("--floor", action="store_true", help="also time our step's matrix products alone")
    parser.add_argument("--bf16", action="store_true", help="also time our step under bf16 autocast")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {args.threads} threads")
    print(describe_machine())
    print(f"{'config':8} {'batch':>8} {'implementation':>15} {'step (s)':>9} {'audio s/s':>10} {'speed-up':>9} "
          f"{'faults/step':>12}")
    ratios, bf16_gains = [], []
    for name in args.configs:
        rows, floor = measure(name, args.seconds, args.batch, args.repeats, args.floor, args.bf16)
        steps = {row[2]: row[3] for row in rows}
        for row in rows:
            print(f"{row[0]:8} {row[1]:>8} {row[2]:>15} {row[3]:9.3f} {row[4]:10.2f} {row[5]:8.2f}x {row[6]:12,.0f}")
        ratios.append(steps["transformers"] / steps["ours"])
        if args.bf16:
            bf16_gains.append(steps["ours"] / steps["ours bf16"])
            print(f"  bf16 autocast: {bf16_gains[-1]:.2f}x our float32 step")
        if floor:
            print(floor)
    print(f"lowest speed-up over transformers: {min(ratios):.2f}x (target 1.5x): "
          f"{'met' if min(ratios) >= 1.5 else 'NOT met'}")
    if bf16_gains:
        print(f"lowest bf16 gain over our float32 step: {min(bf16_gains):.2f}x (target on AMX CPUs: 2x): "
              f"{'met' if min(bf16_gains) >= 2 else 'NOT met'}")


if __name__ == "__main__":
    main()
