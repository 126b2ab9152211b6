"""Reduced precision (int8, bf16): the int8 kernels against float products of their own quantized
numbers (exact up to rounding), the pipelined feature encoder against the plain convolutions, the
accuracy of whole models as logits SQNR against float32 (computed here from both logits), the
choice of `auto` with the CPU's features given, and the plumbing through load_model and the CLI."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import wav2vec2
from wav2vec2.cli import main
from wav2vec2.kernels import (ATTENTION_BLOCK_ROWS, INT8_BLOCK_ROWS, BlockedAttention, Int8FeedForward, Int8Linear,
                              Int8TimeMajorConv, OneDnnLinear, TimeMajorProduct, blocked_attention, quantize_rows,
                              quantize_weight)
from wav2vec2.model import FeatureEncoder, Wav2Vec2Config, Wav2Vec2ForCTC, frame_lengths
from wav2vec2.precision import (LowPrecisionFeatureEncoder, apply_precision, cpu_flags, cpu_vendor, onednn_fp32_pays,
                                resolve_precision, use_onednn_fp32)
from wav2vec2.train.loop import training_precision
from wav2vec2.train.presets import PRESETS

from .conftest import write_audio

INT8_SQNR_DB, BF16_SQNR_DB = 25.0, 30.0  # the targets, on random full-size weights


def sqnr(reference: torch.Tensor, approximation: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB: power of the reference over power of the error."""
    reference, approximation = reference.double(), approximation.double()
    return 10 * torch.log10(reference.pow(2).sum() / (approximation - reference).pow(2).sum()).item()


def test_quantize_rows_maps_each_rows_range_onto_127_steps_each_way():
    x = torch.randn(5, 40) * torch.tensor([[0.01], [1.0], [30.0], [2.0], [1.0]])
    x += torch.tensor([[0.0], [5.0], [0.0], [-3.0], [0.0]])
    x[4] = 0.7  # a constant row
    q, scale, centre = quantize_rows(x)
    assert q.dtype == torch.int8 and q.abs().max() <= 127
    for row in range(4):  # the extremes of a row land on -127 and 127, every value within half a step
        assert (q[row].min(), q[row].max()) == (-127, 127)
        low, high = x[row].min(), x[row].max()
        assert torch.isclose(scale[row, 0], (high - low) / 254) and torch.isclose(centre[row, 0], (high + low) / 2)
    assert ((q * scale + centre) - x).abs().le(scale / 2 * 1.0001).all()


def dequantized(layer: Int8Linear) -> torch.Tensor:
    return layer.qweight.T.double() * layer.scale.double()[:, None]


def test_int8_linear_is_the_product_of_its_quantized_numbers():
    """The int32 products, scales, centres and bias put together equal a float64 product of the
    dequantized rows and weights; and the layer stays close to the float one (more rows than a block)."""
    linear = torch.nn.Linear(96, 40)
    layer = Int8Linear.from_linear(linear)
    x = torch.randn(3, INT8_BLOCK_ROWS, 96) + torch.linspace(-2, 2, 96)
    with torch.inference_mode():
        y = layer(x)
        blocks = [quantize_rows(block) for block in x.reshape(-1, 96).split(INT8_BLOCK_ROWS)]
        expected = torch.cat([(q.double() * s.double() + c.double()) @ dequantized(layer).T for q, s, c in blocks])
        expected = expected + linear.bias.double()
        assert y.shape == (3, INT8_BLOCK_ROWS, 40)
        assert (y.reshape(-1, 40).double() - expected).abs().max() <= 1e-5 * expected.abs().max()
        assert sqnr(linear(x), y) > 38
    assert layer.state_dict().keys() == linear.state_dict().keys()  # the int8 copy is not saved


def test_int8_weight_scales_are_per_output_channel():
    weight = torch.randn(6, 20) * torch.arange(1, 7)[:, None] ** 3
    q, scale, sums = quantize_weight(weight)
    assert q.shape == (20, 6) and q.dtype == torch.int8
    assert torch.equal(q.abs().amax(0), torch.full((6,), 127, dtype=torch.int8))
    assert ((q.T * scale[:, None]) - weight).abs().le(scale[:, None] / 2 * 1.0001).all()
    assert torch.equal(sums, q.sum(0).float())


@pytest.mark.parametrize("kernel,stride", [(3, 2), (2, 2), (4, 2), (5, 2), (3, 3)])
def test_int8_time_major_conv_is_a_convolution_of_its_quantized_numbers(kernel, stride):
    """Against F.conv1d in float64 on the input as quantized (rows of `stride` frames) and the
    dequantized weight, for lengths with a ragged last row, one step, and several blocks."""
    conv = torch.nn.Conv1d(12, 7, kernel, stride=stride)
    layer = Int8TimeMajorConv(conv)
    weight = torch.cat([getattr(layer, f"qweight{i}") for i in range(len(layer.groups))]).double()
    weight = (weight * layer.scale.double()).T.reshape(7, kernel, 12).transpose(1, 2)  # (out, in, kernel)
    for length in (kernel, kernel + 1, 50, 51, stride * (INT8_BLOCK_ROWS + 3) + kernel):
        x = torch.randn(length, 12) + 0.5
        with torch.inference_mode():
            y = layer(x)
        steps = (length - kernel) // stride + 1
        rows = -(-length // stride)
        padded = F.pad(x, (0, 0, 0, rows * stride - length)).reshape(rows, stride * 12)
        # each block re-quantizes its rows; the same row always gets the same numbers
        q, scale, centre = quantize_rows(padded)
        restored = (q.double() * scale.double() + centre.double()).reshape(-1, 12)[:length]
        expected = F.conv1d(restored.T[None], weight, conv.bias.double(), stride=stride)[0].T
        assert y.shape == expected.shape == (steps, 7)
        assert (y.double() - expected).abs().max() <= 1e-5 * expected.abs().max(), length
        assert sqnr(conv(x.T[None])[0].T, y) > 35


def test_int8_feed_forward_equals_its_two_int8_layers():
    config = Wav2Vec2Config(hidden_size=24, intermediate_size=56)
    from wav2vec2.model import FeedForward

    block = FeedForward(config).eval()
    fused = Int8FeedForward(block)
    x = torch.randn(2, INT8_BLOCK_ROWS + 5, 24)
    with torch.inference_mode():
        expected = fused.output_dense(F.gelu(fused.intermediate_dense(x)))
        assert torch.allclose(fused(x), expected, atol=1e-6)
        assert sqnr(block(x), fused(x)) > 35
    assert fused.state_dict().keys() == block.state_dict().keys()


def test_pipelined_feature_encoder_in_float_equals_the_convolutions():
    """LowPrecisionFeatureEncoder with float32 products computes the plain Conv1d stack: blocks of
    a few output frames, each layer on just the frames the block needs."""
    for norm in ("group", "layer"):
        config = Wav2Vec2Config(conv_dim=(24,) * 7, feat_extract_norm=norm, conv_bias=norm == "layer")
        encoder = FeatureEncoder(config).eval()
        with torch.no_grad():
            for p in encoder.parameters():
                p.add_(torch.randn_like(p) * 0.1)
        products = [TimeMajorProduct(layer.conv, torch.float32) for layer in encoder.conv_layers[1:]]
        pipelined = LowPrecisionFeatureEncoder(encoder, products)
        pipelined.output_frames = 3
        for samples in (400, 719, 10_007):
            waveform = torch.randn(2, samples) * 3 + 0.5
            with torch.inference_mode():
                reference = waveform[:, None]
                for layer in encoder.conv_layers:
                    reference = layer(reference)
                reference = reference.transpose(1, 2)
                actual = pipelined(waveform)
            assert actual.shape == reference.shape == (2, int(frame_lengths(torch.tensor(samples), config)), 24)
            assert (actual - reference).abs().max() <= 1e-4 * reference.abs().max(), (norm, samples)


def random_model(family: str, **overrides) -> Wav2Vec2ForCTC:
    """Random weights with non-trivial norms, so that no layer is the identity."""
    torch.manual_seed(0)
    model = Wav2Vec2ForCTC(Wav2Vec2Config.from_dict({**PRESETS[family], **overrides})).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.LayerNorm, torch.nn.GroupNorm)):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.1)
    return model


def logits_sqnr(model: Wav2Vec2ForCTC, precision: str, waveform: torch.Tensor,
                mask: torch.Tensor | None = None) -> float:
    with torch.inference_mode():
        reference = model(waveform, mask)
        converted = apply_precision(model, precision)
        assert converted.precision == precision
        actual = converted(waveform, mask)
    assert actual.dtype == torch.float32 and actual.shape == reference.shape
    return sqnr(reference, actual)


@pytest.mark.parametrize("family", ["small", "tiny"])
@pytest.mark.parametrize("precision,threshold", [("int8", INT8_SQNR_DB), ("bf16", BF16_SQNR_DB)])
def test_small_models_keep_their_logits(family, precision, threshold):
    waveform = torch.randn(2, 16_000)
    assert logits_sqnr(random_model(family), precision, waveform) >= threshold


def test_padded_batch_with_attention_mask_in_int8():
    """The lv60 family pads with a mask: real frames stay close, whatever the padding."""
    model = random_model("small", feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True)
    waveform, mask = torch.randn(2, 20_000), torch.ones(2, 20_000, dtype=torch.long)
    waveform[1, 12_000:], mask[1, 12_000:] = 0.0, 0
    assert logits_sqnr(model, "int8", waveform, mask) >= INT8_SQNR_DB


@pytest.mark.slow
@pytest.mark.parametrize("family", ["base", "large"])
@pytest.mark.parametrize("precision,threshold", [("int8", INT8_SQNR_DB), ("bf16", BF16_SQNR_DB)])
def test_full_size_models_keep_their_logits(family, precision, threshold):
    assert logits_sqnr(random_model(family), precision, torch.randn(1, 4 * 16000)) >= threshold


def test_blocked_attention_is_scaled_dot_product_attention():
    """In float32 the blocks compute PyTorch's attention to rounding (a padded batch, frames not a
    multiple of the block); in bf16 its error stays 35 dB below the signal (SQNR)."""
    frames = 2 * ATTENTION_BLOCK_ROWS + 37
    q, k, v = (torch.randn(2, 3, frames, 16) * 2 for _ in range(3))
    key_mask = torch.ones(2, 1, 1, frames, dtype=torch.bool)
    key_mask[1, ..., frames - 50:] = False
    reference = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)
    assert torch.allclose(blocked_attention(q, k, v, key_mask), reference, atol=1e-5)
    assert torch.allclose(blocked_attention(q, k, v, None), F.scaled_dot_product_attention(q, k, v), atol=1e-5)
    in_bf16 = blocked_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), key_mask)
    assert in_bf16.dtype == torch.bfloat16 and sqnr(reference, in_bf16.float()) > 35


@pytest.mark.parametrize("flags,blocked", [(frozenset({"avx512_vnni"}), False),
                                           (frozenset({"avx512_vnni", "avx512_bf16"}), True)])
def test_int8_runs_attention_in_bf16_only_where_the_cpu_multiplies_bf16(flags, blocked):
    model = random_model("small")
    waveform = torch.randn(2, 16_000)
    with torch.inference_mode():
        reference = model(waveform)
    converted = apply_precision(model, "int8", flags)
    assert isinstance(converted.wav2vec2.encoder.layers[0].attention, BlockedAttention) == blocked
    assert isinstance(converted.wav2vec2.encoder.layers[0].attention.in_proj, Int8Linear)
    with torch.inference_mode():
        assert sqnr(reference, converted(waveform)) >= INT8_SQNR_DB


@pytest.mark.parametrize("family", ["small", "lv60"])
def test_float32_through_onednn_computes_what_the_plain_model_does(family):
    """use_onednn_fp32 changes which library multiplies, not what: logits equal to float rounding
    (with a padded batch for the lv60 family), the same state dict, and with gradients enabled the
    layers fall back to PyTorch's products, so a converted model still trains."""
    overrides = dict(feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True) if family == "lv60" else {}
    model = random_model("small", **overrides)
    waveform, mask = torch.randn(2, 20_000), None
    if family == "lv60":
        mask = torch.ones(2, 20_000, dtype=torch.long)
        waveform[1, 12_000:], mask[1, 12_000:] = 0.0, 0
    keys = model.state_dict().keys()
    with torch.inference_mode():
        reference = model(waveform, mask)
    converted = use_onednn_fp32(model)
    with torch.inference_mode():
        actual = converted(waveform, mask)
    assert isinstance(converted.wav2vec2.encoder.layers[0].feed_forward.output_dense, OneDnnLinear)
    assert converted.precision == "fp32" and converted.state_dict().keys() == keys
    assert (actual - reference).abs().max() <= 1e-5 * reference.abs().max()
    with_grad = converted(waveform, mask)
    with_grad.sum().backward()
    assert (with_grad.detach() - reference).abs().max() <= 1e-5 * reference.abs().max()
    assert converted.wav2vec2.encoder.layers[0].attention.in_proj.weight.grad.abs().sum() > 0


def test_onednn_float32_is_used_on_amd_cpus_with_avx512(tmp_path):
    assert onednn_fp32_pays(frozenset({"avx512f", "avx512_vnni"}), "AuthenticAMD")
    assert not onednn_fp32_pays(frozenset({"avx2"}), "AuthenticAMD")  # unmeasured: MKL
    assert not onednn_fp32_pays(frozenset({"avx512f", "amx_bf16"}), "GenuineIntel")
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 26\nflags\t\t: fpu avx512f\n")
    assert cpu_vendor(str(cpuinfo)) == "AuthenticAMD" and cpu_vendor(str(tmp_path / "missing")) == ""


def test_training_auto_picks_bf16_where_the_cpu_multiplies_bf16():
    cpu = torch.device("cpu")
    for flags, expected in ((frozenset({"amx_bf16", "amx_tile"}), "bf16"), (frozenset({"avx512f", "avx512_bf16"}), "bf16"),
                            (frozenset({"avx512f", "avx512_vnni"}), "fp32"), (frozenset(), "fp32")):
        assert training_precision(cpu, "auto", flags) == expected
    assert training_precision(cpu, "fp32", frozenset({"amx_bf16"})) == "fp32"  # asked for, not chosen
    assert training_precision(cpu, "bf16", frozenset()) == "bf16"


def test_auto_picks_bf16_with_amx_else_int8_with_vnni_for_wide_models_and_bf16_for_narrow_ones():
    amx = frozenset({"avx512f", "avx512_vnni", "amx_tile", "amx_bf16"})
    vnni, avx_vnni, avx2 = frozenset({"avx512f", "avx512_vnni"}), frozenset({"avx2", "avx_vnni"}), frozenset({"avx2"})
    assert resolve_precision("auto", flags=amx) == "bf16"
    assert resolve_precision("auto", flags=amx, hidden_size=256) == "bf16"
    assert resolve_precision("auto", flags=vnni) == "int8"  # base-sized by default
    assert resolve_precision("auto", flags=avx_vnni, hidden_size=1024) == "int8"
    assert resolve_precision("auto", flags=vnni, hidden_size=256) == "fp32"  # measured slower in int8
    avx512_bf16 = vnni | {"avx512_bf16"}
    assert resolve_precision("auto", flags=avx512_bf16) == "int8"  # measured faster than bf16 on base
    assert resolve_precision("auto", flags=avx512_bf16, hidden_size=256) == "bf16"  # int8 slower there (demo model)
    assert resolve_precision("auto", flags=avx512_bf16, hidden_size=128) == "fp32"  # not measured
    assert resolve_precision("auto", flags=avx2) == "fp32"
    assert resolve_precision("auto", flags=frozenset()) == "fp32"
    assert resolve_precision("auto", "cuda", flags=amx) == "fp32"
    for precision in ("fp32", "bf16", "int8"):  # asked for, not chosen
        assert resolve_precision(precision, flags=frozenset(), hidden_size=32) == precision
    for bad, device in (("fp16", "cpu"), ("int8", "cuda"), ("bf16", "cuda")):
        with pytest.raises(ValueError):
            resolve_precision(bad, device)


def test_auto_on_a_loaded_model_follows_the_cpu_flags(checkpoints, monkeypatch):
    """load_model(precision="auto") reads the CPU's flags and the model's width."""
    import wav2vec2.precision as precision

    vnni, amx = frozenset({"avx512_vnni"}), frozenset({"amx_bf16"})
    for flags, min_width, expected in ((vnni, 33, "fp32"), (vnni, 32, "int8"), (amx, 33, "bf16")):  # 32 wide
        monkeypatch.setattr(precision, "cpu_flags", lambda flags=flags: flags)
        monkeypatch.setattr(precision, "INT8_MIN_WIDTH", min_width)
        assert wav2vec2.load_model(checkpoints["base"], precision="auto").precision == expected


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nmodel name\t: Some Xeon\nflags\t\t: fpu avx512f amx_bf16 amx_tile\n\n"
                   "processor\t: 1\nflags\t\t: fpu avx512f amx_bf16 amx_tile\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n")
    assert cpu_flags(str(x86)) == {"fpu", "avx512f", "amx_bf16", "amx_tile"}
    assert "i8mm" in cpu_flags(str(arm))
    assert cpu_flags(str(tmp_path / "missing")) == frozenset()


def test_load_model_takes_a_precision_and_still_saves_float32(checkpoints, tmp_path):
    plain = wav2vec2.load_model(checkpoints["base"])
    model = wav2vec2.load_model(checkpoints["base"], precision="int8")
    assert (plain.precision, model.precision) == ("fp32", "int8")
    assert isinstance(model.wav2vec2.encoder.layers[0].attention.in_proj, Int8Linear)
    assert isinstance(model.wav2vec2.encoder.layers[0].feed_forward, Int8FeedForward)
    assert model.state_dict().keys() == plain.state_dict().keys()
    model.save(tmp_path / "saved")
    waveform = torch.randn(1, 16_000)
    assert sqnr(plain(waveform).detach(), model(waveform).detach()) > 30  # also outside no_grad
    with torch.inference_mode():
        assert torch.equal(wav2vec2.load_model(tmp_path / "saved")(waveform), plain(waveform))
    assert wav2vec2.load_model(checkpoints["lv60"], precision="bf16").precision == "bf16"
    with pytest.raises(ValueError, match="precision"):
        wav2vec2.load_model(checkpoints["base"], precision="half")
    with pytest.raises(ValueError, match="CPUs"):
        wav2vec2.load_model(checkpoints["base"], device="cuda", precision="int8")
    with pytest.raises(ValueError, match="already runs in int8"):
        apply_precision(model, "bf16")


@pytest.mark.parametrize("precision", ["int8", "bf16"])
def test_transcribe_and_evaluate_commands_take_a_precision(checkpoints, speechlike, tmp_path, capsys, precision):
    audio = write_audio(tmp_path / "speech.wav", speechlike, 16000)
    model = wav2vec2.load_model(checkpoints["lv60"], precision=precision)
    expected = model.transcribe(str(audio)).text
    assert main(["transcribe", str(audio), "--model", str(checkpoints["lv60"]), "--precision", precision]) == 0
    assert capsys.readouterr().out.strip() == expected
    manifest = tmp_path / "test.tsv"
    manifest.write_text(f"audio\ttext\nspeech.wav\t{expected or 'A'}\n")
    assert main(["evaluate", "--manifest", str(manifest), "--model", str(checkpoints["lv60"]), "--json",
                 "--precision", precision]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["precision"] == precision


def test_bad_precision_is_a_usage_error(checkpoints, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["transcribe", "x.wav", "--model", str(checkpoints["base"]), "--precision", "fp16"])
    assert exit_.value.code == 2
    assert "--precision" in capsys.readouterr().err
