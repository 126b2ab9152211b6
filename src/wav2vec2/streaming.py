"""Live transcription: audio blocks in, `partial` and `final` events out.

Voice activity detection (Silero VAD, run with onnxruntime on 32 ms windows) finds phrases: speech
followed by a pause. While someone speaks, the model runs every `interval` seconds on a window of
`interval + 2 * context` seconds; the frames between the two contexts are fixed, the rest only
shows in the partial. So each final is exactly what `transcribe(phrase, *config.chunking(...))`
gives offline — the overlapping-chunk stitching of transcribe.py, done as the audio arrives —
whatever the sizes of the blocks, and each model pass has the same bounded cost however long the
phrase. When the speaker pauses, the last window is computed as soon as the pause starts (and
thrown away if speech resumes), so the final is ready when the pause is confirmed.

Only the audio that a future model pass needs is kept, so memory stays flat for hours of audio. A
monologue longer than `max_phrase` is committed in pieces, each ending on a word boundary
(preferably one inside a short pause); committed text is never taken back.

With a beam-search decoder, finals come from the beam search (fed each window's fixed frames as
they are fixed, so little is left to do when the pause is confirmed); partials stay greedy.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import soxr
import torch

from .audio import SAMPLE_RATE, to_mono
from .beam import BeamDecoder, BeamSearch, BeamSettings, as_decoder
from .decoding import Word, best_path, greedy_decode
from .errors import AudioError, Wav2Vec2Error
from .transcribe import Chunk, forward_chunks, num_frames

VAD_WINDOW = 512  # samples per VAD decision (32 ms): the only size the Silero model takes at 16 kHz


@dataclass
class StreamingConfig:
    """How phrases are found and transcribed; lengths in seconds."""

    pause: float = 0.3  # silence that ends a phrase
    min_speech: float = 0.25  # shorter bursts of speech (clicks, coughs) give no text
    max_phrase: float = 15.0  # longer speech is committed in pieces, so the partial stays short
    padding: float = 0.1  # audio kept before and after the speech of a phrase
    interval: float = 0.48  # the model runs every `interval` of speech: partials refresh this often
    context: float = 0.5  # audio on each side of a model window that is seen but not kept
    threshold: float = 0.5  # a VAD window with a speech probability at or above this is speech...
    neg_threshold: float = 0.35  # ...below this it is silence; in between, nothing changes
    cut_pause: float = 0.1  # a silence this long inside a long phrase is the preferred place to cut

    def validate(self) -> None:
        for name in ("pause", "min_speech", "max_phrase", "padding", "interval", "context", "cut_pause"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must not be negative, not {getattr(self, name)}")
        if not self.pause > 0 or not self.interval > 0 or not self.context > 0:
            raise ValueError("pause, interval and context must be positive")
        if self.padding > self.pause:
            raise ValueError(f"padding ({self.padding} s) cannot be longer than the pause ({self.pause} s)")
        if not 0 < self.neg_threshold <= self.threshold < 1:
            raise ValueError("thresholds must satisfy 0 < neg_threshold <= threshold < 1")
        if self.max_phrase < self.interval + 2 * self.context:
            raise ValueError(f"max_phrase must be at least interval + 2 * context "
                             f"({self.interval + 2 * self.context:g} s)")

    def chunking(self, samples_per_frame: int = 320) -> tuple[float, float]:
        """(chunk_length, stride) for `transcribe` that give a phrase the same text offline."""
        step, side = whole_frames(self.interval, samples_per_frame), whole_frames(self.context, samples_per_frame)
        return (step + 2 * side) / SAMPLE_RATE, side / SAMPLE_RATE


def whole_frames(seconds: float, hop: int) -> int:
    """Seconds rounded to a whole number (at least one) of model frames, in samples."""
    return max(1, round(seconds * SAMPLE_RATE / hop)) * hop


@dataclass
class Event:
    """What the recogniser has to say: the phrase so far (`partial`) or for good (`final`)."""

    type: str  # "partial" or "final"
    text: str
    start: float  # seconds since the start of the stream
    end: float
    words: list[Word] = field(default_factory=list)  # finals only; times in seconds of the stream
    continued: bool = False  # a final cut from a long phrase: the phrase goes on in the next final

    def to_dict(self) -> dict:
        # 5 decimals keep phrase boundaries sample-exact (1/16000 s = 0.0000625 s)
        values = {"type": self.type, "text": self.text, "start": round(self.start, 5), "end": round(self.end, 5)}
        if self.type == "final":
            values["words"] = [asdict(word) for word in self.words]
            values["continued"] = self.continued
        return values


class SileroVAD:
    """Speech probability of consecutive 512-sample windows of 16 kHz audio (Silero VAD, ONNX).

    The model is recurrent and also sees the last 64 samples of the previous window, so one
    instance follows one stream, window after window. The ONNX file comes from the `silero-vad`
    package (its other dependencies are not needed); onnxruntime runs it on one thread.
    """

    CONTEXT = 64

    def __init__(self, path: str | os.PathLike | None = None):
        try:
            import onnxruntime
        except ImportError:
            raise Wav2Vec2Error("voice activity detection needs onnxruntime (pip install onnxruntime)") from None
        path = Path(path) if path is not None else silero_model_path()
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self._session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self._rate = np.array(SAMPLE_RATE, dtype=np.int64)
        self.reset()

    def reset(self) -> None:
        self._state = np.zeros((2, 1, 128), dtype=np.float32)
        self._previous = np.zeros(self.CONTEXT, dtype=np.float32)

    def __call__(self, window: np.ndarray) -> float:
        if len(window) != VAD_WINDOW:
            raise ValueError(f"the VAD takes windows of {VAD_WINDOW} samples, not {len(window)}")
        x = np.concatenate([self._previous, window.astype(np.float32, copy=False)])[None]
        probability, self._state = self._session.run(None, {"input": x, "state": self._state, "sr": self._rate})
        self._previous = x[0, -self.CONTEXT:]
        return float(probability[0, 0])


def silero_model_path() -> Path:
    """The ONNX model inside the installed silero-vad package (found without importing it)."""
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise Wav2Vec2Error("voice activity detection needs the silero-vad package (pip install silero-vad)")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "silero_vad.onnx"
    if not path.is_file():
        raise Wav2Vec2Error(f"{path}: missing from the silero-vad package (reinstall it)")
    return path


@dataclass
class _Phrase:
    """A phrase in progress. Sample positions count from the start of the stream (16 kHz)."""

    start: int  # first sample of the phrase: frame 0 and the origin of its model windows
    speech_start: int
    speech_end: int  # end of the last speech window
    refreshed: int  # position of the last partial
    silence_start: int | None = None  # start of the current run of silence, if any
    chunks: int = 0  # model windows whose middle frames are fixed
    committed: int = 0  # frames already given out in finals (long phrases)
    ids: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))  # fixed, not committed
    probs: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    pauses: list[tuple[int, int]] = field(default_factory=list)  # short silences inside the phrase
    speculative: tuple | None = None  # (chunks, end, ids, probs, log-probs) of the last window
    log_probs: np.ndarray | None = None  # with beam search: the fixed frames not committed
    search: BeamSearch | None = None  # ... and the search they have been fed to


class StreamingRecognizer:
    """Feed audio blocks of any size with `feed`; call `flush` at the end of the stream.

    `sample_rate` is the rate of the blocks (resampled to 16 kHz as a stream); blocks may be
    (samples,) or (samples, channels), float or integer PCM. `vad` maps a 512-sample window of
    16 kHz audio to a speech probability (default: Silero VAD). `decoder` (a BeamDecoder, or
    BeamSettings to make one) decodes the finals with a beam search.
    """

    def __init__(self, model, config: StreamingConfig | None = None, sample_rate: int = SAMPLE_RATE,
                 vad: Callable[[np.ndarray], float] | None = None,
                 decoder: BeamDecoder | BeamSettings | None = None):
        self.model = model
        self.decoder = as_decoder(decoder, model.vocab)
        self.config = config or StreamingConfig()
        self.config.validate()
        if not sample_rate > 0:
            raise AudioError(f"invalid sample rate {sample_rate}")
        self.sample_rate = sample_rate
        self.vad = vad if vad is not None else SileroVAD()
        hop = self._hop = model.config.samples_per_frame
        self._step = whole_frames(self.config.interval, hop)  # model windows start every step samples...
        self._side = whole_frames(self.config.context, hop)  # ... and keep all but side samples at each end
        self._window = self._step + 2 * self._side
        self._pause, self._padding = round(self.config.pause * SAMPLE_RATE), round(self.config.padding * SAMPLE_RATE)
        self._min_speech = round(self.config.min_speech * SAMPLE_RATE)
        self._cut_pause = round(self.config.cut_pause * SAMPLE_RATE)
        self._max_frames = max(1, round(self.config.max_phrase * SAMPLE_RATE / hop))
        self._delimiter = model.vocab.ids.get(model.vocab.word_delimiter, -1)
        self._resampler = None
        if sample_rate != SAMPLE_RATE:
            self._resampler = soxr.ResampleStream(sample_rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")
        self._audio = np.zeros(0, dtype=np.float32)
        self._origin = 0  # stream position of self._audio[0]
        self._vad_position = 0  # audio before this has been through the VAD
        self._floor = 0  # a new phrase cannot start before the end of the previous one
        self._phrase: _Phrase | None = None
        self._flushed = False

    @property
    def position(self) -> float:
        """Seconds of (16 kHz) audio received so far."""
        return (self._origin + len(self._audio)) / SAMPLE_RATE

    @property
    def buffered(self) -> int:
        """Samples held in memory: bounded, however long the stream."""
        return len(self._audio)

    def feed(self, block: np.ndarray) -> list[Event]:
        """Take the next block of audio; return the events it completes, in order."""
        if self._flushed:
            raise RuntimeError("the stream was flushed; start a new StreamingRecognizer")
        audio = np.asarray(block)
        if np.issubdtype(audio.dtype, np.integer):
            audio = audio.astype(np.float32) / float(np.iinfo(audio.dtype).max + 1)
        audio = to_mono(audio)
        if self._resampler is not None:
            audio = self._resampler.resample_chunk(audio)
        return self._take(audio)

    def flush(self) -> list[Event]:
        """End of the stream: finish the phrase in progress, if there is enough speech in it."""
        if self._flushed:
            return []
        events = []
        if self._resampler is not None:
            events += self._take(self._resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True))
        self._flushed = True
        phrase = self._phrase
        if phrase is not None:
            end = self._origin + len(self._audio)
            if phrase.silence_start is not None:
                end = min(end, phrase.silence_start + self._padding)
            events += self._finish(end)
        return events

    # ------------------------------------------------------------------ phrase finding

    def _take(self, audio: np.ndarray) -> list[Event]:
        if len(audio):
            self._audio = np.concatenate([self._audio, audio])
        events: list[Event] = []
        while self._vad_position + VAD_WINDOW <= self._origin + len(self._audio):
            start = self._vad_position
            probability = self.vad(self._slice(start, start + VAD_WINDOW))
            self._vad_position += VAD_WINDOW
            events += self._decide(start, probability)
        phrase = self._phrase
        keep = phrase.start + phrase.chunks * self._step if phrase else self._vad_position - self._padding
        keep = max(keep, self._origin)
        self._audio = self._audio[keep - self._origin:]
        self._origin = keep
        return events

    def _decide(self, start: int, probability: float) -> list[Event]:
        """Update the phrase state with one VAD window [start, start + 512) and do the model work due."""
        end = start + VAD_WINDOW
        phrase = self._phrase
        if phrase is None:
            if probability >= self.config.threshold:
                # the first partial is due as soon as there is min_speech of speech, then every interval
                self._phrase = _Phrase(start=max(start - self._padding, self._floor, self._origin),
                                       speech_start=start, speech_end=end, refreshed=start - self._step)
            return []
        if probability >= self.config.threshold:
            if phrase.silence_start is not None:
                if start - phrase.silence_start >= self._cut_pause:
                    phrase.pauses.append((phrase.silence_start, start))
                phrase.silence_start, phrase.speculative = None, None
            phrase.speech_end = end
        elif probability < self.config.neg_threshold and phrase.silence_start is None:
            phrase.silence_start = start
        if phrase.silence_start is not None and end - phrase.silence_start >= self._pause:
            return self._finish(phrase.silence_start + self._padding)
        return self._advance(end)

    # ------------------------------------------------------------------ model work

    def _advance(self, position: int) -> list[Event]:
        """Fix every model window that the phrase surely extends past; refresh the partial when due."""
        phrase = self._phrase
        earliest_end = position if phrase.silence_start is None else min(position, phrase.silence_start + self._padding)
        provisional = self._fix(phrase, earliest_end)
        events = self._commit() if len(phrase.ids) >= self._max_frames else []
        speaking = phrase.silence_start is None and phrase.speech_end - phrase.speech_start >= self._min_speech
        if speaking and (provisional is not None or position - phrase.refreshed >= self._step):
            if provisional is None:
                provisional = self._run(phrase, position)
            ids, probs = torch.cat([phrase.ids, provisional[0]]), torch.cat([phrase.probs, provisional[1]])
            events.append(Event("partial", self._decode(phrase, ids, probs).text,
                                self._time(phrase), position / SAMPLE_RATE))
            phrase.refreshed = position
        if phrase.silence_start is not None and phrase.speculative is None:
            end = phrase.silence_start + self._padding
            if position >= end:  # compute the last window now, so the final is ready when the pause is
                phrase.speculative = (phrase.chunks, end, *self._run(phrase, end))
        return events

    def _fix(self, phrase: _Phrase, earliest_end: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Run every model window that ends before the phrase can end, keeping its middle frames;
        return the frames after them of the last one run (for the partial), or None."""
        provisional = None
        while earliest_end > phrase.start + phrase.chunks * self._step + self._window:
            ids, probs, log_probs = self._run(phrase, phrase.start + phrase.chunks * self._step + self._window)
            keep = (self._window - self._side) // self._hop - (self._side // self._hop if phrase.chunks else 0)
            phrase.ids, phrase.probs = torch.cat([phrase.ids, ids[:keep]]), torch.cat([phrase.probs, probs[:keep]])
            if self.decoder is not None:
                self._fixed_log_probs(phrase, log_probs[:keep])
            provisional = ids[keep:], probs[keep:]
            phrase.chunks += 1
        return provisional

    def _run(self, phrase: _Phrase, stop: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray | None]:
        """Best path (and, for a beam search, log-probabilities) of the frames of the model window that
        starts at the next unfixed one and ends at `stop`, from the first frame not fixed by the window
        before."""
        start = phrase.start + phrase.chunks * self._step
        audio = self._slice(start, stop)
        first = self._side // self._hop if phrase.chunks else 0
        last = max(first, num_frames(len(audio), self.model.config))
        if last == first:
            logits = torch.zeros(0, len(self.model.vocab))
        else:
            (logits,) = forward_chunks(self.model, [Chunk(audio, first, last, True)])
        return (*best_path(logits), None if self.decoder is None else logits.log_softmax(-1).numpy())

    def _finish(self, end: int) -> list[Event]:
        """The phrase ends at sample `end`: compute its last window and give the final."""
        phrase, self._phrase = self._phrase, None
        self._floor = end
        if phrase.speech_end - phrase.speech_start < self._min_speech and not phrase.committed:
            return []
        self._fix(phrase, end)
        if phrase.speculative is not None and phrase.speculative[:2] == (phrase.chunks, end):
            ids, probs, log_probs = phrase.speculative[2:]
        else:
            ids, probs, log_probs = self._run(phrase, end)
        if self.decoder is not None:
            self._fixed_log_probs(phrase, log_probs)
            decoded = phrase.search.finish()
        else:
            ids, probs = torch.cat([phrase.ids, ids]), torch.cat([phrase.probs, probs])
            decoded = self._decode(phrase, ids, probs)
        return [Event("final", decoded.text, self._time(phrase), end / SAMPLE_RATE, decoded.words)]

    def _commit(self) -> list[Event]:
        """Give out the fixed frames of a long phrase up to a word boundary, as a `continued` final."""
        phrase = self._phrase
        frame_start = lambda frame: phrase.start + (phrase.committed + frame) * self._hop  # noqa: E731
        in_pause = [any(a <= frame_start(f) < b for a, b in phrase.pauses) for f in range(len(phrase.ids))]
        cut = choose_cut(phrase.ids.tolist(), self._delimiter, in_pause)
        if self.decoder is not None:
            decoded = self.decoder.decode(phrase.log_probs[:cut], self._hop / SAMPLE_RATE, self._time(phrase))
        else:
            decoded = self._decode(phrase, phrase.ids[:cut], phrase.probs[:cut])
        event = Event("final", decoded.text, self._time(phrase), frame_start(cut) / SAMPLE_RATE,
                      decoded.words, continued=True)
        phrase.ids, phrase.probs = phrase.ids[cut:], phrase.probs[cut:]
        phrase.committed += cut
        if self.decoder is not None:  # the search starts again after the cut
            rest, phrase.log_probs, phrase.search = phrase.log_probs[cut:], None, None
            self._fixed_log_probs(phrase, rest)
        phrase.pauses = [(a, b) for a, b in phrase.pauses if b > frame_start(0)]
        return [event]

    # ------------------------------------------------------------------ helpers

    def _fixed_log_probs(self, phrase: _Phrase, log_probs: np.ndarray) -> None:
        """Feed frames that will not change to the phrase's beam search (and keep them for a cut)."""
        if phrase.search is None:
            phrase.search = self.decoder.stream(self._hop / SAMPLE_RATE, offset=self._time(phrase))
        phrase.search.feed(log_probs)
        phrase.log_probs = log_probs if phrase.log_probs is None else np.concatenate([phrase.log_probs, log_probs])

    def _decode(self, phrase: _Phrase, ids: torch.Tensor, probs: torch.Tensor):
        return greedy_decode(ids, probs, self.model.vocab, seconds_per_frame=self._hop / SAMPLE_RATE,
                             offset=self._time(phrase))

    def _time(self, phrase: _Phrase) -> float:
        """Stream time of the first frame not yet committed."""
        return (phrase.start + phrase.committed * self._hop) / SAMPLE_RATE

    def _slice(self, start: int, stop: int) -> np.ndarray:
        return self._audio[start - self._origin:stop - self._origin]


def choose_cut(ids: list[int], delimiter: int, in_pause: list[bool]) -> int:
    """Where to cut a long phrase's frames: just after its last word delimiter inside a pause (in the
    second half, so that pieces are not tiny), else after its last word delimiter, else (a model
    that emits none) after the last frame.

    A cut right after a delimiter frame splits the text exactly where greedy decoding of all the
    frames would put a space, so the pieces join to the same text.
    """
    delimiters = [i for i, token in enumerate(ids) if token == delimiter]
    paused = [i for i in delimiters if in_pause[i] and i >= len(ids) // 2]  # not a tiny piece
    if paused:
        return paused[-1] + 1
    if delimiters:
        return delimiters[-1] + 1
    return len(ids)
