"""Audio of any length -> text, through overlapping chunks.

Audio is cut into chunks of `chunk_length` seconds that overlap by `stride` seconds on each side.
Frames computed near a chunk's edges lack context, so each chunk keeps only its middle frames;
together the kept frames are exactly the frames of one pass over the whole recording (chunk
boundaries fall on multiples of 320 samples, where frames are aligned). Audio is read as a
stream and only per-frame best tokens are kept (or, with a beam-search decoder, each chunk's
frames are fed to the search as they come), so memory does not grow with the file's length.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from .audio import SAMPLE_RATE, AudioFile, normalize, resample
from .beam import BeamDecoder, BeamSearch, BeamSettings, as_decoder
from .decoding import Decoded, Word, best_path, greedy_decode
from .errors import Wav2Vec2Error
from .model import Wav2Vec2Config, Wav2Vec2ForCTC, frame_lengths


@dataclass
class Transcription:
    text: str
    words: list[Word]
    duration: float  # seconds of audio
    source: str | None = None  # the file, when there was one


@dataclass
class Chunk:
    """A piece of one recording and which of its output frames to keep."""

    audio: np.ndarray  # 16 kHz mono float32
    keep_start: int  # first kept frame, counted within the chunk
    keep_stop: int  # frame after the last kept one, within the chunk
    last: bool  # the recording's final chunk
    source: int = 0  # which recording it belongs to


def num_frames(samples: int, config: Wav2Vec2Config) -> int:
    return int(frame_lengths(torch.tensor(samples), config))


def split_into_chunks(blocks: Iterable[np.ndarray], config: Wav2Vec2Config, chunk_length: float = 20.0,
                      stride: float = 2.0) -> Iterator[Chunk]:
    """Cut a stream of 16 kHz blocks into overlapping chunks (lengths in seconds, rounded to frames).

    Chunk k starts at k * (chunk - 2 * stride) samples. The first chunk keeps its frames from
    the start, the last one to the end, every other one the frames between its two strides.
    """
    hop = config.samples_per_frame
    chunk = max(1, round(chunk_length * SAMPLE_RATE / hop)) * hop
    side = round(stride * SAMPLE_RATE / hop) * hop
    step = chunk - 2 * side
    if step <= 0:
        raise ValueError(f"chunk length {chunk_length} s leaves nothing between strides of {stride} s")
    if side < config.receptive_field - hop:
        raise ValueError(f"stride {stride} s is shorter than one frame's receptive field")
    buffer = np.zeros(0, dtype=np.float32)
    start = 0  # sample index of buffer[0] in the recording
    for block in blocks:
        buffer = np.concatenate([buffer, block])
        while len(buffer) > chunk:  # more audio follows, so this chunk is not the last
            yield Chunk(buffer[:chunk], 0 if start == 0 else side // hop, (chunk - side) // hop, False)
            buffer = buffer[step:]
            start += step
    first = 0 if start == 0 else side // hop
    yield Chunk(buffer, first, max(first, num_frames(len(buffer), config)), True)


def forward_chunks(model: Wav2Vec2ForCTC, chunks: list[Chunk]) -> list[torch.Tensor]:
    """Run a batch of chunks (padded to the longest) and return each one's kept logits."""
    settings = model.preprocessing
    arrays = [normalize(c.audio) if settings.do_normalize else c.audio for c in chunks]
    longest = max(len(a) for a in arrays)
    waveform = torch.full((len(arrays), longest), settings.padding_value)
    mask = torch.zeros((len(arrays), longest), dtype=torch.long)
    for i, array in enumerate(arrays):
        waveform[i, :len(array)] = torch.from_numpy(array)
        mask[i, :len(array)] = 1
    attention_mask = mask.to(model.device) if settings.return_attention_mask else None
    with torch.inference_mode():
        logits = model(waveform.to(model.device), attention_mask)
    return [logits[i, c.keep_start:c.keep_stop].float().cpu() for i, c in enumerate(chunks)]


def chunk_logits(model: Wav2Vec2ForCTC, audio: np.ndarray, chunk_length: float = 20.0,
                 stride: float = 2.0) -> Iterator[torch.Tensor]:
    """The kept logits of each chunk of a 16 kHz recording, in order (one chunk at a time)."""
    for chunk in split_into_chunks([audio], model.config, chunk_length, stride):
        if chunk.keep_stop > chunk.keep_start:
            yield forward_chunks(model, [chunk])[0]


@dataclass
class _Pending:
    """What is known so far of one recording's transcription."""

    name: str | None
    ids: list[torch.Tensor] = field(default_factory=list)
    probs: list[torch.Tensor] = field(default_factory=list)
    samples: int = 0
    chunks_out: int = 0  # chunks sent to the model
    chunks_done: int = 0
    ended: bool = False  # the last chunk has been cut
    error: Exception | None = None
    search: BeamSearch | None = None  # with a beam-search decoder: instead of ids and probs


def transcribe_many(model: Wav2Vec2ForCTC, sources: list, batch_size: int = 1,
                    chunk_length: float = 20.0, stride: float = 2.0,
                    on_progress: Callable[[float], None] | None = None,
                    decoder: BeamDecoder | BeamSettings | None = None,
                    ) -> Iterator[tuple[int, Transcription | Wav2Vec2Error]]:
    """Transcribe many files or 16 kHz arrays, yielding (index, Transcription or error) in input order.

    Files are processed shortest first, so that a batch holds chunks of similar lengths; chunks of
    several files share a batch. Batched chunks are padded with zeros to the longest, with an
    attention mask where the checkpoint uses one (as transformers does): with batch_size 1
    nothing is ever padded. A file that cannot be read gives an AudioError in its place and the
    others go on. `on_progress` is called with the seconds of audio just transcribed. `decoder`
    (a wav2vec2.beam.BeamDecoder, or BeamSettings to make one) decodes with a beam search instead
    of greedily.
    """
    decoder = as_decoder(decoder, model.vocab)
    seconds = model.config.samples_per_frame / SAMPLE_RATE
    opened: dict[int, AudioFile | np.ndarray] = {}
    pending: dict[int, _Pending] = {}
    for index, source in enumerate(sources):
        name = None if isinstance(source, np.ndarray) else str(source)
        pending[index] = _Pending(name)
        try:
            opened[index] = source if name is None else AudioFile(source)
        except Wav2Vec2Error as error:
            pending[index].error = error

    def length(index: int) -> int:
        item = opened[index]
        return len(item) if isinstance(item, np.ndarray) else item.num_samples

    order = sorted(opened, key=length)
    batch: list[Chunk] = []
    results: dict[int, Transcription | Wav2Vec2Error] = {}
    next_out = 0

    def run_batch() -> None:
        for chunk, logits in zip(batch, forward_chunks(model, batch)):
            state = pending[chunk.source]
            if decoder is not None:
                if state.search is None:
                    state.search = decoder.stream(seconds)
                state.search.feed(logits.log_softmax(-1).numpy())
            else:
                ids, probs = best_path(logits)
                state.ids.append(ids)
                state.probs.append(probs)
            state.chunks_done += 1
            if on_progress:
                on_progress(len(logits) * seconds)
        batch.clear()
        release_freed_memory()

    def finish(index: int) -> None:
        state = pending.pop(index)
        if state.error is not None:
            results[index] = state.error
            return
        if decoder is not None:
            decoded = state.search.finish() if state.search is not None else Decoded("", [])
        else:
            ids = torch.cat(state.ids) if state.ids else torch.zeros(0, dtype=torch.long)
            probs = torch.cat(state.probs) if state.probs else torch.zeros(0)
            decoded = greedy_decode(ids, probs, model.vocab, seconds_per_frame=seconds)
        results[index] = Transcription(decoded.text, decoded.words, state.samples / SAMPLE_RATE, state.name)

    def release() -> Iterator[tuple[int, Transcription | Wav2Vec2Error]]:
        nonlocal next_out
        for index in [i for i, s in pending.items() if s.error is not None or
                      (s.ended and s.chunks_done == s.chunks_out)]:
            finish(index)
        while next_out in results:
            yield next_out, results.pop(next_out)
            next_out += 1

    for index in order:
        state = pending[index]
        item = opened[index]
        blocks = [item] if isinstance(item, np.ndarray) else item.blocks()
        try:
            for chunk in split_into_chunks(_count(blocks, state), model.config, chunk_length, stride):
                state.ended = chunk.last
                if chunk.keep_stop <= chunk.keep_start:
                    continue  # a tail too short to hold a frame of its own
                chunk.source = index
                batch.append(chunk)
                state.chunks_out += 1
                if len(batch) == batch_size:
                    run_batch()
                    yield from release()
        except Wav2Vec2Error as error:
            state.error = error
            batch[:] = [c for c in batch if c.source != index]
        yield from release()
    if batch:
        run_batch()
    yield from release()


def release_freed_memory() -> None:
    """Give memory that PyTorch has freed back to the operating system.

    glibc's allocator keeps freed blocks for reuse, and over many chunks of a long recording they
    fragment: without this, transcribing 20 minutes peaked 230 MB higher than 5 minutes. A no-op
    where the C library is not glibc.
    """
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _load_libc():
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


_LIBC = _load_libc()


def _count(blocks: Iterable[np.ndarray], state: _Pending) -> Iterator[np.ndarray]:
    for block in blocks:
        state.samples += len(block)
        yield block


def transcribe(model: Wav2Vec2ForCTC, audio: str | os.PathLike | np.ndarray, sample_rate: int = SAMPLE_RATE,
               chunk_length: float = 20.0, stride: float = 2.0, batch_size: int = 1,
               decoder: BeamDecoder | BeamSettings | None = None) -> Transcription:
    """Transcribe one file, or one mono array at `sample_rate`, with word timings.

    `decoder`: greedy (None), or beam search (a BeamDecoder, or BeamSettings to load one from;
    make the BeamDecoder once to transcribe many files with the same LM). Raises AudioError for a
    file that cannot be read.
    """
    if isinstance(audio, torch.Tensor):
        audio = audio.detach().cpu().numpy()
    if isinstance(audio, np.ndarray):
        if audio.ndim != 1 or audio.size == 0:
            raise ValueError("audio must be a non-empty 1-D (mono) array")
        audio = resample(audio.astype(np.float32), sample_rate)
    (_, result), = transcribe_many(model, [audio], batch_size, chunk_length, stride, decoder=decoder)
    if isinstance(result, Exception):
        raise result
    return result
