"""ONNX export: the network (waveform -> CTC logits) as a graph that onnxruntime runs.

The graph takes `waveform` (batch, samples) float32, and for checkpoints that use an attention
mask (the lv60 family, `preprocessing.return_attention_mask`) also `attention_mask` (batch,
samples) int64, 1 on real samples; it returns `logits` (batch, frames, vocab). Batch and length
are dynamic. While tracing, the network runs plain PyTorch operations (kernels.plain_ops): the
CPU kernels' block loops would be recorded at the traced length. The vocabulary and the
preprocessing settings go into the model's metadata, so that the file is enough to transcribe.

`precision="int8"` quantizes the float32 graph with onnxruntime's dynamic quantization of the
matrix products (MatMul only: int8 weights, activations quantized per tensor as they come).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import tempfile
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from .errors import Wav2Vec2Error
from .model import Wav2Vec2ForCTC

EXPORT_PRECISIONS = ("fp32", "int8")
OPSET = 17
INSTALL_HINT = "pip install 'wav2vec2[onnx]' (or: pip install onnx)"


class _Logits(nn.Module):
    """The model's forward with the inputs the graph has."""

    def __init__(self, model: Wav2Vec2ForCTC, with_mask: bool):
        super().__init__()
        self.model, self.with_mask = model, with_mask

    def forward(self, waveform: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(waveform, attention_mask if self.with_mask else None)


def export_onnx(model: Wav2Vec2ForCTC, path: str | os.PathLike, precision: str = "fp32") -> Path:
    """Write `model` to `path` as ONNX (fp32, or int8 products). Raises Wav2Vec2Error when the
    onnx package is missing or the file cannot be written."""
    if precision not in EXPORT_PRECISIONS:
        raise ValueError(f"export precision must be one of {', '.join(EXPORT_PRECISIONS)}, not {precision!r}")
    try:
        import onnx
    except ImportError:
        raise Wav2Vec2Error(f"ONNX export needs the onnx package: {INSTALL_HINT}") from None
    if getattr(model, "precision", "fp32") != "fp32":
        raise ValueError(f"export a float32 model (this one runs in {model.precision}); "
                         "int8 is chosen with precision='int8' here")
    path = Path(path)
    with_mask = model.preprocessing.return_attention_mask
    plain = copy.deepcopy(model).float().cpu().eval()
    positional = plain.wav2vec2.encoder.pos_conv_embed
    weighted = positional.conv  # weight-normed: one constant weight, not g * v / |v| in the graph
    positional.conv = nn.Conv1d(weighted.in_channels, weighted.out_channels, weighted.kernel_size[0],
                                padding=weighted.padding[0], groups=weighted.groups)
    positional.conv.load_state_dict({"weight": weighted.weight.detach(), "bias": weighted.bias.detach()})
    waveform = torch.randn(2, 16000)
    mask = torch.ones(2, 16000, dtype=torch.long)
    mask[1, 12000:] = 0
    inputs, names = ((waveform, mask), ["waveform", "attention_mask"]) if with_mask else ((waveform,), ["waveform"])
    axes = {name: {0: "batch", 1: "samples"} for name in names}
    axes["logits"] = {0: "batch", 1: "frames"}
    try:
        with tempfile.TemporaryDirectory(prefix="wav2vec2-export-") as folder:
            float_path = Path(folder) / "model.onnx"
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # tracer warnings about shapes taken as constants: checked in tests
                torch.onnx.export(_Logits(plain, with_mask), inputs, str(float_path), input_names=names,
                                  output_names=["logits"], dynamic_axes=axes, opset_version=OPSET, dynamo=False)
            graph = onnx.load(str(float_path))
            metadata = {"vocab": model.vocab.files()["vocab.json"] if model.vocab else "",
                        "preprocessing": json.dumps(model.preprocessing.to_dict()),
                        "samples_per_frame": str(model.config.samples_per_frame)}
            for key, value in metadata.items():
                graph.metadata_props.add(key=key, value=value)
            onnx.save(graph, str(float_path))
            if precision == "int8":
                from onnxruntime.quantization import QuantType, quantize_dynamic

                logging.disable(logging.WARNING)  # its advice to pre-process the graph, on the root logger
                try:
                    quantize_dynamic(float_path, path, op_types_to_quantize=["MatMul"], weight_type=QuantType.QInt8)
                finally:
                    logging.disable(logging.NOTSET)
            else:
                path.write_bytes(float_path.read_bytes())
    except OSError as error:
        raise Wav2Vec2Error(f"{path}: could not be written ({error.strerror or error})") from None
    return path
