"""CTC fine-tuning: it fits labelled audio, saves what transformers loads, resumes exactly after a
kill, and copes with bad labelled data."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import safetensors.torch
import soundfile
import torch
import transformers

import wav2vec2
from wav2vec2.audio import Preprocessing
from wav2vec2.errors import Wav2Vec2Error
from wav2vec2.evaluate import evaluate
from wav2vec2.manifest import read_manifest
from wav2vec2.train.data import change_speed
from wav2vec2.train.finetune import FinetuneSettings, alignable, build_model, finetune, load_labelled_batch
from wav2vec2.train.loop import tri_stage
from wav2vec2.train.pretrain import PretrainSettings, pretrain
from wav2vec2.train.presets import PRESETS, preset_config

from .conftest import (kill_after_first_checkpoint_then_resume, torchrun_two_processes, write_phone_corpus,
                       write_spelled_corpus)

COMMAND = str(Path(sys.executable).parent / "wav2vec2")


@pytest.fixture(scope="module")
def spelled(tmp_path_factory) -> Path:
    return write_spelled_corpus(tmp_path_factory.mktemp("spelled"), count=8)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    """A (briefly) pretrained tiny encoder, to fine-tune from."""
    corpus = write_phone_corpus(tmp_path_factory.mktemp("phones"), count=4)
    run = tmp_path_factory.mktemp("pretrained")
    return pretrain(PretrainSettings(data=str(corpus), out=str(run), max_steps=2, num_negatives=5, max_seconds=2))


def records(run: Path) -> list[dict]:
    return [r for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if "loss" in r]


def test_alignable_counts_the_blanks_between_repeats():
    assert alignable(3, [1, 2, 3]) and not alignable(2, [1, 2, 3])
    assert not alignable(3, [1, 1, 2]) and alignable(4, [1, 1, 2])


@pytest.mark.slow
def test_a_tiny_model_fits_a_handful_of_clips(spelled, tmp_path):
    final = finetune(FinetuneSettings(init="tiny", train=str(spelled), dev=str(spelled), out=str(tmp_path),
                                      max_steps=300, lr=3e-3, eval_every=100, log_every=25, mask_time_prob=0.0,
                                      mask_feature_prob=0.0, max_batch_seconds=20))
    model = wav2vec2.load_model(final)
    result = evaluate(model, read_manifest(spelled))
    assert result.cer <= 0.05  # the CTC path, the vocabulary and decoding fit together
    losses = [r["loss"] for r in records(tmp_path)]
    assert losses[-1] < losses[0] / 10


def test_random_initialisation_can_train_the_feature_encoder(spelled, tmp_path):
    """From a config.json with random weights: the feature encoder learns only when asked to."""
    config = tmp_path / "config.json"
    config.write_text(json.dumps({**PRESETS["tiny"], "conv_dim": [16, 32, 32, 32, 32, 32, 32]}))
    first_layers = {}
    for train_encoder in (False, True):
        out = tmp_path / str(train_encoder)
        final = finetune(FinetuneSettings(init=str(config), train=str(spelled), out=str(out), max_steps=2, lr=1e-2,
                                          train_feature_encoder=train_encoder, max_batch_seconds=20))
        model = wav2vec2.load_model(final)
        assert model.config.conv_dim[0] == 16
        first_layers[train_encoder] = model.wav2vec2.feature_encoder.conv_layers[1].conv.weight
    torch.manual_seed(0)  # the seed finetune() initialises with
    untrained = wav2vec2.model.Wav2Vec2ForCTC(preset_config(str(config), vocab_size=11),
                                              wav2vec2.vocab.build_vocabulary(["ABCDEF"]), None)
    initial = untrained.wav2vec2.feature_encoder.conv_layers[1].conv.weight
    assert torch.equal(first_layers[False], initial)
    assert not torch.allclose(first_layers[True], initial)


@pytest.mark.parametrize("metric, kept", [("wer", 1), ("cer", 2)])
def test_the_kept_model_is_the_best_by_the_chosen_metric(spelled, tmp_path, monkeypatch, metric, kept):
    """Dev scores scripted step by step: a model that writes nothing (WER 1.0) against one that
    spells better but inserts words (WER 1.1, CER 0.5)."""
    scores = iter([(1.0, 1.0), (1.1, 0.5), (1.2, 0.7)])

    def scripted(model, entries, **kwargs):
        wer, cer = next(scores)
        return SimpleNamespace(wer=wer, cer=cer)

    monkeypatch.setattr(wav2vec2.evaluate, "evaluate", scripted)
    finetune(FinetuneSettings(init="tiny", train=str(spelled), dev=str(spelled), out=str(tmp_path), max_steps=3,
                              eval_every=1, best_metric=metric))
    end = json.loads((tmp_path / "log.jsonl").read_text().splitlines()[-1])
    assert end["best"]["step"] == kept


def test_fine_tuned_checkpoint_loads_in_transformers(pretrained, spelled, tmp_path):
    final = finetune(FinetuneSettings(init=str(pretrained), train=str(spelled), dev=str(spelled),
                                      out=str(tmp_path), max_steps=3, eval_every=3, lr=1e-3))
    ours = wav2vec2.load_model(final)
    theirs = transformers.Wav2Vec2ForCTC.from_pretrained(final).eval()
    processor = transformers.Wav2Vec2Processor.from_pretrained(final)
    audio, _ = soundfile.read(str(spelled.parent / "utt1.wav"), dtype="float32")
    inputs = processor(audio, sampling_rate=16000, return_tensors="pt")
    with torch.inference_mode():
        expected = theirs(inputs.input_values).logits
        actual = ours(inputs.input_values)
    assert (actual - expected).abs().max() <= 1e-4
    # the encoder came from the pretrained checkpoint; the head is new, over the transcripts' letters
    assert ours.vocab.tokens[5:] == list("ABCDEF")
    pretrained_model = wav2vec2.checkpoints.load_pretrained(pretrained)
    frozen = pretrained_model.wav2vec2.feature_encoder.conv_layers[0].conv.weight
    assert torch.equal(ours.wav2vec2.feature_encoder.conv_layers[0].conv.weight, frozen)


def test_the_frozen_phase_moves_only_the_head_and_each_part_follows_its_learning_rate(pretrained, spelled,
                                                                                     tmp_path):
    # Oracle: AdamW's first update moves a parameter by lr * |g| / (|g| + eps): the learning rate itself where
    # the gradient is far above eps (1e-6), less where it is not.
    settings = FinetuneSettings(init=str(pretrained), train=str(spelled), out=str(tmp_path), max_steps=2,
                                freeze_steps=1, lr=1e-4, head_lr=1e-2, save_every=1, keep_checkpoints=2,
                                mask_time_prob=0.0, mask_feature_prob=0.0, layerdrop=0.0, max_batch_seconds=6)
    torch.manual_seed(settings.seed)
    initial = build_model(settings, read_manifest(spelled)).state_dict()
    finetune(settings)
    after = [torch.load(tmp_path / "checkpoints" / f"step-{n:07d}.pt", weights_only=True)["model"] for n in (1, 2)]
    factors = [tri_stage(step, 2) for step in (0, 1)]

    def moves(state: dict, before: dict, name: str) -> torch.Tensor:
        change = (state[name] - before[name]).abs()
        return change[change > 0]

    body = [n for n in initial if n.startswith("wav2vec2.encoder.") and n.endswith("weight")]
    assert all(torch.equal(after[0][n], initial[n]) for n in body)  # step 1: frozen
    assert moves(after[0], initial, "lm_head.weight").median() == pytest.approx(1e-2 * factors[0], rel=1e-3)
    for name in body:  # step 2: the body's first update
        assert moves(after[1], after[0], name).max() == pytest.approx(1e-4 * factors[1], rel=1e-2), name
    assert torch.equal(after[1]["wav2vec2.feature_encoder.conv_layers.0.conv.weight"],
                       initial["wav2vec2.feature_encoder.conv_layers.0.conv.weight"])


def test_reinit_top_starts_the_top_layers_afresh_and_keeps_the_rest(pretrained, spelled, tmp_path):
    # Oracle: the paper's initialisation by its formula (linear weights N(0, 0.02) with zero biases,
    # layer norms 1 and 0), against layers marked with a value no initialisation gives.
    init = tmp_path / "init"
    shutil.copytree(pretrained, init)
    state = safetensors.torch.load_file(init / "model.safetensors")
    safetensors.torch.save_file({k: v.fill_(0.5) if ".encoder.layers." in k else v for k, v in state.items()},
                                init / "model.safetensors")
    entries = read_manifest(spelled)
    model = build_model(FinetuneSettings(init=str(init), train=str(spelled), out="unused", reinit_top=1), entries)
    layers = model.wav2vec2.encoder.layers
    assert len(layers) == 2 and all(bool((p == 0.5).all()) for p in layers[0].parameters())
    for name, parameter in layers[1].named_parameters():
        if "layer_norm" in name:
            assert torch.equal(parameter, torch.full_like(parameter, 1.0 if name.endswith("weight") else 0.0)), name
        elif name.endswith("bias"):
            assert not parameter.any(), name
        else:
            assert abs(parameter.mean()) < 0.003 and 0.018 < parameter.std() < 0.022, name
    assert torch.equal(model.wav2vec2.encoder.pos_conv_embed.conv.bias, state[
        "wav2vec2.encoder.pos_conv_embed.conv.bias"])
    with pytest.raises(Wav2Vec2Error, match="between 0 and the model's 2 layers"):
        build_model(FinetuneSettings(init=str(init), train=str(spelled), out="unused", reinit_top=3), entries)


def test_bf16_training_on_cpu_follows_fp32_with_float32_weights(spelled, tmp_path):
    runs = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / precision
        final = finetune(FinetuneSettings(init="tiny", train=str(spelled), out=str(out), max_steps=6, lr=3e-3,
                                          log_every=1, mask_time_prob=0.0, mask_feature_prob=0.0,
                                          max_batch_seconds=20, precision=precision, train_feature_encoder=True))
        start = json.loads((out / "log.jsonl").read_text().splitlines()[0])
        assert start["precision"] == precision
        assert {p.dtype for p in wav2vec2.load_model(final).parameters()} == {torch.float32}
        runs[precision] = np.array([r["loss"] for r in records(out)])
    assert not np.array_equal(runs["bf16"], runs["fp32"])  # autocast took effect...
    np.testing.assert_allclose(runs["bf16"], runs["fp32"], rtol=0.02)  # ...and trains the same model


@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_speed_perturbation_plays_faster_and_higher(spelled, factor):
    """Oracle: a 200 Hz tone played `factor` times as fast lasts 1/factor as long at 200 x factor Hz;
    in a batch each utterance gets its own factor."""
    tone = np.sin(2 * np.pi * 200 * np.arange(32000) / 16000).astype(np.float32)
    faster = change_speed(tone, factor)
    assert len(faster) == pytest.approx(32000 / factor, abs=2)
    spectrum = np.abs(np.fft.rfft(faster * np.hanning(len(faster))))
    assert np.argmax(spectrum) * 16000 / len(faster) == pytest.approx(200 * factor, abs=0.5)

    entries = read_manifest(spelled)
    plain = Preprocessing(do_normalize=False)
    _, lengths, _ = load_labelled_batch(entries, [0, 1], plain)
    _, changed, _ = load_labelled_batch(entries, [0, 1], plain, speeds=[factor, 1.0])
    assert int(changed[0]) == pytest.approx(int(lengths[0]) / factor, abs=2)
    assert int(changed[1]) == int(lengths[1])


def test_resume_after_kill_repeats_the_uninterrupted_run(spelled, tmp_path):
    """With speed perturbation on: its factors too must be the same after a resume."""
    common = ["finetune", "--init", "tiny", "--train", str(spelled), "--max-steps", "80", "--save-every", "5",
              "--log-every", "1", "--lr", "1e-3", "--max-batch-seconds", "6", "--freeze-steps", "10",
              "--speed-perturb", "0.1"]
    whole = subprocess.run([COMMAND, *common, "--out", str(tmp_path / "whole")], capture_output=True, text=True,
                           timeout=600)
    assert whole.returncode == 0, whole.stderr
    killed = tmp_path / "killed"
    kill_after_first_checkpoint_then_resume(common, killed, 80)
    expected, actual = records(tmp_path / "whole"), records(killed)
    assert [r["step"] for r in actual] == [r["step"] for r in expected] == list(range(1, 81))
    for a, b in zip(actual, expected):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5), a["step"]
        assert a["lr"] == pytest.approx(b["lr"]) and a["transformer_frozen"] == b["transformer_frozen"]


def test_bad_labelled_data_is_skipped_counted_and_training_goes_on(spelled, tmp_path):
    folder = spelled.parent
    short = tmp_path / "short.wav"
    soundfile.write(str(short), (0.1 * np.random.default_rng(0).standard_normal(1600)).astype(np.float32), 16000)
    lines = [line if i == 0 else f"{folder}/{line}" for i, line in enumerate(spelled.read_text().splitlines())]
    lines[1:1] = [f"{folder / 'missing.wav'}\tABC", f"{short}\tABCDEF ABCDEF ABCDEF",  # 4 frames, 20 labels
                  f"{folder / 'utt2.wav'}\tAB 42 CD"]
    manifest = tmp_path / "train.tsv"
    manifest.write_text("\n".join(lines) + "\n")
    init = tmp_path / "init"  # a CTC checkpoint whose vocabulary has no digits
    make_vocab_model(init)
    with pytest.warns(UserWarning) as caught:
        finetune(FinetuneSettings(init=str(init), train=str(manifest), out=str(tmp_path / "run"), max_steps=4,
                                  log_every=1, max_batch_seconds=200))
    messages = " ".join(str(w.message) for w in caught)
    assert "'2'" in messages and "'4'" in messages and "missing.wav" in messages
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert log[0]["skipped"]["unknown characters"] == 1 and log[0]["skipped"]["unreadable"] == 1
    steps = [r for r in log if "loss" in r]
    assert all(np.isfinite(r["loss"]) for r in steps)  # the unalignable clip does not turn into NaN
    assert sum(r["unalignable"] for r in steps) >= 1


def make_vocab_model(folder: Path) -> None:
    from .conftest import make_hf_checkpoint
    make_hf_checkpoint(folder, "base")


@pytest.mark.parametrize("content", ["", "audio\ttext\n"])
def test_an_empty_manifest_is_a_one_line_error(tmp_path, content):
    manifest = tmp_path / "train.tsv"
    manifest.write_text(content)
    result = subprocess.run([COMMAND, "finetune", "--init", "tiny", "--train", str(manifest), "--out",
                             str(tmp_path / "run")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("wav2vec2: error:")


def test_torchrun_fine_tunes_with_two_processes(spelled, tmp_path):
    run = torchrun_two_processes(["finetune", "--init", "tiny", "--train", spelled, "--dev", spelled, "--max-steps", 3,
                                  "--eval-every", 3, "--log-every", 1, "--max-batch-seconds", 6, "--device", "cpu"],
                                 tmp_path / "run", port=29519)
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert log[0]["processes"] == 2
    assert [r["step"] for r in log if "loss" in r] == [1, 2, 3] and any("wer" in r for r in log)
    assert wav2vec2.load_model(run / "final").vocab.tokens[5:] == list("ABCDEF")


def test_fine_tuning_a_ctc_checkpoint_again_keeps_its_head(checkpoints, spelled):
    from wav2vec2.train.finetune import build_model

    init = wav2vec2.load_model(checkpoints["base"])
    entries = read_manifest(spelled)
    again = build_model(FinetuneSettings(init=str(checkpoints["base"]), train=str(spelled), out="unused"), entries)
    assert again.vocab.tokens == init.vocab.tokens
    for name, value in init.state_dict().items():
        assert torch.equal(again.state_dict()[name], value), name
