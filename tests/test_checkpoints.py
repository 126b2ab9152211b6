"""Loading checkpoints: file layouts, the Hub cache, and clear errors for broken folders."""

from __future__ import annotations

import json
import shutil

import huggingface_hub.constants
import pytest
import torch
from safetensors.torch import load_file

import wav2vec2
from wav2vec2 import CheckpointError

WAVEFORM = torch.randn(1, 9_000, generator=torch.Generator().manual_seed(0))


def logits(model) -> torch.Tensor:
    with torch.inference_mode():
        return model(WAVEFORM)


def copy_checkpoint(source, target, skip=()):
    target.mkdir(parents=True, exist_ok=True)
    for path in source.iterdir():
        if path.name not in skip:
            shutil.copy(path, target / path.name)
    return target


def test_pickled_weights_load_with_weights_only(checkpoints, tmp_path):
    folder = copy_checkpoint(checkpoints["lv60"], tmp_path / "bin", skip={"model.safetensors"})
    torch.save(load_file(checkpoints["lv60"] / "model.safetensors"), folder / "pytorch_model.bin")
    assert torch.equal(logits(wav2vec2.load_model(folder)), logits(wav2vec2.load_model(checkpoints["lv60"])))


def test_a_pickle_that_runs_code_is_refused(checkpoints, tmp_path):
    folder = copy_checkpoint(checkpoints["base"], tmp_path / "evil", skip={"model.safetensors"})
    torch.save({"payload": shutil.rmtree}, folder / "pytorch_model.bin")  # not a tensor: refused
    with pytest.raises(CheckpointError, match="could not be read"):
        wav2vec2.load_model(folder)


def test_both_preprocessor_file_names_are_read(checkpoints, tmp_path):
    """Hub checkpoints have preprocessor_config.json; transformers 5 writes processor_config.json."""
    names = {p.name for p in checkpoints["lv60"].iterdir()}
    settings_file = "processor_config.json" if "processor_config.json" in names else "preprocessor_config.json"
    assert wav2vec2.load_model(checkpoints["lv60"]).preprocessing.return_attention_mask
    folder = copy_checkpoint(checkpoints["lv60"], tmp_path / "other", skip={settings_file})
    values = json.loads((checkpoints["lv60"] / settings_file).read_text())
    values = values.get("feature_extractor", values)
    other = "preprocessor_config.json" if settings_file == "processor_config.json" else "processor_config.json"
    (folder / other).write_text(json.dumps(values if other == "preprocessor_config.json"
                                           else {"feature_extractor": values}))
    model = wav2vec2.load_model(folder)
    assert model.preprocessing.return_attention_mask and model.preprocessing.do_normalize


def fake_hub_cache(root, repo_id, folder):
    """The on-disk layout huggingface_hub uses: refs/main -> snapshots/<commit>/files."""
    repo = root / ("models--" + repo_id.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    copy_checkpoint(folder, repo / "snapshots" / commit)


@pytest.mark.parametrize("offline", [True, False])
def test_hub_id_loads_from_the_cache(checkpoints, tmp_path, monkeypatch, offline):
    fake_hub_cache(tmp_path, "someone/tiny-wav2vec2", checkpoints["base"])
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", offline)
    # without network (as here) an online look-up fails and falls back to the cache
    model = wav2vec2.load_model("someone/tiny-wav2vec2")
    assert torch.equal(logits(model), logits(wav2vec2.load_model(checkpoints["base"])))


def test_unknown_hub_id_offline_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(CheckpointError, match="nobody/nothing: not a local folder"):
        wav2vec2.load_model("nobody/nothing")


def test_missing_folder(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint folder"):
        wav2vec2.load_model(tmp_path / "absent")


@pytest.mark.parametrize("broken, message", [
    ("no_config", "no config.json"),
    ("bad_config", "not valid JSON"),
    ("no_vocab", "no vocab.json"),
    ("no_weights", "no weights"),
    ("truncated_weights", "could not be read"),
    ("missing_key", "1 missing weight"),
    ("unexpected_key", "1 unexpected weight"),
    ("wrong_shape", "mis-shaped weight"),
    ("no_head", "no CTC head"),
])
def test_broken_checkpoints_name_the_problem(checkpoints, tmp_path, broken, message):
    folder = copy_checkpoint(checkpoints["base"], tmp_path / broken)
    weights = folder / "model.safetensors"
    state = load_file(weights)
    from safetensors.torch import save_file
    if broken == "no_config":
        (folder / "config.json").unlink()
    elif broken == "bad_config":
        (folder / "config.json").write_text("{ not json")
    elif broken == "no_vocab":
        (folder / "vocab.json").unlink()
    elif broken == "no_weights":
        weights.unlink()
    elif broken == "truncated_weights":
        weights.write_bytes(weights.read_bytes()[:1000])
    elif broken == "missing_key":
        del state["wav2vec2.encoder.layer_norm.bias"]
        save_file(state, str(weights))
    elif broken == "unexpected_key":
        state["wav2vec2.encoder.extra_thing"] = torch.zeros(3)
        save_file(state, str(weights))
    elif broken == "wrong_shape":
        state["lm_head.bias"] = torch.zeros(7)
        save_file(state, str(weights))
    elif broken == "no_head":
        del state["lm_head.weight"], state["lm_head.bias"]
        save_file(state, str(weights))
    with pytest.raises(CheckpointError, match=message) as error:
        wav2vec2.load_model(folder)
    assert "\n" not in str(error.value)
    if broken in ("missing_key", "unexpected_key", "wrong_shape"):
        assert {"missing_key": "encoder.layer_norm.bias", "unexpected_key": "extra_thing",
                "wrong_shape": "lm_head.bias"}[broken] in str(error.value)


def test_save_is_atomic_when_the_disk_fills(checkpoints, tmp_path, monkeypatch):
    model = wav2vec2.load_model(checkpoints["base"])
    model.save(tmp_path)
    before = (tmp_path / "model.safetensors").read_bytes()

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("safetensors.torch.save_file", full_disk)
    with pytest.raises(CheckpointError, match="No space left on device"):
        model.save(tmp_path)
    assert (tmp_path / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("."))== []
