"""The streaming recogniser against the offline transcription of the same phrases.

Speech is synthesised with espeak-ng, one sentence at a time, and laid out with silences of known
length, so the true span of every phrase is known. A recogniser's final must be exactly what
`transcribe` gives offline for the same stretch of audio (same model, same chunking), whatever the
sizes of the blocks it was fed, and its words must lie inside the phrase that was spoken.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile
import soxr
import torch

import wav2vec2
from wav2vec2.errors import AudioError
from wav2vec2.streaming import VAD_WINDOW, Event, SileroVAD, StreamingConfig, StreamingRecognizer, choose_cut
from wav2vec2.transcribe import transcribe

RATE = 16000
SENTENCES = ("the quick brown fox jumps over the lazy dog", "speech recognition on a small computer",
             "seven silver birds flew home at night")
# Where a word may lie beyond the true span: the padding kept around speech, plus two VAD windows
# by which Silero may hear speech early or late.
TOLERANCE = StreamingConfig.padding + 2 * VAD_WINDOW / RATE


def need(tool: str) -> None:
    """Skip without a system tool, except in CI, where .ci/run installs it and the test must run."""
    if shutil.which(tool) is None:
        if os.environ.get("CI"):
            pytest.fail(f"{tool} is not installed (.ci/run should install it)")
        pytest.skip(f"{tool} is not installed")


@dataclass
class Speech:
    audio: np.ndarray  # 16 kHz mono float32
    spans: list[tuple[int, int]]  # true [start, end) of each phrase, in samples

    def seconds(self, index: int) -> tuple[float, float]:
        return self.spans[index][0] / RATE, self.spans[index][1] / RATE


def espeak(text: str, folder: Path) -> np.ndarray:
    """One sentence as 16 kHz audio, trimmed to where the voice is."""
    path = folder / f"{abs(hash(text))}.wav"
    subprocess.run(["espeak-ng", "-w", str(path), text], check=True, capture_output=True)
    data, rate = soundfile.read(str(path), dtype="float32")
    audio = soxr.resample(data, rate, RATE, quality="HQ")
    voiced = np.flatnonzero(np.abs(audio) > 1e-3)
    return audio[voiced[0]:voiced[-1] + 1]


def synthesise(folder: Path, sentences, gap: float, lead: float = 0.5, tail: float = 1.0) -> Speech:
    """The sentences one after the other, `gap` seconds of silence between them."""
    need("espeak-ng")
    parts, spans, position = [np.zeros(int(lead * RATE), np.float32)], [], int(lead * RATE)
    for i, sentence in enumerate(sentences):
        voice = espeak(sentence, folder)
        silence = np.zeros(int((gap if i < len(sentences) - 1 else tail) * RATE), np.float32)
        spans.append((position, position + len(voice)))
        parts += [voice, silence]
        position += len(voice) + len(silence)
    return Speech(np.concatenate(parts), spans)


@pytest.fixture(scope="session")
def speech(tmp_path_factory) -> Speech:
    """Three phrases, a second of silence between them."""
    return synthesise(tmp_path_factory.mktemp("speech"), SENTENCES, gap=1.0)


@pytest.fixture(scope="session")
def models(checkpoints) -> dict:
    """The random checkpoints of both families, nudged to emit word delimiters on about a fifth of
    the frames (as trained models do between words), so that phrases have many words."""
    models = {family: wav2vec2.load_model(folder) for family, folder in checkpoints.items()}
    for model in models.values():
        with torch.no_grad():
            model.lm_head.bias[model.vocab.ids[model.vocab.word_delimiter]] += 3.0
    return models


@pytest.fixture(autouse=True)
def one_thread():
    """The test models are tiny: one thread is much faster than two on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def stream(recognizer: StreamingRecognizer, audio: np.ndarray, seed: int = 0, largest: int = 6000,
           watch=None) -> list[Event]:
    """Feed `audio` in blocks of random sizes (1 to `largest` samples) and flush."""
    rng = np.random.default_rng(seed)
    events, position = [], 0
    while position < len(audio):
        size = int(rng.integers(1, largest + 1))
        events += recognizer.feed(audio[position:position + size])
        position += size
        if watch:
            watch(recognizer)
    return events + recognizer.flush()


def offline(model, audio: np.ndarray, event: Event, config: StreamingConfig):
    """The offline transcription of the stretch of audio a final covers."""
    start, end = round(event.start * RATE), round(event.end * RATE)
    chunk_length, stride = config.chunking(model.config.samples_per_frame)
    return transcribe(model, audio[start:end], chunk_length=chunk_length, stride=stride)


def assert_same_words(event: Event, expected) -> None:
    assert event.text == expected.text
    assert [w.text for w in event.words] == [w.text for w in expected.words]
    for word, reference in zip(event.words, expected.words):  # offline times count from the phrase
        assert word.start == pytest.approx(reference.start + event.start, abs=2e-3)
        assert word.end == pytest.approx(reference.end + event.start, abs=2e-3)
        assert word.confidence == pytest.approx(reference.confidence, abs=1e-3)


def inside(speech: Speech, index: int, start: float, end: float) -> bool:
    a, b = speech.seconds(index)
    return a - TOLERANCE <= start <= end <= b + TOLERANCE


@pytest.mark.parametrize("family, rate, channels", [("base", 16000, 1), ("lv60", 44100, 2)])
def test_finals_equal_the_offline_transcription_of_the_same_phrases(models, speech, family, rate, channels):
    model, config = models[family], StreamingConfig()
    if rate == RATE:
        fed, heard = speech.audio, speech.audio
    else:  # a stereo device at 44.1 kHz; offline, the same signal is mixed and resampled in one go
        left = soxr.resample(speech.audio, RATE, rate)
        fed = np.stack([left, 0.8 * left], axis=1)
        heard = soxr.resample(fed.mean(axis=1), rate, RATE, quality="HQ")
    events = stream(StreamingRecognizer(model, config, sample_rate=rate), fed)
    finals = [e for e in events if e.type == "final"]
    assert len(finals) == len(speech.spans)  # one final per phrase: no phrase split, merged or lost
    for index, final in enumerate(finals):
        assert not final.continued and final.text
        assert_same_words(final, offline(model, heard, final, config))
        assert all(inside(speech, index, w.start, w.end) for w in final.words)
        assert inside(speech, index, final.start + config.padding, final.end - config.padding)
    # the same stream in one block, or in blocks of other sizes, gives the same finals
    for seed, largest in ((1, 300), (2, len(fed))):
        again = stream(StreamingRecognizer(model, config, sample_rate=rate), fed, seed, largest)
        assert [e for e in again if e.type == "final"] == finals


def test_partials_refresh_every_half_second_of_speech(models, speech):
    events = stream(StreamingRecognizer(models["base"]), speech.audio)
    finals = [e for e in events if e.type == "final"]
    assert len(finals) == len(speech.spans)
    for index, final in enumerate(finals):
        a, b = speech.seconds(index)
        partials = [e for e in events if e.type == "partial" and e.start == final.start]
        ends = [a] + [p.end for p in partials]
        assert all(p.text for p in partials) and all(p.end < final.end for p in partials)
        assert max(np.diff(ends)) <= 0.5  # from the start of speech...
        assert ends[-1] >= b - 0.5  # ... to its end
    # every partial belongs to a phrase that gets a final: no phantom partials
    assert {e.start for e in events if e.type == "partial"} <= {f.start for f in finals}


def test_a_long_monologue_is_committed_in_pieces_without_losing_a_word(models, tmp_path):
    # sentences with pauses shorter than the pause that ends a phrase
    speech = synthesise(tmp_path, SENTENCES * 3, gap=0.12)
    model, config = models["base"], StreamingConfig(max_phrase=3.0)
    recognizer = StreamingRecognizer(model, config)
    held: list[int] = []
    events = stream(recognizer, speech.audio, watch=lambda r: held.append(r.buffered))
    finals = [e for e in events if e.type == "final"]
    pieces = sum(f.continued for f in finals)
    assert pieces >= 4
    # consecutive pieces of one phrase join at the cut; joined they are the offline transcription
    segments, current = [], []
    for final in finals:
        current.append(final)
        if not final.continued:
            segments.append(current)
            current = []
    for segment in segments:
        for before, after in zip(segment, segment[1:]):
            assert after.start == pytest.approx(before.end, abs=1e-9)
        for piece in segment[:-1]:
            assert piece.end - piece.start <= config.max_phrase + config.interval + 2 * config.context
        whole = Event("final", " ".join(p.text for p in segment if p.text), segment[0].start, segment[-1].end,
                      [w for p in segment for w in p.words])
        assert_same_words(whole, offline(model, speech.audio, whole, config))
    # committed text is never shown again: after a piece, partials start where it ended
    committed = 0.0
    for event in events:
        if event.type == "partial":
            assert event.start >= committed - 1e-9
        elif event.continued:
            committed = event.end
    # the audio held stays bounded: one model window, a pause and a block, however long the speech
    bound = (config.interval + 2 * config.context + config.pause + config.padding) * RATE + VAD_WINDOW + 6000
    assert max(held) <= bound


@pytest.mark.parametrize("kind", ["silence", "hiss", "loud noise", "clipped noise", "square wave",
                                  "clipped sine", "hum", "full-scale DC"])
def test_silence_noise_and_clipping_give_no_text(models, kind):
    rng = np.random.default_rng(0)
    t = np.arange(6 * RATE) / RATE
    audio = {
        "silence": np.zeros_like(t),
        "hiss": 0.01 * rng.standard_normal(len(t)),
        "loud noise": 0.5 * rng.standard_normal(len(t)).clip(-1, 1),
        "clipped noise": (5 * rng.standard_normal(len(t))).clip(-1, 1),
        "square wave": np.sign(np.sin(2 * np.pi * 200 * t)),
        "clipped sine": (3 * np.sin(2 * np.pi * 440 * t)).clip(-1, 1),
        "hum": 0.9 * np.sin(2 * np.pi * 50 * t),
        "full-scale DC": np.ones_like(t),
    }[kind].astype(np.float32)
    for family, model in models.items():  # the random models would turn any audio into characters
        assert stream(StreamingRecognizer(model), audio) == []


class ScriptedVAD:
    """A VAD that answers from a list: the phrase boundaries then follow from the rules alone."""

    def __init__(self, probabilities: list[float]):
        self.probabilities = iter(probabilities)

    def __call__(self, window: np.ndarray) -> float:
        assert len(window) == VAD_WINDOW
        return next(self.probabilities, 0.0)


def script(*runs: tuple[float, int]) -> list[float]:
    """[(probability, windows), ...] -> one probability per window."""
    return [p for p, n in runs for _ in range(n)]


W, PAD = VAD_WINDOW, round(StreamingConfig.padding * RATE)  # pause 0.3 s = 9.4 windows; min speech 7.8


@pytest.mark.parametrize("runs, length, spans", [
    # speech in windows 20-49: the phrase is that, padded by 0.1 s on each side
    ([(0, 20), (0.9, 30)], 100 * W, [(20 * W - PAD, 50 * W + PAD)]),
    # a gap of 5 windows (0.16 s) does not end a phrase; 10 windows (0.32 s) do
    ([(0, 20), (0.9, 30), (0, 5), (0.9, 30)], 150 * W, [(20 * W - PAD, 85 * W + PAD)]),
    ([(0, 20), (0.9, 30), (0, 10), (0.9, 30)], 150 * W, [(20 * W - PAD, 50 * W + PAD), (60 * W - PAD, 90 * W + PAD)]),
    # between the thresholds nothing changes: speech goes on, silence goes on
    ([(0, 20), (0.9, 30), (0.4, 20), (0.1, 20)], 150 * W, [(20 * W - PAD, 70 * W + PAD)]),
    ([(0, 20), (0.9, 30), (0.1, 5), (0.4, 10)], 150 * W, [(20 * W - PAD, 50 * W + PAD)]),
    # less speech than min_speech (7 windows = 0.22 s) is ignored; 8 windows (0.26 s) is a phrase
    ([(0, 20), (0.9, 7)], 100 * W, []),
    ([(0, 20), (0.9, 8)], 100 * W, [(20 * W - PAD, 28 * W + PAD)]),
    # speech at the very start: the padding is cut at the start of the stream
    ([(0.9, 30)], 100 * W, [(0, 30 * W + PAD)]),
    # the stream ends during speech (flush): the phrase ends with the audio, mid-window
    ([(0, 20), (0.9, 200)], 60 * W + 100, [(20 * W - PAD, 60 * W + 100)]),
    # the stream ends during a silence shorter than the pause: the phrase ends after its padding
    ([(0, 20), (0.9, 30), (0.0, 5)], 55 * W, [(20 * W - PAD, 50 * W + PAD)]),
])
def test_phrase_boundaries_follow_the_rules(models, runs, length, spans):
    """`length`: samples of audio; `spans`: the phrases expected, in samples."""
    model, config = models["lv60"], StreamingConfig()
    audio = (0.1 * np.random.default_rng(0).standard_normal(length)).astype(np.float32)
    recognizer = StreamingRecognizer(model, config, vad=ScriptedVAD(script(*runs)))
    finals = [e for e in stream(recognizer, audio) if e.type == "final"]
    assert [(round(f.start * RATE), round(f.end * RATE)) for f in finals] == spans
    for final in finals:
        assert_same_words(final, offline(model, audio, final, config))


def test_our_silero_wrapper_matches_the_packages_own(speech):
    utils = pytest.importorskip("silero_vad.utils_vad")
    from wav2vec2.streaming import silero_model_path

    reference = utils.OnnxWrapper(str(silero_model_path()), force_onnx_cpu=True)
    expected = reference.audio_forward(torch.from_numpy(speech.audio), RATE)[0].numpy()
    vad = SileroVAD()
    ours = [vad(speech.audio[i:i + VAD_WINDOW]) for i in range(0, len(speech.audio) - VAD_WINDOW + 1, VAD_WINDOW)]
    assert np.allclose(ours, expected[:len(ours)], atol=1e-5)
    # and it tells the phrases from the silences between them
    for start, end in speech.spans:
        assert np.mean(np.array(ours)[start // VAD_WINDOW + 2:end // VAD_WINDOW - 2] > 0.5) > 0.7
    assert max(ours[:int(0.4 * RATE) // VAD_WINDOW]) < 0.1


def test_cuts_fall_after_a_word_delimiter_preferably_in_a_pause():
    D = 4  # the delimiter id
    assert choose_cut([7, D, 8, 9, D, 5, 5, 0, 6, 0], D, [False] * 10) == 5  # the last delimiter
    pause = [i in (1, 4) for i in range(10)]
    assert choose_cut([7, D, 8, 9, D, 5, 5, D, 6, 0], D, pause) == 8  # no pause in the second half
    pause = [i in (5, 6) for i in range(10)]
    assert choose_cut([7, D, 8, 9, D, D, D, D, 6, 0], D, pause) == 7  # the last delimiter in a pause
    assert choose_cut([7, 8, 9], D, [True] * 3) == 3  # no delimiter at all: everything


def test_bad_settings_are_refused(models):
    with pytest.raises(ValueError, match="padding"):
        StreamingRecognizer(models["base"], StreamingConfig(pause=0.1, padding=0.2))
    with pytest.raises(ValueError, match="max_phrase"):
        StreamingRecognizer(models["base"], StreamingConfig(max_phrase=1.0))
    with pytest.raises(ValueError, match="threshold"):
        StreamingRecognizer(models["base"], StreamingConfig(threshold=0.3, neg_threshold=0.5))
    with pytest.raises(AudioError, match="sample rate"):
        StreamingRecognizer(models["base"], sample_rate=0)
