"""ONNX export: onnxruntime runs the graph with our logits (fp32 within 1e-4), for both families,
at batch sizes and lengths other than the traced ones, with the attention mask of the lv60
family; the int8 graph runs and stays close; a missing onnx package is one clear error."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

import wav2vec2
from wav2vec2.cli import main
from wav2vec2.errors import Wav2Vec2Error
from wav2vec2.export import export_onnx
from wav2vec2.model import frame_lengths
from .test_model import batch_with_padding

onnx = pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")

TOLERANCE = 1e-4


def run_graph(path, waveform: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {"waveform": waveform.numpy()}
    if mask is not None:
        feeds["attention_mask"] = mask.numpy()
    return torch.from_numpy(session.run(["logits"], feeds)[0])


@pytest.mark.parametrize("family", ["base", "lv60"])
def test_onnxruntime_gives_our_logits(checkpoints, family, tmp_path):
    model = wav2vec2.load_model(checkpoints[family])
    path = export_onnx(model, tmp_path / "model.onnx")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [node.name for node in session.get_inputs()]
    assert names == (["waveform", "attention_mask"] if family == "lv60" else ["waveform"])
    for lengths in ([5_000], [30_001], [8_000, 12_345, 20_000]):  # traced with 2 x 16000
        waveform, mask = batch_with_padding(lengths)
        mask = mask if family == "lv60" else None
        with torch.inference_mode():
            expected = model(waveform, mask)
        actual = run_graph(path, waveform, mask)
        assert actual.shape == expected.shape
        for i, frames in enumerate(frame_lengths(torch.tensor(lengths), model.config)):
            assert (actual[i, :frames] - expected[i, :frames]).abs().max() <= TOLERANCE, (lengths, i)
    metadata = {entry.key: entry.value for entry in onnx.load(str(path)).metadata_props}
    assert json.loads(metadata["vocab"]) == json.loads((checkpoints[family] / "vocab.json").read_text())
    assert json.loads(metadata["preprocessing"])["return_attention_mask"] == (family == "lv60")
    assert int(metadata["samples_per_frame"]) == 320


@pytest.mark.parametrize("family", ["base", "lv60"])
def test_int8_export_runs_and_stays_close(checkpoints, family, tmp_path):
    model = wav2vec2.load_model(checkpoints[family])
    fp32 = export_onnx(model, tmp_path / "fp32.onnx")
    int8 = export_onnx(model, tmp_path / "int8.onnx", precision="int8")
    graph = onnx.load(str(int8))
    assert any(node.op_type in ("MatMulInteger", "DynamicQuantizeMatMul") for node in graph.graph.node)
    waveform, mask = batch_with_padding([16_000, 11_000], seed=1)
    mask = mask if family == "lv60" else None
    with torch.inference_mode():
        expected = model(waveform, mask)
    actual = run_graph(int8, waveform, mask)
    error = (actual - expected).pow(2).sum() / expected.pow(2).sum()
    assert 10 * torch.log10(1 / error) > 20  # SQNR in dB
    assert int8.stat().st_size < fp32.stat().st_size


def test_export_command_and_a_missing_onnx_package(checkpoints, tmp_path, capsys, monkeypatch):
    out = tmp_path / "model.onnx"
    assert main(["export", str(checkpoints["lv60"]), str(out), "--precision", "int8"]) == 0
    assert out.is_file() and str(out) in capsys.readouterr().out
    assert main(["export", str(tmp_path / "missing"), str(out)]) == 1
    assert "no such checkpoint folder" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now fails
    with pytest.raises(Wav2Vec2Error, match=r"pip install"):
        export_onnx(wav2vec2.load_model(checkpoints["base"]), tmp_path / "other.onnx")
    assert main(["export", str(checkpoints["base"]), str(tmp_path / "other.onnx")]) == 1
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "onnx" in error and "pip install" in error


def test_export_keeps_the_model_usable(checkpoints, tmp_path):
    """Exporting works on a copy: the model's own CPU kernels and weight norm are untouched."""
    model = wav2vec2.load_model(checkpoints["base"])
    waveform = torch.randn(1, 9_000)
    with torch.inference_mode():
        before = model(waveform)
        export_onnx(model, tmp_path / "model.onnx")
        after = model(waveform)
    assert torch.equal(before, after)
    assert np.isfinite(after.numpy()).all()
