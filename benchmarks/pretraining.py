"""Pretraining throughput: our training step against transformers.Wav2Vec2ForPreTraining.

Both models get the same configuration, the same weights, the same batch, the same span mask and
the same distractor indices; one step is forward, backward and an AdamW update. Dropout is left
at the configuration's values (its random choices differ, its cost does not); LayerDrop is turned
off, because which layers it skips changes the amount of work, and a best-of-N time would favour
whichever model happened to skip more. Throughput is seconds of audio trained on per second of wall
time; the best of several interleaved repeats is kept, so background load hits both alike.

    python benchmarks/pretraining.py [--configs small base] [--seconds 4] [--batch 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import transformers

from wav2vec2.checkpoints import from_hf_keys, load_state
from wav2vec2.model import PRESETS, Wav2Vec2Config, frame_lengths
from wav2vec2.pretraining import Wav2Vec2ForPreTraining, sample_distractors, span_mask


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


def step_theirs(model, optimizer, batch):
    waveform, mask, distractors = batch
    output = model(waveform, mask_time_indices=mask, sampled_negative_indices=distractors)
    # the same objective as ours: means over masked steps, plus the feature penalty transformers lacks
    (output.loss / mask.sum()).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return output.contrastive_loss.item() / mask.sum().item()


def measure(name: str, seconds: float, batch_size: int, repeats: int) -> list[tuple]:
    ours, theirs = build(name)
    samples = int(seconds * 16000)
    frames = int(frame_lengths(torch.tensor(samples), ours.config))
    rng = np.random.default_rng(0)
    waveform = torch.randn(batch_size, samples, generator=torch.Generator().manual_seed(0))
    mask = span_mask([frames] * batch_size, frames, rng=rng)
    distractors = sample_distractors(mask, ours.config.num_negatives, rng=rng)
    batch = (waveform, mask, distractors)
    runs = {"transformers": (theirs, step_theirs), "ours": (ours, step_ours)}
    # fused AdamW for both: the transformers Trainer's default optimizer with torch >= 2.8
    optimizers = {k: torch.optim.AdamW(m.parameters(), lr=1e-5, fused=True) for k, (m, _) in runs.items()}
    best = {k: float("inf") for k in runs}
    for key, (model, step) in runs.items():  # warm-up
        step(model, optimizers[key], batch)
    for _ in range(repeats):
        for key, (model, step) in runs.items():
            start = time.perf_counter()
            step(model, optimizers[key], batch)
            best[key] = min(best[key], time.perf_counter() - start)
    audio = seconds * batch_size
    rows = []
    for key in runs:
        rows.append((name, f"{batch_size}x{seconds:g}s", key, best[key], audio / best[key],
                     best["transformers"] / best[key]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["small", "base"], choices=list(PRESETS))
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {args.threads} threads")
    print(f"{'config':8} {'batch':>8} {'implementation':>15} {'step (s)':>9} {'audio s/s':>10} {'speed-up':>9}")
    ratios = []
    for name in args.configs:
        for row in measure(name, args.seconds, args.batch, args.repeats):
            print(f"{row[0]:8} {row[1]:>8} {row[2]:>15} {row[3]:9.3f} {row[4]:10.2f} {row[5]:8.2f}x")
            if row[2] == "ours":
                ratios.append(row[5])
    print(f"lowest speed-up over transformers: {min(ratios):.2f}x (target 1.5x): "
          f"{'met' if min(ratios) >= 1.5 else 'NOT met'}")


if __name__ == "__main__":
    main()
