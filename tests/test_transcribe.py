"""Chunked transcription: stitched chunks are the unchunked pass, and the API returns words."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers

import wav2vec2
from wav2vec2.audio import normalize
from wav2vec2.transcribe import chunk_logits, split_into_chunks, transcribe_many

from .conftest import FAMILIES, write_audio


def full_pass(model, audio: np.ndarray) -> torch.Tensor:
    with torch.inference_mode():
        return model(torch.from_numpy(normalize(audio))[None])[0]


@pytest.mark.parametrize("samples", [16_000 * 3, 16_000 * 3 + 1, 16_000 * 7 + 123, 16_000 * 9 + 319])
def test_stitched_chunks_have_exactly_the_frames_of_one_pass(checkpoints, samples):
    model = wav2vec2.load_model(checkpoints["lv60"])
    audio = np.random.default_rng(samples).standard_normal(samples).astype(np.float32)
    chunks = list(split_into_chunks([audio], model.config, chunk_length=2.0, stride=0.4))
    assert len(chunks) > 1 and chunks[-1].last and not any(c.last for c in chunks[:-1])
    stitched = torch.cat(list(chunk_logits(model, audio, chunk_length=2.0, stride=0.4)))
    assert stitched.shape == full_pass(model, audio).shape


@pytest.mark.parametrize("family", FAMILIES)
def test_kept_frames_equal_each_chunks_own_pass(checkpoints, family):
    model = wav2vec2.load_model(checkpoints[family])
    audio = np.random.default_rng(1).standard_normal(16_000 * 6 + 777).astype(np.float32)
    chunks = list(split_into_chunks([audio[i:i + 5000] for i in range(0, len(audio), 5000)],
                                    model.config, chunk_length=2.0, stride=0.3))
    kept = list(chunk_logits(model, audio, chunk_length=2.0, stride=0.3))
    assert len(kept) == len(chunks)
    start = 0
    for chunk, logits in zip(chunks, kept):
        own = full_pass(model, chunk.audio)[chunk.keep_start:chunk.keep_stop]
        assert torch.allclose(logits, own, atol=1e-5)
        # the chunk is the recording's audio at the right place
        offset = start * model.config.samples_per_frame - chunk.keep_start * model.config.samples_per_frame
        assert np.array_equal(chunk.audio, audio[offset:offset + len(chunk.audio)])
        start += len(logits)


def test_short_audio_is_one_chunk_equal_to_transformers(checkpoints, speechlike):
    model = wav2vec2.load_model(checkpoints["base"])
    processor = transformers.Wav2Vec2Processor.from_pretrained(checkpoints["base"])
    theirs = transformers.Wav2Vec2ForCTC.from_pretrained(checkpoints["base"]).eval()
    inputs = processor(speechlike, sampling_rate=16000, return_tensors="pt")
    with torch.no_grad():
        ids = theirs(inputs.input_values).logits.argmax(-1)
    result = model.transcribe(speechlike)
    assert result.text == " ".join(processor.batch_decode(ids)[0].split())
    assert result.text and result.words
    assert result.duration == pytest.approx(len(speechlike) / 16000)
    assert all(0 <= w.start < w.end <= result.duration + 0.03 for w in result.words)
    assert all(0 < w.confidence <= 1 for w in result.words)


def test_file_and_array_give_the_same_words(checkpoints, speechlike, tmp_path):
    model = wav2vec2.load_model(checkpoints["base"])
    path = write_audio(tmp_path / "a.wav", speechlike, 16000, subtype="FLOAT")
    from_file, from_array = model.transcribe(path), model.transcribe(speechlike)
    assert from_file.words == from_array.words and from_file.source == str(path)


def test_array_at_another_rate_is_resampled(checkpoints, speechlike):
    import soxr
    model = wav2vec2.load_model(checkpoints["base"])
    at_8k = soxr.resample(speechlike, 16000, 8000)
    result = model.transcribe(at_8k, sample_rate=8000)
    assert result.duration == pytest.approx(len(speechlike) / 16000, abs=1e-3)


def test_batching_many_files_keeps_order_and_results(checkpoints, speechlike, tmp_path):
    """With an attention mask, padding in a batch changes nothing; results come back in input order."""
    model = wav2vec2.load_model(checkpoints["lv60"])
    lengths = [3.3, 1.0, 7.5, 2.2, 0.6]
    paths = [write_audio(tmp_path / f"{i}.wav", np.tile(speechlike, 3)[:int(s * 16000)], 16000)
             for i, s in enumerate(lengths)]
    paths.insert(2, tmp_path / "missing.wav")
    one = list(transcribe_many(model, paths, batch_size=1, chunk_length=2.0, stride=0.4))
    four = list(transcribe_many(model, paths, batch_size=4, chunk_length=2.0, stride=0.4))
    assert [i for i, _ in one] == [i for i, _ in four] == list(range(len(paths)))
    assert isinstance(one[2][1], wav2vec2.AudioError) and isinstance(four[2][1], wav2vec2.AudioError)
    for (_, a), (_, b) in zip(one, four):
        if not isinstance(a, Exception):
            assert a.text == b.text and a.source == b.source
            assert [w.start for w in a.words] == [w.start for w in b.words]


def test_a_tiny_file_gives_empty_text(checkpoints):
    model = wav2vec2.load_model(checkpoints["base"])
    assert model.transcribe(np.ones(200, dtype=np.float32)).text == ""
