"""Training batches: utterances bucketed by length, cropped to a common length, in a seeded order.

A batch holds utterances of similar length (sorted, then filled up to a total number of
samples) and crops each at a random offset to the batch's shortest, at most `max_samples`: no
padding, which matters for the base family that is trained without an attention mask. Each epoch
shuffles the batches with a generator seeded by (seed, epoch); process r of N takes every N-th.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import soxr
import torch

from ..audio import SAMPLE_RATE, AudioFile, load_audio, normalize
from ..errors import AudioError, Wav2Vec2Error
from ..manifest import Entry


def rng_for(seed: int, step: int, index: int, purpose: int) -> np.random.Generator:
    """The generator of one random choice (`purpose`) about utterance `index` at `step`."""
    return np.random.default_rng([seed, step, index, purpose])


def change_speed(audio: np.ndarray, factor: float) -> np.ndarray:
    """The audio played `factor` times as fast, tempo and pitch together as a tape would (speed
    perturbation, against voices the training set lacks): read as if recorded at 16 kHz x factor,
    resampled to 16 kHz."""
    return soxr.resample(audio, SAMPLE_RATE * factor, SAMPLE_RATE, quality="HQ").astype(np.float32, copy=False)


def measure(entries: Sequence[Entry], min_samples: int) -> tuple[list[Entry], list[int], dict[str, int]]:
    """Keep the readable entries of at least `min_samples` (16 kHz); return them, their lengths,
    and how many were skipped and why (each kind reported once as a warning)."""
    kept, lengths = [], []
    skipped = {"unreadable": 0, "too short": 0}
    for entry in entries:
        try:
            samples = AudioFile(entry.audio).num_samples
        except AudioError as error:
            skipped["unreadable"] += 1
            if skipped["unreadable"] <= 3:
                warnings.warn(f"skipping {error}", stacklevel=2)
            continue
        if samples < min_samples:
            skipped["too short"] += 1
            continue
        kept.append(entry)
        lengths.append(samples)
    if skipped["too short"]:
        warnings.warn(f"skipped {skipped['too short']} clips shorter than {min_samples / 16000:.3f} s", stacklevel=2)
    if not kept:
        raise Wav2Vec2Error(f"no usable audio among {len(entries)} files "
                            f"({skipped['unreadable']} unreadable, {skipped['too short']} too short)")
    return kept, lengths, skipped


def make_batches(lengths: Sequence[int], max_batch_samples: int, max_samples: int) -> list[list[int]]:
    """Indices grouped by length so that (batch size) x (cropped length) <= max_batch_samples."""
    batches: list[list[int]] = []
    current: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: (lengths[i], i)):
        shortest = min(lengths[current[0]] if current else lengths[index], max_samples)
        if current and (len(current) + 1) * shortest > max_batch_samples:
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches


class BatchOrder:
    """Which batch process `rank` of `world` trains on at global batch `index` (epochs repeat)."""

    def __init__(self, batches: list[list[int]], world: int, seed: int):
        if len(batches) < world:
            raise Wav2Vec2Error(f"{len(batches)} batches are too few for {world} processes")
        self.batches = batches
        self.world = world
        self.seed = seed
        self.per_process = len(batches) // world

    def batch(self, index: int, rank: int) -> list[int]:
        epoch, position = divmod(index, self.per_process)
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.batches))
        return self.batches[order[position * self.world + rank]]


def load_batch(entries: Sequence[Entry], indices: Sequence[int], max_samples: int, seed: int, step: int,
               do_normalize: bool) -> tuple[torch.Tensor, list[int]]:
    """Audio of the batch, cropped to a common length: (batch, samples), and the indices that
    could be read (a file that fails to decode now is skipped with a warning)."""
    arrays, kept = [], []
    for index in indices:
        try:
            arrays.append(load_audio(entries[index].audio))
            kept.append(index)
        except AudioError as error:
            warnings.warn(f"skipping {error}", stacklevel=2)
    if not arrays:
        raise Wav2Vec2Error("no file of a batch could be read")
    length = min(min(len(a) for a in arrays), max_samples)
    crops = []
    for index, audio in zip(kept, arrays):
        start = int(rng_for(seed, step, index, 0).integers(0, len(audio) - length + 1))
        crop = audio[start:start + length]
        crops.append(normalize(crop) if do_normalize else crop)
    return torch.from_numpy(np.stack(crops)), kept
