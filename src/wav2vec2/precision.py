"""Reduced precision for inference on a CPU: bfloat16 where the CPU multiplies it in hardware
(AMX), int8 where int8 dot products make a model faster than in float32, float32 otherwise.

`apply_precision(model, "auto" | "fp32" | "bf16" | "int8")` converts a loaded model in place.
In both reduced precisions the first convolution of the feature encoder and its normalisation
stay in float32 (the waveform's wide dynamic range; a GroupNorm folded into the weights), and
so does the CTC head, whose logits feed the softmax of decoding.

* int8: the matrix products of the six later convolutions and of the linear layers (feature
  projection, attention projections, feed-forward) are int8 (kernels.py: per-frame activation
  scales, per-channel weight scales, int32 sums); normalisation, activations, the positional
  convolution and the last layer's second feed-forward product stay float32 (on the demo model
  that product alone moved the best token on 0.2 % of the frames); attention itself (its two
  products and softmax) runs in bf16 on CPUs with bf16 products (BF16_FLAGS), else float32.
* bf16: everything after the first convolution runs in bfloat16 (PyTorch's layer norm
  accumulates in float32 inside); attention a block of frames at a time (kernels.blocked_attention).
* fp32 on AMD CPUs with AVX-512: the same float32 network, its products computed by oneDNN
  rather than MKL (use_onednn_fp32).

tests/test_precision.py measures what this costs in accuracy (logits SQNR against float32).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .kernels import (BlockedAttention, Int8FeedForward, Int8Linear, Int8TimeMajorConv, OneDnnLinear,
                      TimeMajorProduct, fold_group_norm, plain_ops, tap_major, time_major_conv)
from .model import FeatureEncoder, Wav2Vec2ForCTC

PRECISIONS = ("auto", "fp32", "bf16", "int8")

# Where `auto` chooses int8: a CPU with int8 dot-product instructions, and a model wide enough
# that its products outweigh quantizing and rescaling. Measured on one thread of an Intel Xeon
# with AVX-512 VNNI and no AMX, whole forward passes against float32: base (768 wide, 30 s of
# audio) 1.5-1.6x faster, large (1024, 10 s) 1.7-2.0x, a 256-wide model 0.93-0.96x (slower), and
# the 32-wide "tiny" feed-forward block 3x slower. CPUs without VNNI are unmeasured: fp32.
INT8_FLAGS = frozenset({"avx512_vnni", "avx_vnni"})
INT8_MIN_WIDTH = 512
# CPUs with bf16 products in hardware: AMX tiles, or AVX-512 BF16 dot products. Without AMX,
# `auto` chooses bf16 for models narrower than INT8_MIN_WIDTH but at least BF16_MIN_WIDTH wide
# (measured at 256; narrower ones are unmeasured). Training's `auto` uses the same flags.
BF16_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})
BF16_MIN_WIDTH = 256


def cpuinfo_field(names: tuple[str, ...], cpuinfo: str = "/proc/cpuinfo") -> str | None:
    """The value of the first line of /proc/cpuinfo that starts with one of `names` (the first
    processor's), or None where there is none or no such file."""
    try:
        with open(cpuinfo, encoding="utf-8") as info:
            for line in info:
                if line.startswith(names):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_vendor(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's vendor as Linux names it (GenuineIntel, AuthenticAMD); empty where unknown."""
    return cpuinfo_field(("vendor_id",), cpuinfo) or ""


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU's feature flags as Linux lists them (`lscpu`; "Features" on ARM); empty elsewhere."""
    return frozenset((cpuinfo_field(("flags", "Features"), cpuinfo) or "").split())


def check_precision(precision: str, device: str | torch.device = "cpu") -> None:
    """Raise ValueError for an unknown precision, or a reduced one asked of a GPU."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision in ("bf16", "int8") and torch.device(device).type != "cpu":
        raise ValueError(f"precision {precision} is for CPUs; on {device} use fp32")


def resolve_precision(precision: str, device: str | torch.device = "cpu", flags: frozenset[str] | None = None,
                      hidden_size: int = 768) -> str:
    """The precision to run at. `auto` becomes bf16 on a CPU with AMX (amx_bf16); int8 on a CPU
    with int8 dot products (INT8_FLAGS) for a model at least INT8_MIN_WIDTH wide; bf16 for a
    narrower one at least BF16_MIN_WIDTH wide on a CPU with BF16_FLAGS; else fp32, and fp32 on
    GPUs. `flags` are the CPU's (cpu_flags() by default)."""
    check_precision(precision, device)
    if precision != "auto":
        return precision
    if torch.device(device).type != "cpu":
        return "fp32"
    flags = cpu_flags() if flags is None else flags
    if "amx_bf16" in flags:
        return "bf16"
    if flags & INT8_FLAGS and hidden_size >= INT8_MIN_WIDTH:
        return "int8"
    # Measured on an AMD EPYC with AVX-512 BF16, two threads: the 256-wide demo model on the 400
    # `test` utterances in 4.8 s in bf16, 5.4 s in int8, 7.0 s in fp32 (base, 30 s: int8 0.99 s,
    # bf16 1.12 s, fp32 2.49 s, hence int8 above for wide models).
    if flags & BF16_FLAGS and hidden_size >= BF16_MIN_WIDTH:
        return "bf16"
    return "fp32"


class LowPrecisionFeatureEncoder(FeatureEncoder):
    """The feature encoder for inference in bf16 or int8, or float32 through oneDNN: the first
    convolution in float32 (with its GroupNorm folded, as in kernels.time_major_feature_encoder),
    every later convolution a product module (kernels.TimeMajorProduct or kernels.Int8TimeMajorConv)
    in time-major layout.
    Holds the same ConvLayers (the same parameters, state dict and names) as the encoder it
    replaces.

    All seven convolutions run for `output_frames` output frames at a time, each layer on just
    the frames that the block needs (neighbouring blocks share kernel - stride frames per layer,
    computed twice): the intermediate signals are then a few MB that the allocator reuses from
    block to block, instead of hundreds of MB of fresh memory, whose first touch costs more
    than the int8 products themselves on some machines.
    """

    output_frames = 32

    def __init__(self, encoder: FeatureEncoder, products: list[nn.Module]):
        nn.Module.__init__(self)
        self.conv_layers = encoder.conv_layers
        self.products = nn.ModuleList(products)  # one per convolution after the first

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        if plain_ops():  # traced for export: the float convolutions, as FeatureEncoder does then
            return super().forward(waveform)
        return torch.stack([self.encode(w.contiguous()) for w in waveform])

    def encode(self, waveform: torch.Tensor) -> torch.Tensor:
        first = self.conv_layers[0]
        shapes = [(layer.conv.kernel_size[0], layer.conv.stride[0]) for layer in self.conv_layers]
        frames = len(waveform)
        for kernel, stride in shapes:
            frames = (frames - kernel) // stride + 1
        if frames < 1:
            raise ValueError(f"{len(waveform)} samples are too few for one output frame")
        weight0, bias0 = (t.detach() for t in tap_major(first.conv))
        if first.norm == "group":
            weight0, bias0 = fold_group_norm(waveform.unfold(0, *shapes[0]), weight0, bias0, first.layer_norm)
        out = None
        for start in range(0, frames, self.output_frames):
            count = min(self.output_frames, frames - start)
            low, high = start, start + count  # the frames of each layer's output that the block needs,
            for kernel, stride in reversed(shapes):  # from the last layer back to the waveform
                low, high = low * stride, (high - 1) * stride + kernel
            x = first.finish(time_major_conv(waveform[low:high, None], weight0, bias0, shapes[0][1]))
            for layer, product in zip(self.conv_layers[1:], self.products):
                x = product(x, layer.finish)
            if out is None:
                out = x.new_empty(frames, x.shape[1])
            out[start:start + count] = x
        return out


def int8_feature_encoder(encoder: FeatureEncoder) -> LowPrecisionFeatureEncoder:
    return LowPrecisionFeatureEncoder(encoder, [Int8TimeMajorConv(layer.conv) for layer in encoder.conv_layers[1:]])


def int8_encoder_layer(layer: nn.Module, last: bool = False) -> nn.Module:
    """A Transformer layer (model.EncoderLayer) with int8 products, converted in place. In the
    `last` layer the feed-forward block's second product stays float32: its input (GELU outputs,
    the hardest to quantize) feeds the CTC head with no layer after it to average the error out."""
    layer.attention.in_proj = Int8Linear.from_linear(layer.attention.in_proj)
    layer.attention.out_proj = Int8Linear.from_linear(layer.attention.out_proj)
    if last:
        layer.feed_forward.intermediate_dense = Int8Linear.from_linear(layer.feed_forward.intermediate_dense)
    else:
        layer.feed_forward = Int8FeedForward(layer.feed_forward)
    return layer


def onednn_fp32_pays(flags: frozenset[str] | None = None, vendor: str | None = None) -> bool:
    """Whether float32 products run faster through oneDNN than through PyTorch's MKL: on AMD CPUs
    with AVX-512, where MKL takes a generic path (kernels.py has the measurement). Intel CPUs and
    AMD CPUs without AVX-512 are left to MKL (unmeasured)."""
    flags = cpu_flags() if flags is None else flags
    vendor = cpu_vendor() if vendor is None else vendor
    return vendor == "AuthenticAMD" and "avx512f" in flags


def use_onednn_fp32(model: Wav2Vec2ForCTC) -> Wav2Vec2ForCTC:
    """Run a float32 model's inference products through oneDNN, in place: the six later
    convolutions, the feature projection and the Transformer's linear layers. The state dict is
    unchanged; with gradients enabled the linear layers compute and train as before (the feature
    encoder, as in int8 and bf16, is for inference: its products hold copies of the weights)."""
    body = model.wav2vec2
    encoder = body.feature_encoder
    if isinstance(encoder, LowPrecisionFeatureEncoder) or len(encoder.conv_layers) < 2:
        return model
    products = [TimeMajorProduct(layer.conv, torch.float32, onednn=True) for layer in encoder.conv_layers[1:]]
    body.feature_encoder = LowPrecisionFeatureEncoder(encoder, products)
    body.feature_projection.projection = OneDnnLinear.from_linear(body.feature_projection.projection)
    for layer in body.encoder.layers:
        attention, feed_forward = layer.attention, layer.feed_forward
        attention.in_proj, attention.out_proj = map(OneDnnLinear.from_linear, (attention.in_proj, attention.out_proj))
        feed_forward.intermediate_dense, feed_forward.output_dense = map(
            OneDnnLinear.from_linear, (feed_forward.intermediate_dense, feed_forward.output_dense))
    return model


def apply_precision(model: Wav2Vec2ForCTC, precision: str = "fp32",
                    flags: frozenset[str] | None = None) -> Wav2Vec2ForCTC:
    """Convert a float32 model, for inference, to `precision` (resolved as resolve_precision
    does), in place; the model's `precision` attribute says which it got. `flags` are the CPU's
    (cpu_flags() by default): they decide `auto`, and whether int8 runs attention in bf16.
    int8 keeps the float weights beside their int8 copies (the state dict is unchanged, saving
    writes float32); bf16 converts them (saving writes bf16, which loading casts back)."""
    current = model.precision
    flags = cpu_flags() if flags is None else flags
    precision = resolve_precision(precision, model.device, flags, hidden_size=model.config.hidden_size)
    if precision == current:
        if precision == "fp32" and model.device.type == "cpu" and onednn_fp32_pays(flags):
            use_onednn_fp32(model)
        return model
    if current != "fp32":
        raise ValueError(f"the model already runs in {current}; load it again for {precision}")
    body = model.wav2vec2
    encoder = body.feature_encoder
    if len(encoder.conv_layers) < 2:
        raise ValueError(f"precision {precision} needs a feature encoder of at least two convolutions")
    if precision == "bf16":
        products = [TimeMajorProduct(layer.conv, torch.bfloat16) for layer in encoder.conv_layers[1:]]
        body.feature_encoder = LowPrecisionFeatureEncoder(encoder, products)
        body.feature_projection.to(torch.bfloat16)
        body.encoder.to(torch.bfloat16)
        for layer in body.encoder.layers:
            layer.attention = BlockedAttention(layer.attention, torch.bfloat16)
    else:
        body.feature_encoder = int8_feature_encoder(encoder)
        body.feature_projection.projection = Int8Linear.from_linear(body.feature_projection.projection)
        for layer in body.encoder.layers:
            int8_encoder_layer(layer, last=layer is body.encoder.layers[-1])
            if flags & BF16_FLAGS:  # the softmax and its two products in bf16, where it is fast
                layer.attention = BlockedAttention(layer.attention, torch.bfloat16)
    model.precision = precision
    return model
