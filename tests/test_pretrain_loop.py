"""The pretraining loop: it learns, it saves what transformers loads, it resumes exactly after a
kill, two processes equal one, and bad data or a full disk are handled."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

from wav2vec2 import Wav2Vec2Error
from wav2vec2.checkpoints import load_pretrained
from wav2vec2.errors import CheckpointError
from wav2vec2.model import frame_lengths
from wav2vec2.pretraining import sample_distractors, span_mask
from wav2vec2.train import loop
from wav2vec2.train.pretrain import PretrainSettings, pretrain, random_choices, temperature_at
from wav2vec2.train.presets import PRESETS, preset_config

from .conftest import kill_after_first_checkpoint_then_resume, torchrun_two_processes, write_phone_corpus

COMMAND = str(Path(sys.executable).parent / "wav2vec2")
QUIET = dict(hidden_dropout=0.0, activation_dropout=0.0, attention_dropout=0.0, feat_proj_dropout=0.0,
             final_dropout=0.0, layerdrop=0.0)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_phone_corpus(tmp_path_factory.mktemp("phones"), count=4, seconds=2.0)


@pytest.fixture(scope="module")
def quiet_config(tmp_path_factory) -> Path:
    """The tiny preset without dropout, so that runs can be compared number for number."""
    path = tmp_path_factory.mktemp("config") / "config.json"
    path.write_text(json.dumps({**PRESETS["tiny"], **QUIET}))
    return path


def records(run: Path) -> list[dict]:
    return [r for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if "step" in r]


def cli(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([COMMAND, *map(str, args)], capture_output=True, text=True, timeout=600, **kwargs)


@pytest.mark.slow
def test_a_tiny_model_learns_the_contrastive_task(corpus, tmp_path):
    negatives = 20
    pretrain(PretrainSettings(data=str(corpus), out=str(tmp_path), config="tiny", max_steps=400, lr=3e-3,
                              warmup=0.025, num_negatives=negatives, max_batch_seconds=8, max_seconds=2,
                              log_every=25, save_every=1000))
    log = records(tmp_path)
    first, last = log[0], log[-1]
    chance = math.log(negatives + 1)
    assert first["contrastive_loss"] > 0.95 * chance
    assert last["contrastive_loss"] < 0.7 * chance  # well below log(K+1)
    assert last["accuracy"] > 5 / (negatives + 1)  # well above chance
    assert 1 < last["perplexity"] <= 2 * 32
    for key in ("step", "loss", "contrastive_loss", "diversity_loss", "feature_penalty", "accuracy",
                "perplexity", "temperature", "lr"):
        assert key in last


def test_final_checkpoint_loads_in_transformers_with_the_same_loss(corpus, tmp_path):
    final = pretrain(PretrainSettings(data=str(corpus), out=str(tmp_path), max_steps=3, num_negatives=10,
                                      max_seconds=2, log_every=1, models_every=2))
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["step-0000002"]  # a model along the way
    along_the_way = transformers.Wav2Vec2ForPreTraining.from_pretrained(tmp_path / "models" / "step-0000002")
    assert not torch.equal(along_the_way.quantizer.codevectors, load_pretrained(final).quantizer.codevectors)
    hours = [r["audio_hours"] for r in records(tmp_path)]
    assert len(hours) == 3 and 0 < hours[0] < hours[1] < hours[2]
    ours = load_pretrained(final).eval()
    theirs = transformers.Wav2Vec2ForPreTraining.from_pretrained(final).eval()
    waveform = torch.randn(2, 16_000, generator=torch.Generator().manual_seed(0))
    frames = int(frame_lengths(torch.tensor(16_000), ours.config))
    time_mask = span_mask([frames, frames], frames, rng=np.random.default_rng(0))
    distractors = sample_distractors(time_mask, 10, rng=np.random.default_rng(1))
    with torch.no_grad():
        expected = theirs(waveform, mask_time_indices=time_mask, sampled_negative_indices=distractors)
        actual = ours(waveform, None, time_mask, distractors)
    masked = int(time_mask.sum())
    assert actual.contrastive_loss.item() * masked == pytest.approx(expected.contrastive_loss.item(), rel=1e-4)
    assert actual.perplexity.item() == pytest.approx(expected.codevector_perplexity.item(), rel=1e-4)
    assert (tmp_path / "checkpoints" / "step-0000003.pt").is_file()


def test_schedules_follow_the_length_of_the_run_and_the_log_says_which(corpus, tmp_path):
    pretrain(PretrainSettings(data=str(corpus), out=str(tmp_path), max_steps=4, log_every=1, num_negatives=5,
                              max_seconds=2, warmup=0.5, gumbel_anneal=0.5, diversity_weight=0.5))
    start = json.loads((tmp_path / "log.jsonl").read_text().splitlines()[0])
    log = records(tmp_path)
    # 2 warm-up updates, then linear decay to 0 at update 4; tau = 2 * (0.5/2)**(t/2) for t < 2, then 0.5
    assert [r["lr"] for r in log] == pytest.approx([5e-4 * f for f in (1 / 2, 1, 1, 1 / 2)])
    assert [r["temperature"] for r in log] == pytest.approx([2.0, 1.0, 0.5, 0.5])
    assert start["schedules"]["temperature"] == "2 * (0.5/2)**(step/2) until update 2, then 0.5"
    assert "over 2 updates" in start["schedules"]["lr"]
    for record in log:  # one batch per interval: its perplexity is the sum of the groups'
        assert sum(record["group_perplexity"]) == pytest.approx(record["perplexity"], rel=1e-5)
        assert 0 < record["codes_used"] <= 1
        terms = record["contrastive_loss"] + 0.5 * record["diversity_loss"] + 10 * record["feature_penalty"]
        assert record["loss"] == pytest.approx(terms, rel=1e-5)  # --diversity-weight 0.5, not the config's 0.1
    assert json.loads((tmp_path / "final" / "config.json").read_text())["diversity_loss_weight"] == 0.5
    assert start["feature_encoder"] == {"grad_mult": 0.1, "penalty_weight": 10.0, "normalized_input": False}
    paper = PretrainSettings(data="", out="", max_steps=4, gumbel_decay=0.9)  # the per-update factor instead
    assert [temperature_at(step, paper) for step in range(3)] == pytest.approx([2.0, 1.8, 1.62])


def test_the_layer_family_pretrains_as_fairseqs_large_recipe(corpus, tmp_path):
    """fairseq's large recipe: full gradient to the feature encoder, no feature penalty, normalised input."""
    config = tmp_path / "config.json"
    config.write_text(json.dumps({**PRESETS["tiny"], "feat_extract_norm": "layer", "do_stable_layer_norm": True}))
    run = tmp_path / "run"
    pretrain(PretrainSettings(data=str(corpus), out=str(run), config=str(config), max_steps=2, log_every=1,
                              num_negatives=5, max_seconds=2))
    start = json.loads((run / "log.jsonl").read_text().splitlines()[0])
    assert start["feature_encoder"] == {"grad_mult": 1.0, "penalty_weight": 0.0, "normalized_input": True}
    for record in records(run):
        assert record["feature_penalty"] > 0  # measured, but not in the loss
        assert record["loss"] == pytest.approx(record["contrastive_loss"] + 0.1 * record["diversity_loss"], rel=1e-5)


def test_a_run_stuck_at_chance_warns_once_in_one_line(corpus, tmp_path):
    result = cli("pretrain", "--data", corpus, "--out", tmp_path, "--max-steps", 60, "--log-every", 5, "--lr", 0,
                 "--num-negatives", 5, "--max-seconds", 2, "--max-batch-seconds", 2)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if "warn" in line.lower()]
    assert len(lines) == 1 and lines[0].startswith("wav2vec2: warning: update ") and "chance" in lines[0], lines
    bad = cli("pretrain", "--data", corpus, "--out", tmp_path / "bad", "--warmup", 2)
    assert bad.returncode == 2 and bad.stderr.strip() == ("wav2vec2: error: --warmup is a share of --max-steps, "
                                                          "from 0 to 1, not 2.0")


def test_cross_utterance_distractors(corpus, tmp_path):
    settings = PretrainSettings(data=str(corpus), out=str(tmp_path), max_steps=2, num_negatives=4,
                                cross_negatives=3, max_seconds=2, max_batch_seconds=8, log_every=1)
    config = preset_config("tiny")
    time_mask, distractors, _ = random_choices([0, 1], 16_000, config, settings, index=0)
    frames = time_mask.shape[1]
    steps = np.flatnonzero(time_mask.numpy())  # flattened indices of the masked steps
    cross = distractors[time_mask][:, 4:].numpy()
    assert cross.shape == (len(steps), 3)
    assert set(cross.flatten()) <= set(steps)  # masked steps of the batch...
    assert not (cross == steps[:, None]).any()  # ...never the step itself...
    assert (cross // frames != steps[:, None] // frames).any()  # ...and from the other utterance too
    pretrain(settings)
    assert records(tmp_path)[-1]["step"] == 2


def test_resume_after_kill_repeats_the_uninterrupted_run(corpus, tmp_path):
    """With dropout and LayerDrop on: every step seeds its own random numbers."""
    common = ["pretrain", "--data", corpus, "--config", "tiny", "--max-steps", 40, "--save-every", 5,
              "--log-every", 1, "--num-negatives", 10, "--max-batch-seconds", 4, "--max-seconds", 2]
    whole = cli(*common, "--out", tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr

    killed = tmp_path / "killed"
    kill_after_first_checkpoint_then_resume(common, killed, 40)
    expected, actual = records(tmp_path / "whole"), records(killed)
    assert [r["step"] for r in actual] == [r["step"] for r in expected] == list(range(1, 41))
    for a, b in zip(actual, expected):
        for key in ("loss", "contrastive_loss", "diversity_loss", "accuracy", "lr", "temperature", "audio_hours"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), (a["step"], key)


def test_a_second_run_into_the_same_folder_needs_resume(corpus, tmp_path):
    settings = PretrainSettings(data=str(corpus), out=str(tmp_path), max_steps=1, num_negatives=5, max_seconds=2)
    pretrain(settings)
    with pytest.raises(Wav2Vec2Error, match="--resume"):
        pretrain(settings)


def test_two_processes_compute_the_loss_of_one_on_the_union(corpus, quiet_config, tmp_path):
    common = ["--data", corpus, "--config", quiet_config, "--max-steps", 1, "--log-every", 1,
              "--num-negatives", 10, "--max-seconds", 2, "--device", "cpu"]
    alone = cli("pretrain", *common, "--out", tmp_path / "one", "--max-batch-seconds", 8)
    assert alone.returncode == 0, alone.stderr
    pair = torchrun_two_processes(["pretrain", *common, "--max-batch-seconds", 4], tmp_path / "two", port=29517)
    start = [json.loads(line) for line in (pair / "log.jsonl").read_text().splitlines()][0]
    assert start["processes"] == 2 and start["batches"] == 2
    one, two = records(tmp_path / "one")[0], records(pair)[0]
    for key in ("loss", "contrastive_loss", "diversity_loss", "feature_penalty", "accuracy", "perplexity"):
        assert two[key] == pytest.approx(one[key], rel=1e-5), key
    assert two["masked_steps"] == one["masked_steps"]  # counted over both processes
    assert two["group_perplexity"] == pytest.approx(one["group_perplexity"], rel=1e-5)
    assert two["codes_used"] == one["codes_used"]


def test_unreadable_and_short_files_are_skipped_and_counted(corpus, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for clip in corpus.iterdir():
        (data / clip.name).write_bytes(clip.read_bytes())
    (data / "broken.wav").write_bytes(b"RIFF not really")
    (data / "notes.flac").write_text("text")
    import soundfile
    soundfile.write(str(data / "short.wav"), np.zeros(300, dtype=np.float32), 16000)  # < receptive field
    with pytest.warns(UserWarning, match="skipping"):
        pretrain(PretrainSettings(data=str(data), out=str(tmp_path / "run"), max_steps=1, num_negatives=5,
                                  max_seconds=2))
    start = json.loads((tmp_path / "run" / "log.jsonl").read_text().splitlines()[0])
    assert start["skipped"] == {"unreadable": 2, "too short": 1} and start["utterances"] == 4


@pytest.mark.parametrize("case", ["empty-folder", "no-audio"])
def test_no_usable_data_is_a_one_line_error(tmp_path, case):
    data = tmp_path / "data"
    data.mkdir()
    if case == "no-audio":
        (data / "a.wav").write_text("not audio")
    result = cli("pretrain", "--data", data, "--out", tmp_path / "run", "--max-steps", 1)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("wav2vec2: error:")


def test_a_full_disk_keeps_the_previous_checkpoint(corpus, tmp_path, monkeypatch):
    saves = []
    real_save = torch.save

    def fill_up(state, path, *args, **kwargs):
        saves.append(path)
        if len(saves) == 2:
            Path(path).write_bytes(b"partial")  # a half-written file, then the disk is full
            raise OSError(28, "No space left on device")
        return real_save(state, path, *args, **kwargs)

    monkeypatch.setattr(loop.torch, "save", fill_up)
    with pytest.raises(CheckpointError, match="No space left on device.*previous checkpoint is intact"):
        pretrain(PretrainSettings(data=str(corpus), out=str(tmp_path), max_steps=4, save_every=2,
                                  num_negatives=5, max_seconds=2))
    checkpoints = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert checkpoints == ["step-0000002.pt"]
    assert loop.load_checkpoint(tmp_path / "checkpoints" / "step-0000002.pt")["step"] == 2


def test_plot_draws_the_curves(corpus, tmp_path):
    pretrain(PretrainSettings(data=str(corpus), out=str(tmp_path), max_steps=4, log_every=1, num_negatives=5,
                              max_seconds=2))
    result = cli("plot", tmp_path)
    assert result.returncode == 0, result.stderr
    png = tmp_path / "curves.png"
    assert result.stdout.strip() == str(png) and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_draws_code_usage_beside_loss_and_accuracy(corpus, tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from wav2vec2.plot import plot_run

    pretrain(PretrainSettings(data=str(corpus), out=str(tmp_path), max_steps=2, log_every=1, num_negatives=5,
                              max_seconds=2))
    figures = []
    monkeypatch.setattr(plt, "close", figures.append)  # keep the figure to look at
    assert plot_run(tmp_path).is_file()
    axes = [axis for axis in figures[0].axes if axis.get_visible()]
    titles = [axis.get_title() for axis in axes]
    assert titles[:6] == ["loss", "contrastive loss", "contrastive accuracy", "code perplexity",
                          "code perplexity per group", "share of codes used"]
    assert len(axes[4].get_lines()) == 2  # one line per codebook group
