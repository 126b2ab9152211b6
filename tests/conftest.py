"""Shared fixtures: small random `transformers` checkpoints (the oracle) and audio files.

Nothing is downloaded: every checkpoint is a randomly initialised transformers.Wav2Vec2ForCTC
saved with save_pretrained, together with a real Wav2Vec2Processor (tokenizer + feature
extractor) so that the folders look exactly like the ones on the Hub.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

VOCAB = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 4,
         **{letter: 5 + i for i, letter in enumerate("ETAONISRHDLUMWCFGYPBVK'XJQZ")}}

# Small versions of the two families: the convolution kernels and strides are the real ones.
SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
             conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
             vocab_size=len(VOCAB))
FAMILIES = {
    # facebook/wav2vec2-base-960h: GroupNorm feature encoder, post-LN, no attention mask
    "base": dict(feat_extract_norm="group", do_stable_layer_norm=False, conv_bias=False),
    # facebook/wav2vec2-large-960h-lv60-self: LayerNorm encoder, pre-LN, conv bias, attention mask
    "lv60": dict(feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True),
}


def make_hf_checkpoint(folder: Path, family: str, seed: int = 0, **overrides) -> Path:
    """Save a random transformers.Wav2Vec2ForCTC with its processor into `folder`."""
    import transformers

    torch.manual_seed(seed)
    config = transformers.Wav2Vec2Config(**{**SMALL, **FAMILIES[family], **overrides})
    model = transformers.Wav2Vec2ForCTC(config).eval()
    with torch.no_grad():  # a larger head makes greedy paths with many different characters
        model.lm_head.weight.mul_(20.0)
    model.save_pretrained(folder)
    (folder / "vocab.json").write_text(json.dumps(VOCAB))
    tokenizer = transformers.Wav2Vec2CTCTokenizer(str(folder / "vocab.json"))
    feature_extractor = transformers.Wav2Vec2FeatureExtractor(
        do_normalize=True, return_attention_mask=family == "lv60")
    transformers.Wav2Vec2Processor(feature_extractor=feature_extractor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """{"base": folder, "lv60": folder}: small random checkpoints of both families."""
    root = tmp_path_factory.mktemp("checkpoints")
    return {family: make_hf_checkpoint(root / family, family) for family in FAMILIES}


@pytest.fixture(scope="session")
def speechlike() -> np.ndarray:
    """3.3 s of 16 kHz audio with a voice-like structure (harmonics, syllable envelope, noise)."""
    rng = np.random.default_rng(0)
    t = np.arange(int(3.3 * 16000)) / 16000
    pitch = 120 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / 16000
    voice = sum(np.sin(k * phase) / k for k in range(1, 8))
    envelope = np.clip(np.sin(2 * np.pi * 3.1 * t), 0, None)
    audio = 0.3 * voice * envelope + 0.01 * rng.standard_normal(len(t))
    return audio.astype(np.float32)


def write_audio(path: Path, audio: np.ndarray, rate: int, channels: int = 1, **kwargs) -> Path:
    """Write mono 16 kHz `audio` resampled to `rate` and copied to `channels` channels."""
    import soxr

    data = soxr.resample(audio, 16000, rate) if rate != 16000 else audio
    if channels > 1:
        data = np.stack([data * (1.0 - 0.1 * c) for c in range(channels)], axis=1)
    soundfile.write(str(path), data, rate, **kwargs)
    return path


def phone(kind: int, samples: int, rng: np.random.Generator) -> np.ndarray:
    """One of six synthetic "phones": harmonic vowels (even kinds) with two formants, or bands
    of noise (odd kinds), peak amplitude 0.5."""
    t = np.arange(samples) / 16000
    if kind % 2 == 0:
        f0, f1, f2 = 100 + 15 * kind, 300 + 120 * kind, 2400 - 250 * kind
        x = sum(np.sin(2 * np.pi * h * f0 * t) * (np.exp(-((h * f0 - f1) / 150) ** 2)
                                                   + np.exp(-((h * f0 - f2) / 200) ** 2) + 0.05)
                for h in range(1, int(4000 / f0)))
    else:
        spectrum = np.fft.rfft(rng.standard_normal(samples))
        spectrum *= np.exp(-((np.fft.rfftfreq(samples, 1 / 16000) - (1500 + 900 * kind)) / 500) ** 2)
        x = np.fft.irfft(spectrum, samples)
    return 0.5 * x / (np.abs(x).max() + 1e-9)


def write_phone_corpus(folder: Path, count: int = 4, seconds: float = 2.0, seed: int = 0) -> Path:
    """Clips of synthetic phones that always follow each other in the same cycle, with random
    durations: structure that a small model can learn to predict from context within a few
    hundred steps."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    samples = int(seconds * 16000)
    for i in range(count):
        kind, parts = int(rng.integers(6)), []
        while sum(map(len, parts)) < samples:
            parts.append(phone(kind, int(rng.uniform(0.08, 0.16) * 16000), rng))
            kind = (kind + 1) % 6
        audio = np.concatenate(parts)[:samples] + 0.003 * rng.standard_normal(samples)
        soundfile.write(str(folder / f"clip{i}.wav"), audio.astype(np.float32), 16000)
    return folder


def write_spelled_corpus(folder: Path, count: int = 8, seed: int = 0) -> Path:
    """Labelled clips for fine-tuning: each letter A-F is one synthetic phone, words are separated
    by short silences, and the transcript spells the phones ("FACE BAD"). Returns a TSV manifest."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = ["audio\ttext"]
    for i in range(count):
        words = ["".join("ABCDEF"[k] for k in rng.integers(6, size=rng.integers(2, 5))) for _ in range(3)]
        parts = [np.zeros(1600)]
        for word in words:
            for letter in word:
                parts.append(phone("ABCDEF".index(letter), int(rng.uniform(0.08, 0.14) * 16000), rng))
            parts.append(np.zeros(int(rng.uniform(0.08, 0.15) * 16000)))
        audio = np.concatenate(parts)
        audio = audio + 0.003 * rng.standard_normal(len(audio))
        soundfile.write(str(folder / f"utt{i}.wav"), audio.astype(np.float32), 16000)
        rows.append(f"utt{i}.wav\t{' '.join(words)}")
    manifest = folder / "train.tsv"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest


def kill_after_first_checkpoint_then_resume(arguments: list[str], out: Path, max_steps: int) -> None:
    """Run `wav2vec2 ARGUMENTS --out OUT`, SIGKILL it as soon as its first checkpoint appears,
    check it died mid-way, then finish the run with --resume."""
    command = [str(Path(sys.executable).parent / "wav2vec2"), *map(str, arguments), "--out", str(out)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not list((out / "checkpoints").glob("step-*.pt")) and time.time() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    saved = sorted((out / "checkpoints").glob("step-*.pt"))
    assert saved and int(saved[-1].stem.split("-")[1]) < max_steps, "the run was not killed mid-way"
    resumed = subprocess.run([*command, "--resume"], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr


def torchrun_two_processes(arguments: list[str], out: Path, port: int) -> Path:
    """Run `torchrun --nproc-per-node 2 -m wav2vec2 ARGUMENTS --out OUT` on one thread per process;
    return the folder of the run that succeeded.

    A worker of torch 2.13's gloo backend was seen to abort once in CI ("terminate called without
    an active exception", SIGABRT), never in 40 runs here: such a run is run once more, in a new
    folder; a second failure, or any other, fails the test with both outputs."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    failures = []
    for folder in (out, out.with_name(out.name + "-again")):
        result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                                 "--master-port", str(port), "-m", "wav2vec2", *map(str, arguments),
                                 "--out", str(folder)], capture_output=True, text=True, timeout=600, env=environment)
        if result.returncode == 0:
            return folder
        failures.append(result.stderr[-3000:])
        if "SIGABRT" not in result.stderr:
            break
    raise AssertionError("\n\n---- the run again ----\n".join(failures))
