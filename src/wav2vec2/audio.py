"""Audio in: decode any common file, mix to mono, resample to 16 kHz, normalise as the checkpoint asks.

Files are read block by block (soundfile) and resampled as a stream (soxr), so an hour-long
recording never has to sit in memory at its original rate and channel count.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
import soxr

from .errors import AudioError

SAMPLE_RATE = 16000


@dataclass
class Preprocessing:
    """The feature-extractor settings of a checkpoint (`preprocessor_config.json`)."""

    sampling_rate: int = SAMPLE_RATE
    do_normalize: bool = True
    return_attention_mask: bool = False
    padding_value: float = 0.0

    @classmethod
    def from_dict(cls, values: dict) -> Preprocessing:
        # transformers 5 nests the settings under "feature_extractor" in processor_config.json
        values = values.get("feature_extractor", values)
        known = {k: values[k] for k in ("sampling_rate", "do_normalize", "return_attention_mask",
                                         "padding_value") if k in values}
        return cls(**known)

    @classmethod
    def from_folder(cls, folder: Path) -> Preprocessing | None:
        for name in ("preprocessor_config.json", "processor_config.json"):
            if (folder / name).is_file():
                return cls.from_dict(json.loads((folder / name).read_text()))
        return None

    def to_dict(self) -> dict:
        return {
            "feature_extractor_type": "Wav2Vec2FeatureExtractor",
            "feature_size": 1,
            "padding_side": "right",
            "padding_value": self.padding_value,
            "do_normalize": self.do_normalize,
            "return_attention_mask": self.return_attention_mask,
            "sampling_rate": self.sampling_rate,
        }


def normalize(audio: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance over the whole array (the checkpoints' `do_normalize`)."""
    audio = audio.astype(np.float32, copy=False)
    return ((audio - audio.mean()) / np.sqrt(audio.var() + 1e-7)).astype(np.float32)


def to_mono(audio: np.ndarray) -> np.ndarray:
    """(samples,) or (samples, channels) -> (samples,) float32, channels averaged."""
    if audio.ndim == 2:
        audio = audio.mean(axis=1)
    return audio.astype(np.float32, copy=False)


def resample(audio: np.ndarray, sample_rate: int, target_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Mono float32 audio from sample_rate to target_rate (soxr, high quality)."""
    if sample_rate <= 0:
        raise AudioError(f"invalid sample rate {sample_rate}")
    if sample_rate == target_rate:
        return audio.astype(np.float32, copy=False)
    return soxr.resample(audio, sample_rate, target_rate, quality="HQ").astype(np.float32, copy=False)


class AudioFile:
    """An audio file opened for reading as 16 kHz mono, in blocks."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.exists():
            raise AudioError(f"{self.path}: no such file")
        if self.path.is_dir():
            raise AudioError(f"{self.path}: is a folder, not an audio file")
        try:
            info = soundfile.info(str(self.path))
        except Exception as error:  # libsndfile says little more than "format not recognised"
            raise AudioError(f"{self.path}: not a readable audio file ({_reason(error)})") from None
        if info.frames <= 0 or info.samplerate <= 0:
            raise AudioError(f"{self.path}: contains no audio")
        self.source_rate: int = info.samplerate
        self.channels: int = info.channels
        self.source_frames: int = info.frames

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return self.source_frames / self.source_rate

    @property
    def num_samples(self) -> int:
        """Length at 16 kHz (approximately, before the resampler's rounding)."""
        return round(self.source_frames * SAMPLE_RATE / self.source_rate)

    def blocks(self, seconds: float = 10.0) -> Iterator[np.ndarray]:
        """Yield consecutive 16 kHz mono float32 blocks of about `seconds` each."""
        frames = max(1, int(seconds * self.source_rate))
        resampler = None
        if self.source_rate != SAMPLE_RATE:
            resampler = soxr.ResampleStream(self.source_rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")
        produced = 0
        try:
            with soundfile.SoundFile(str(self.path)) as file:
                while True:
                    block = file.read(frames, dtype="float32", always_2d=True)
                    last = len(block) < frames
                    mono = to_mono(block)
                    if resampler is not None:
                        mono = resampler.resample_chunk(mono, last=last)
                    if len(mono):
                        produced += len(mono)
                        yield mono
                    if last:
                        break
        except AudioError:
            raise
        except Exception as error:
            raise AudioError(f"{self.path}: could not be decoded ({_reason(error)})") from None
        if produced == 0:
            raise AudioError(f"{self.path}: contains no audio")

    def read(self) -> np.ndarray:
        """The whole file as 16 kHz mono float32."""
        return np.concatenate(list(self.blocks(60.0)))


def load_audio(path: str | os.PathLike) -> np.ndarray:
    """Read a WAV, FLAC, OGG or MP3 file (any rate, any channels) as 16 kHz mono float32."""
    return AudioFile(path).read()


def _reason(error: Exception) -> str:
    """libsndfile's message without the file name it repeats ("Error opening 'x': ...")."""
    lines = str(error).strip().splitlines()
    text = lines[-1] if lines else type(error).__name__
    return re.sub(r"^Error opening .*?: ", "", text).rstrip(".")
