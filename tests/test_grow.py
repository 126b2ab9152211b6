"""recipes/synthetic/grow.py: a grown model computes the logits of the model it grew from."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

from wav2vec2.checkpoints import load_model

GROW = Path(__file__).resolve().parents[1] / "recipes" / "synthetic" / "grow.py"


def test_grown_model_keeps_the_logits(checkpoints, speechlike, tmp_path):
    """Oracle: transformers' model on the original checkpoint. The grown one has twice the
    layers and a wider feed-forward, and at least one new weight is not zero."""
    import transformers

    out = tmp_path / "grown"
    subprocess.run([sys.executable, str(GROW), "--model", str(checkpoints["lv60"]), "--out", str(out),
                    "--depth", "2", "--ffn", "96"], check=True, capture_output=True, text=True)
    reference = transformers.Wav2Vec2ForCTC.from_pretrained(checkpoints["lv60"]).eval()
    grown = load_model(out).eval()
    assert grown.config.num_hidden_layers == 2 * reference.config.num_hidden_layers
    assert grown.config.intermediate_size == 96
    audio = torch.as_tensor(speechlike)[None]
    with torch.no_grad():
        expected = reference(audio).logits
        actual = grown(audio)
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)
    copy = grown.wav2vec2.encoder.layers[1]
    assert copy.attention.in_proj.weight.abs().sum() > 0
    assert grown.wav2vec2.encoder.layers[0].feed_forward.intermediate_dense.weight[64:].abs().sum() > 0


def test_post_ln_model_is_refused(checkpoints, tmp_path):
    result = subprocess.run([sys.executable, str(GROW), "--model", str(checkpoints["base"]), "--out",
                             str(tmp_path / "grown")], capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == ["grow.py: only pre-LN models (do_stable_layer_norm) can grow "
                                                  "without changing their output"]
