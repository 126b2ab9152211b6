"""Audio in: every format, rate and channel count arrives as the same 16 kHz mono signal."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile
import soxr

from wav2vec2 import AudioError, load_audio
from wav2vec2.audio import AudioFile, normalize

from .conftest import write_audio

CASES = [  # (suffix, sample rate, channels, extra soundfile options, exact?)
    ("wav", 16000, 1, {}, True),
    ("wav", 44100, 2, {"subtype": "FLOAT"}, True),
    ("wav", 8000, 1, {}, True),
    ("flac", 48000, 2, {}, True),
    ("flac", 22050, 6, {}, True),
    ("ogg", 32000, 1, {"format": "OGG", "subtype": "VORBIS"}, False),
    ("ogg", 48000, 2, {"format": "OGG", "subtype": "OPUS"}, False),
    ("mp3", 44100, 2, {"format": "MP3", "subtype": "MPEG_LAYER_III"}, False),
]


@pytest.mark.parametrize("suffix, rate, channels, options, exact", CASES,
                         ids=[f"{c[0]}-{c[1]}-{c[2]}ch" for c in CASES])
def test_any_file_becomes_16k_mono(speechlike, tmp_path, suffix, rate, channels, options, exact):
    path = write_audio(tmp_path / f"a.{suffix}", speechlike, rate, channels, **options)
    audio = load_audio(path)
    assert audio.dtype == np.float32 and audio.ndim == 1
    data, file_rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    expected = soxr.resample(data.mean(axis=1), file_rate, 16000, quality="HQ")
    assert abs(len(audio) - len(expected)) <= 1
    n = min(len(audio), len(expected))
    # streaming resampling in blocks agrees with resampling the whole decoded file at once
    assert np.abs(audio[:n] - expected[:n]).max() < 1e-4
    if exact:  # lossless formats also give back the original signal (up to the resampler)
        n = min(n, len(speechlike))
        mix = np.mean([1.0 - 0.1 * c for c in range(channels)])
        error = np.abs(audio[200:n - 200] - mix * speechlike[200:n - 200]).max()
        assert error < (2e-3 if rate == 16000 else 0.05)


def test_long_files_are_read_in_blocks(speechlike, tmp_path):
    path = write_audio(tmp_path / "long.flac", np.tile(speechlike, 8), 44100)
    audio_file = AudioFile(path)
    blocks = list(audio_file.blocks(seconds=1.0))
    assert len(blocks) > 20 and max(len(b) for b in blocks) <= 16000 * 1.1
    assert abs(sum(len(b) for b in blocks) - audio_file.num_samples) <= 1


def test_normalize_is_zero_mean_unit_variance(speechlike):
    x = normalize(speechlike * 7 + 3)
    assert abs(x.mean()) < 1e-5 and abs(x.std() - 1) < 1e-3


@pytest.mark.parametrize("content, message", [
    (None, "no such file"),
    (b"", "not a readable audio file"),
    (b"this is text, not sound\n" * 50, "not a readable audio file"),
    ("zero-length-wav", "contains no audio"),
    ("truncated-flac", "could not be decoded|not a readable"),
])
def test_bad_files_raise_audio_error(tmp_path, speechlike, content, message):
    path = tmp_path / "bad.wav"
    if content == "zero-length-wav":
        soundfile.write(str(path), np.zeros(0, dtype=np.float32), 16000)
    elif content == "truncated-flac":
        path = write_audio(tmp_path / "bad.flac", np.tile(speechlike, 4), 16000)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(AudioError, match=message) as error:
        load_audio(path)
    assert str(path) in str(error.value)
