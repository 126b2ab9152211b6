"""Synthesise a deterministic English speech corpus with the TTS engines of Debian.

    .venv/bin/python recipes/synthetic/make_corpus.py --out data/synthetic --seed 0

The sentences are the usage examples of WordNet 3.0, spoken by espeak-ng, flite and festival
voices, augmented (speed, reverberation, noise, gain) and written as 16 kHz 16-bit FLAC with
manifests for pretraining, fine-tuning and evaluation; on request (`--splits definitions`) also
WordNet's definitions, as training speech of more text. The same --seed gives the same bytes
whatever --jobs is. See README.md beside this file.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import math
import multiprocessing
import multiprocessing.pool
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
import soxr

from wav2vec2.manifest import Entry, write_manifest
from wav2vec2.vocab import normalize_text

RATE = 16000
WORDNET = Path("/usr/share/wordnet")
FESTIVAL_VOICES = Path("/usr/share/festival/voices")
CHUNK = 100  # most utterances per worker task: enough to amortise a festival start-up
SECONDS_PER_UTTERANCE = 2.2  # a low guess of the mean, to reserve enough sentences for a split
TTS_TIMEOUT = 120  # seconds; a hung engine counts as a failure


@dataclass(frozen=True)
class Voice:
    engine: str  # "espeak-ng", "flite" or "festival"
    name: str  # espeak accent, flite voice or festival voice
    variant: str = ""  # espeak-ng voice variant (m1, f2, klatt, ...)

    def __str__(self) -> str:
        return f"{self.engine}:{self.name}" + (f"+{self.variant}" if self.variant else "")


def _espeak(accents: list[str], variants: list[str]) -> list[Voice]:
    return [Voice("espeak-ng", accent, variant) for accent in accents for variant in variants]


# Voices of the unseen-voice test set, and of nothing else: their accent, variants, flite and
# festival voices are used nowhere in the other splits.
HELD_OUT_VOICES = {
    "espeak-ng": _espeak(["en-gb-x-gbcwmd"], ["m4", "f4", "klatt4"]),
    "flite": [Voice("flite", "rms")],
    "festival": [Voice("festival", "ked_diphone")],
}
SEEN_VOICES = {
    "espeak-ng": _espeak(["en-us", "en-gb", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-rp", "en-029"],
                         ["m1", "m2", "m3", "m5", "m6", "m7", "f1", "f2", "f3", "f5", "klatt", "klatt2",
                          "klatt3", "Andy", "Annie", "david", "edward", "linda", "steph", "max", "paul"]),
    "flite": [Voice("flite", name) for name in ("kal", "kal16", "awb", "slt")],
    "festival": [Voice("festival", name) for name in ("kal_diphone", "cmu_us_slt_arctic_hts")],
}
# Shares of the engines: varied voices, while the slow festival voices stay a small part.
ENGINE_SHARES = {"espeak-ng": 0.6, "flite": 0.3, "festival": 0.1}

# What each check needs, and the Debian package that provides it.
REQUIREMENTS = [
    (lambda: shutil.which("espeak-ng"), "espeak-ng"),
    (lambda: shutil.which("flite"), "flite"),
    (lambda: shutil.which("festival"), "festival"),
    (lambda: (FESTIVAL_VOICES / "english/kal_diphone").is_dir(), "festvox-kallpc16k"),
    (lambda: (FESTIVAL_VOICES / "english/ked_diphone").is_dir(), "festvox-kdlpc16k"),
    (lambda: (FESTIVAL_VOICES / "us/cmu_us_slt_arctic_hts").is_dir(), "festvox-us-slt-hts"),
    (lambda: (WORDNET / "data.noun").is_file(), "wordnet-base"),
]


@dataclass(frozen=True)
class Split:
    name: str
    voices: dict[str, list[Voice]]
    sentences: int  # sentences reserved for it, in shuffled order
    utterances: int = 0  # it is full at this many utterances...
    seconds: float = 0.0  # ...or at this much audio

    @property
    def chunk(self) -> int:
        """Utterances per worker task: about an eighth of the split, so that small corpora do not
        synthesise whole chunks only to drop them (and never dependent on --jobs)."""
        expected = self.utterances or self.seconds / SECONDS_PER_UTTERANCE
        return min(CHUNK, max(8, math.ceil(expected / 8)))

    def full(self, count: int, seconds: float) -> bool:
        return count >= self.utterances if self.utterances else seconds >= self.seconds


@dataclass(frozen=True)
class Sentence:
    text: str  # what the TTS engine reads
    transcript: str  # upper-case letters, apostrophes and single spaces


@dataclass
class Settings:
    """Everything drawn for one utterance, written to metadata.tsv (None: not applied)."""
    voice: Voice
    speed: int | None  # espeak-ng words per minute
    pitch: int | None  # espeak-ng pitch (0-99)
    lead: float  # seconds of silence kept before the speech
    trail: float  # ... and after it
    tempo: float  # speed perturbation factor (1.0: none)
    rt60: float | None  # reverberation time in seconds
    drr: float | None  # direct-to-reverberant ratio in dB
    noise: str | None  # "white", "pink" or "brown"
    snr: int | None  # dB
    peak: float  # dBFS


@dataclass
class Result:
    """What a worker gives back for one utterance."""
    uid: str  # "SPLIT/NNNNNN", also the audio path under audio/
    settings: Settings
    flac: bytes | None  # None when the TTS engine failed on the sentence
    seconds: float


@dataclass
class Utterance:
    """An utterance kept in a split (its audio already written)."""
    uid: str
    sentence: Sentence
    settings: Settings
    seconds: float


# ---------------------------------------------------------------------------------------------
# Text


def wordnet_glosses() -> Iterator[str]:
    """The gloss of every WordNet synset, nouns, verbs, adjectives and adverbs in turn: its
    definitions and quoted usage examples, separated by semicolons."""
    for part in ("noun", "verb", "adj", "adv"):
        for line in (WORDNET / f"data.{part}").read_text(encoding="latin-1").splitlines():
            if not line.startswith("  "):  # the licence at the top of each file
                yield line.partition(" | ")[2]


def gloss_definitions(gloss: str) -> list[str]:
    """A gloss's definitions: split at semicolons, without its quoted examples and parenthesised remarks."""
    return [" ".join(d.split()) for d in re.sub(r"\([^)]*\)", " ", re.sub(r'"[^"]*"', ";", gloss)).split(";")]


ALLOWED = re.compile(r"[A-Za-z][A-Za-z ',-]*[A-Za-z'][.!?]?")
ACRONYM = re.compile(r"\b[A-Z]{2,}\b")  # TTS engines would spell it out
QUOTED = re.compile(r"(^|\s)'")  # 'single quotes', which the transcript would keep as apostrophes


def readable_transcript(text: str) -> str | None:
    """The transcript of a text the TTS engines read as written (at least four words, letters and
    plain punctuation, no acronyms or quotes), or None for any other text."""
    if len(text.split()) < 4 or not ALLOWED.fullmatch(text) or ACRONYM.search(text) or QUOTED.search(text):
        return None
    transcript = normalize_text(text)
    return transcript if re.fullmatch(r"[A-Z']+( [A-Z']+)*", transcript) else None


def read_sentences() -> list[Sentence]:
    """The usable WordNet usage examples, one per distinct transcript, sorted by transcript."""
    by_transcript: dict[str, str] = {}
    for gloss in wordnet_glosses():
        for example in re.findall(r'"([^"]*)"', gloss):
            example = " ".join(example.split())
            transcript = readable_transcript(example)
            if transcript is not None:
                by_transcript.setdefault(transcript, " ".join(example.replace("-", " ").split()))
    return [Sentence(text, transcript) for transcript, text in sorted(by_transcript.items())]


def read_definitions() -> list[Sentence]:
    """WordNet's definitions that read as the examples do (the same rules), one per distinct
    transcript, sorted by transcript, without any that is also an example's transcript: speech
    of more text of the same vocabulary, from which no scored sentence can come."""
    examples = {sentence.transcript for sentence in read_sentences()}
    by_transcript: dict[str, str] = {}
    for gloss in wordnet_glosses():
        for definition in gloss_definitions(gloss):
            transcript = readable_transcript(definition)
            if transcript is not None and transcript not in examples:
                by_transcript.setdefault(transcript, " ".join(definition.replace("-", " ").split()))
    return [Sentence(text, transcript) for transcript, text in sorted(by_transcript.items())]


def wordnet_licence() -> str:
    """The WordNet 3.0 licence, as printed at the top of its data files (it must accompany copies)."""
    lines = []
    for line in (WORDNET / "data.noun").read_text(encoding="latin-1").splitlines():
        if not line.startswith("  "):
            break
        lines.append(re.sub(r"^ +\d+ ?", "", line).rstrip())
    return "\n".join(lines).strip() + "\n"


# ---------------------------------------------------------------------------------------------
# Synthesis and augmentation (run in the worker processes)


def utterance_rng(seed: int, uid: str, voicing: int = 0) -> np.random.Generator:
    """A generator that depends only on the seed, the utterance and the voicing, not on which
    worker runs it."""
    digest = hashlib.sha256((f"{seed}/{uid}" + (f"/voicing-{voicing}" if voicing else "")).encode()).digest()
    return np.random.default_rng([int.from_bytes(digest[i:i + 4], "little") for i in range(0, 16, 4)])


def draw_settings(rng: np.random.Generator, voices: dict[str, list[Voice]]) -> Settings:
    """The voice, espeak-ng speed and pitch, and augmentation of one utterance, drawn from its own
    generator (so that its draws do not depend on the other utterances of its chunk)."""
    engines = list(ENGINE_SHARES)
    engine = engines[rng.choice(len(engines), p=list(ENGINE_SHARES.values()))]
    voice = voices[engine][rng.integers(len(voices[engine]))]
    espeak = engine == "espeak-ng"
    speed = int(rng.integers(130, 191)) if espeak else None
    pitch = int(rng.integers(30, 71)) if espeak else None
    lead, trail = (round(float(x), 3) for x in rng.uniform(0.1, 0.2, size=2))
    tempo = round(float(rng.uniform(0.9, 1.1)), 3) if rng.random() < 0.5 else 1.0
    reverberate = rng.random() < 0.3
    rt60 = round(float(rng.uniform(0.15, 0.5)), 3) if reverberate else None
    drr = round(float(rng.uniform(0.0, 10.0)), 1) if reverberate else None
    noisy = rng.random() < 0.5
    noise = str(rng.choice(["white", "pink", "brown"])) if noisy else None
    snr = int(rng.choice([30, 20, 15])) if noisy else None
    peak = round(float(rng.uniform(-20.0, -1.0)), 1)
    return Settings(voice, speed, pitch, lead, trail, tempo, rt60, drr, noise, snr, peak)


def synthesise(jobs: list[tuple[Settings, str, Path]]) -> None:
    """Speak each (settings, text, wav path); a path left missing means the engine failed.

    espeak-ng and flite start in milliseconds and run once per sentence; festival takes most of a
    second to start, so all its sentences of a chunk go through one process, each wrapped in
    unwind-protect so that an error skips only that sentence.
    """
    script = []
    for settings, text, path in sorted(jobs, key=lambda job: str(job[0].voice)):
        voice = settings.voice
        if voice.engine == "espeak-ng":
            command = ["espeak-ng", "-v", f"{voice.name}+{voice.variant}", "-s", str(settings.speed),
                       "-p", str(settings.pitch), "-w", str(path), text]
        elif voice.engine == "flite":
            command = ["flite", "-voice", voice.name, "-t", text, "-o", str(path)]
        else:
            if not script or script[-1][0] != voice.name:
                script.append((voice.name, []))
            quoted = text.replace("\\", "\\\\").replace('"', '\\"')
            script[-1][1].append(f'(unwind-protect (utt.save.wave (utt.synth (Utterance Text "{quoted}")) '
                                 f'"{path}" \'riff) nil)')
            continue
        _run(command)
    if script:
        scheme = "".join(f"(voice_{name})\n" + "\n".join(lines) + "\n" for name, lines in script)
        scheme_path = jobs[0][2].parent / "festival.scm"
        scheme_path.write_text(scheme, encoding="utf-8")
        _run(["festival", "--batch", str(scheme_path)])


def _run(command: list[str]) -> None:
    """Run a TTS engine, killed after TTS_TIMEOUT seconds (by coreutils' timeout: Python's own
    timeout polls, which costs tens of milliseconds on every sentence)."""
    subprocess.run(["timeout", str(TTS_TIMEOUT), *command], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, check=False)


def speech_bounds(audio: np.ndarray, rate: int) -> tuple[int, int] | None:
    """First and last sample of the 10 ms frames within 50 dB of the loudest; None for silence."""
    frame = rate // 100
    frames = len(audio) // frame
    if frames == 0:
        return None
    energy = (audio[:frames * frame].reshape(frames, frame) ** 2).mean(axis=1)
    if energy.max() <= 1e-10:
        return None
    active = np.flatnonzero(energy >= energy.max() * 1e-5)
    return int(active[0]) * frame, (int(active[-1]) + 1) * frame


def coloured_noise(kind: str, length: int, rng: np.random.Generator) -> np.ndarray:
    """White, pink (power ~ 1/f) or brown (power ~ 1/f^2) noise, shaped in the frequency domain."""
    white = rng.standard_normal(length)
    if kind == "white":
        return white
    spectrum = np.fft.rfft(white)
    frequencies = np.fft.rfftfreq(length, 1 / RATE)
    audible = frequencies >= 20.0  # below 20 Hz brown noise would be all drift
    spectrum[~audible] = 0.0
    spectrum[audible] /= frequencies[audible] ** (0.5 if kind == "pink" else 1.0)
    return np.fft.irfft(spectrum, length)


def reverberate(audio: np.ndarray, rt60: float, drr: float, rng: np.random.Generator) -> np.ndarray:
    """Convolve with a synthetic room: the direct path, then noise decaying by 60 dB in rt60 seconds."""
    length = int(rt60 * RATE)
    tail = rng.standard_normal(length) * 10.0 ** (-3.0 * np.arange(length) / length)
    tail *= np.sqrt(10.0 ** (-drr / 10.0) / np.sum(tail ** 2))
    response = np.concatenate([[1.0], tail])
    size = 1 << (len(audio) + len(response) - 2).bit_length()
    wet = np.fft.irfft(np.fft.rfft(audio, size) * np.fft.rfft(response, size), size)[:len(audio)]
    return wet * (np.abs(audio).max() / np.abs(wet).max())


def augment(audio: np.ndarray, rate: int, settings: Settings, rng: np.random.Generator) -> np.ndarray | None:
    """The engine's output as 16 kHz training audio: trimmed, perturbed, reverberated, noisy, scaled."""
    bounds = speech_bounds(audio, rate)
    if bounds is None:
        return None
    start, end = bounds
    padded = np.concatenate([np.zeros(rate), audio, np.zeros(rate)])  # silence to keep where there is too little
    audio = padded[rate + start - round(settings.lead * rate):rate + end + round(settings.trail * rate)]
    audio = soxr.resample(audio, rate, RATE / settings.tempo)  # played back at 16 kHz: tempo times faster
    if settings.rt60 is not None and settings.drr is not None:
        audio = reverberate(audio, settings.rt60, settings.drr, rng)
    if settings.noise is not None and settings.snr is not None:
        noise = coloured_noise(settings.noise, len(audio), rng)
        noise *= np.sqrt(np.mean(audio ** 2) / np.mean(noise ** 2) / 10.0 ** (settings.snr / 10.0))
        audio = audio + noise
    return audio * (10.0 ** (settings.peak / 20.0) / np.abs(audio).max())


def synthesise_chunk(seed: int, voicing: int, voices: dict[str, list[Voice]], chunk: list[tuple[str, Sentence]]
                     ) -> list[Result]:
    """Speak and augment a chunk of (utterance id, sentence); the same bytes whichever process runs it."""
    rngs = {uid: utterance_rng(seed, uid, voicing) for uid, _ in chunk}
    settings = {uid: draw_settings(rngs[uid], voices) for uid, _ in chunk}
    results = []
    with tempfile.TemporaryDirectory(prefix="make_corpus.") as folder:
        paths = {uid: Path(folder) / f"{i}.wav" for i, (uid, _) in enumerate(chunk)}
        synthesise([(settings[uid], sentence.text, paths[uid]) for uid, sentence in chunk])
        for uid, _ in chunk:
            audio = None
            try:
                raw, rate = soundfile.read(str(paths[uid]), dtype="float64", always_2d=True)
                audio = augment(raw.mean(axis=1), rate, settings[uid], rngs[uid])
            except (OSError, RuntimeError):  # no file, or not a readable one: the engine failed
                pass
            if audio is None:
                results.append(Result(uid, settings[uid], None, 0.0))
                continue
            buffer = io.BytesIO()
            soundfile.write(buffer, audio, RATE, format="FLAC", subtype="PCM_16")
            results.append(Result(uid, settings[uid], buffer.getvalue(), len(audio) / RATE))
    return results


# ---------------------------------------------------------------------------------------------
# Splits (the main process)


def plan_splits(scale: float, pretrain_hours: float, available: int) -> list[Split]:
    """The splits in the order they take sentences from the shuffled list.

    Count-based splits reserve 10% more sentences than they need (for engine failures), the
    hour-based ones enough for SECONDS_PER_UTTERANCE; pretraining takes what is left.
    """
    def counted(name: str, voices: dict[str, list[Voice]], count: int) -> Split:
        count = max(1, round(count * scale))
        return Split(name, voices, count + count // 10 + 5, utterances=count)

    def timed(name: str, seconds: float, sentences: int | None = None) -> Split:
        seconds *= scale
        reserve = int(seconds / SECONDS_PER_UTTERANCE) + 10
        return Split(name, SEEN_VOICES, sentences if sentences is not None else reserve, seconds=seconds)

    splits = [counted("test_voices", HELD_OUT_VOICES, 400), counted("test", SEEN_VOICES, 400),
              counted("dev", SEEN_VOICES, 200), timed("train_1h", 3600.0)]
    left = available - sum(split.sentences for split in splits)
    return splits + [timed("pretrain", pretrain_hours * 3600.0, left)]


def fill_split(pool: multiprocessing.pool.Pool, split: Split, sentences: list[Sentence], seed: int, voicing: int,
               jobs: int, folder: Path, failures: Counter) -> list[Utterance]:
    """Synthesise the split's sentences in order until it is full, writing the audio of those kept.

    The utterances kept are a prefix of the same ordered list whatever the number of workers:
    at most jobs + 1 chunks are in flight, and the results past the point where the split is
    full are dropped.
    """
    numbered = [(f"{split.name}/{index:06d}", sentence) for index, sentence in enumerate(sentences)]
    chunks = deque(numbered[start:start + split.chunk] for start in range(0, len(numbered), split.chunk))
    pending: deque = deque()
    kept: list[Utterance] = []
    seconds = 0.0
    target = f"{split.utterances} utterances" if split.utterances else f"{split.seconds / 3600:.2f} h"
    started = time.monotonic()
    while not split.full(len(kept), seconds):
        while chunks and len(pending) <= jobs:
            chunk = chunks.popleft()
            pending.append((chunk, pool.apply_async(synthesise_chunk, (seed, voicing, split.voices, chunk))))
        if not pending:
            raise SystemExit(f"error: {split.name}: ran out of sentences after {len(kept)} utterances "
                             f"({seconds / 3600:.2f} h); ask for fewer hours")
        chunk, task = pending.popleft()
        for result, (_, sentence) in zip(task.get(), chunk):
            if split.full(len(kept), seconds):
                break
            if result.flac is None:
                failures[result.settings.voice.engine] += 1
                continue
            path = folder / "audio" / f"{result.uid}.flac"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(result.flac)
            kept.append(Utterance(result.uid, sentence, result.settings, result.seconds))
            seconds += result.seconds
        print(f"{split.name}: {len(kept)} utterances, {seconds / 3600:.2f} h (target {target}), "
              f"{time.monotonic() - started:.0f} s", flush=True)
    return kept


def write_manifests(folder: Path, splits: dict[str, list[Utterance]], ten_minutes: float) -> dict[str, list[Entry]]:
    """The manifests, metadata.tsv, the WordNet licence, and checksums.sha256 of every file.

    train_10min is the first `ten_minutes` seconds of train_1h (whose order is random already).
    """
    manifests = {name: [Entry(folder / "audio" / f"{u.uid}.flac", u.sentence.transcript, u.seconds)
                        for u in utterances] for name, utterances in splits.items()}
    seconds = 0.0
    if "train_1h" in manifests:
        manifests["train_10min"] = []
    for entry in manifests.get("train_1h", []):
        if seconds >= ten_minutes:
            break
        manifests["train_10min"].append(entry)
        seconds += entry.duration
    for name, entries in manifests.items():
        write_manifest(folder / f"{name}.tsv", entries)
    metadata = ["id\tsplit\tengine\tvoice\tvariant\tspeed_wpm\tpitch\ttempo\trt60_s\tdrr_db\tnoise\tsnr_db"
                "\tpeak_dbfs\ttts_text"]
    for name, utterances in splits.items():
        for u in utterances:
            s = u.settings
            fields = [u.uid, name, s.voice.engine, s.voice.name, s.voice.variant, s.speed, s.pitch, s.tempo,
                      s.rt60, s.drr, s.noise, s.snr, s.peak, u.sentence.text]
            metadata.append("\t".join("" if field is None else str(field) for field in fields))
    (folder / "metadata.tsv").write_text("\n".join(metadata) + "\n", encoding="utf-8")
    (folder / "LICENSE-WordNet.txt").write_text(wordnet_licence(), encoding="utf-8")
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    (folder / "checksums.sha256").write_text(
        "".join(f"{hashlib.sha256((folder / f).read_bytes()).hexdigest()}  {f}\n" for f in files), encoding="utf-8")
    return manifests


def report(manifests: dict[str, list[Entry]], splits: dict[str, list[Utterance]], failures: Counter) -> None:
    """Hours and utterances per split, utterances per engine, and the TTS failures."""
    print("\nsplit          utterances   hours")
    for name, entries in manifests.items():
        print(f"{name:<14} {len(entries):>10} {sum(e.duration for e in entries) / 3600:7.3f}")
    engines = Counter(u.settings.voice.engine for utterances in splits.values() for u in utterances)
    print("utterances per engine: " + ", ".join(f"{engine} {engines[engine]}" for engine in ENGINE_SHARES)
          + "; TTS failures (skipped): "
          + (", ".join(f"{engine} {n}" for engine, n in sorted(failures.items())) or "none"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="corpus folder to create (must not exist or be empty)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sentence shuffle and every random draw")
    parser.add_argument("--pretrain-hours", type=float, default=10.0, help="hours of pretraining audio (default 10)")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiplies every split's size (0.01: a tiny corpus for tests)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="worker processes")
    parser.add_argument("--splits", nargs="+",
                        choices=("test_voices", "test", "dev", "train_1h", "pretrain", "definitions"),
                        help="build only these splits: the same utterances, byte for byte, as in the whole corpus "
                             "(definitions: WordNet's definitions, built only when named here)")
    parser.add_argument("--definitions-hours", type=float, default=20.0,
                        help="hours of the definitions split (default 20)")
    parser.add_argument("--voicing", type=int, default=0,
                        help="N > 0: the training splits' sentences spoken again with voices and augmentation drawn "
                             "anew (needs --splits with pretrain, train_1h or definitions only; the held-out "
                             "sentences stay held out)")
    args = parser.parse_args(argv)
    missing = [package for check, package in REQUIREMENTS if not check()]
    if missing:
        print(f"error: missing TTS engines or data; install the Debian packages: apt-get install {' '.join(missing)}",
              file=sys.stderr)
        return 1
    if args.out.exists() and (not args.out.is_dir() or any(args.out.iterdir())):
        print(f"error: {args.out} already exists and is not an empty folder", file=sys.stderr)
        return 1
    training_only = bool(args.splits) and set(args.splits) <= {"pretrain", "train_1h", "definitions"}
    if args.voicing < 0 or (args.voicing > 0 and not training_only):
        print("error: --voicing N (N > 0) needs --splits with pretrain, train_1h or definitions only", file=sys.stderr)
        return 1
    if args.scale <= 0 or args.pretrain_hours <= 0 or args.definitions_hours <= 0 or args.jobs < 1:
        print("error: --scale, --pretrain-hours and --definitions-hours must be positive, --jobs at least 1",
              file=sys.stderr)
        return 1
    started = time.monotonic()
    sentences = read_sentences()
    np.random.default_rng(args.seed).shuffle(sentences)
    plan = plan_splits(args.scale, args.pretrain_hours, len(sentences))
    definitions = []
    if args.splits and "definitions" in args.splits:  # a text of their own: the examples' shuffle stays as it was
        definitions = read_definitions()
        np.random.default_rng(args.seed).shuffle(definitions)
        seconds = args.definitions_hours * 3600 * args.scale
        plan.append(Split("definitions", SEEN_VOICES, len(definitions), seconds=seconds))
    print(f"{len(sentences)} WordNet sentences; reserved: "
          + ", ".join(f"{split.name} {split.sentences}" for split in plan), flush=True)
    # Built beside the destination and renamed at the end, so that a corpus folder is always complete.
    partial = args.out.with_name(args.out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    splits: dict[str, list[Utterance]] = {}
    failures: Counter = Counter()
    offset = 0
    with multiprocessing.Pool(args.jobs) as pool:
        for split in plan:
            if split.name == "definitions":
                chosen = definitions
            else:
                chosen, offset = sentences[offset:offset + split.sentences], offset + split.sentences
            if args.splits is None or split.name in args.splits:
                splits[split.name] = fill_split(pool, split, chosen, args.seed, args.voicing, args.jobs, partial,
                                                failures)
        pool.close()  # let the chunks dropped in flight finish, rather than kill them mid-synthesis
        pool.join()  # (which would leave their temporary folders behind)
    manifests = write_manifests(partial, splits, 600.0 * args.scale)
    if args.out.exists():
        args.out.rmdir()
    partial.rename(args.out)
    report(manifests, splits, failures)
    print(f"corpus in {args.out} ({time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
