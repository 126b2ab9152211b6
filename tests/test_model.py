"""Our network against transformers' Wav2Vec2ForCTC on the same weights (the oracle)."""

from __future__ import annotations

import json

import pytest
import torch
import transformers

import wav2vec2
from wav2vec2.checkpoints import from_hf_keys
from wav2vec2.kernels import GroupedConv, attention_with_dropout, dropout, keep_mask
from wav2vec2.model import FeatureEncoder, Wav2Vec2Config, frame_lengths

from .conftest import FAMILIES, SMALL, make_hf_checkpoint

TOLERANCE = 1e-4


def batch_with_padding(lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    waveform = torch.zeros(len(lengths), max(lengths))
    mask = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    for i, length in enumerate(lengths):
        waveform[i, :length] = torch.randn(length, generator=generator)
        mask[i, :length] = 1
    return waveform, mask


def assert_padded_batch_matches(ours, theirs, family: str, lengths: list[int], seed: int = 0) -> None:
    """Same logits on every real frame of a zero-padded batch; the base family is used without an
    attention mask (zero padding), as in transformers."""
    waveform, mask = batch_with_padding(lengths, seed)
    attention_mask = mask if family == "lv60" else None
    with torch.no_grad():
        expected = theirs(waveform, attention_mask=attention_mask).logits
        actual = ours(waveform, attention_mask)
    for i, count in enumerate(frame_lengths(mask.sum(-1), ours.config)):
        assert (actual[i, :count] - expected[i, :count]).abs().max() <= TOLERANCE


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_match_transformers_single_input(checkpoints, family):
    ours = wav2vec2.load_model(checkpoints[family])
    theirs = transformers.Wav2Vec2ForCTC.from_pretrained(checkpoints[family]).eval()
    waveform = torch.randn(1, 23_456, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = theirs(waveform).logits
    with torch.inference_mode():
        actual = ours(waveform)
    assert actual.shape == expected.shape
    assert (actual - expected).abs().max() <= TOLERANCE


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_match_transformers_padded_batch(checkpoints, family):
    ours = wav2vec2.load_model(checkpoints[family])
    theirs = transformers.Wav2Vec2ForCTC.from_pretrained(checkpoints[family]).eval()
    assert_padded_batch_matches(ours, theirs, family, [16_000, 9_001, 4_321])


def test_padding_does_not_change_real_frames_with_attention_mask(checkpoints):
    model = wav2vec2.load_model(checkpoints["lv60"])
    waveform, mask = batch_with_padding([16_000, 7_000])
    with torch.inference_mode():
        batched = model(waveform, mask)
        alone = model(waveform[1:, :7_000])
    count = alone.shape[1]
    assert (batched[1, :count] - alone[0]).abs().max() <= TOLERANCE


@pytest.mark.parametrize("family", FAMILIES)
def test_our_save_loads_in_transformers(checkpoints, family, tmp_path):
    ours = wav2vec2.load_model(checkpoints[family])
    ours.save(tmp_path)
    theirs = transformers.Wav2Vec2ForCTC.from_pretrained(tmp_path).eval()
    processor = transformers.Wav2Vec2Processor.from_pretrained(tmp_path)
    assert processor.feature_extractor.return_attention_mask == (family == "lv60")
    assert processor.tokenizer.get_vocab() == json.loads((checkpoints[family] / "vocab.json").read_text())
    waveform = torch.randn(2, 12_000, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        assert (ours(waveform) - theirs(waveform).logits).abs().max() <= TOLERANCE
    again = wav2vec2.load_model(tmp_path)
    for (name, a), (_, b) in zip(ours.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name


def test_old_weight_norm_key_names_load(checkpoints, tmp_path):
    """Checkpoints saved before torch's parametrizations name the weight norm weight_g/weight_v."""
    from safetensors.torch import load_file, save_file

    state = load_file(checkpoints["base"] / "model.safetensors")
    renamed = {k.replace("parametrizations.weight.original0", "weight_g")
               .replace("parametrizations.weight.original1", "weight_v"): v for k, v in state.items()}
    assert any(k.endswith("weight_g") for k in renamed)
    for name in checkpoints["base"].iterdir():
        if name.name != "model.safetensors":
            (tmp_path / name.name).write_bytes(name.read_bytes())
    save_file(renamed, str(tmp_path / "model.safetensors"))
    old, new = wav2vec2.load_model(tmp_path), wav2vec2.load_model(checkpoints["base"])
    waveform = torch.randn(1, 8_000)
    with torch.inference_mode():
        assert torch.equal(old(waveform), new(waveform))


def test_time_major_feature_encoder_equals_convolutions():
    """The CPU path (time-major matrix products, GroupNorm folded, the first two layers block by
    block) computes the function of the plain Conv1d layers, and its gradients, in float64."""
    for norm in ("group", "layer"):
        config = Wav2Vec2Config(conv_dim=(24,) * 7, feat_extract_norm=norm, conv_bias=norm == "layer")
        encoder = FeatureEncoder(config).double()
        encoder.block_frames = 7  # many blocks, and a ragged last one
        with torch.no_grad():
            for p in encoder.parameters():
                p.add_(torch.randn_like(p) * 0.1)
        for samples in (400, 401, 719, 10_007):
            waveform = (torch.randn(2, samples, dtype=torch.float64) * 3 + 0.5).requires_grad_()
            inputs = [waveform, *encoder.parameters()]  # the waveform too: saliency maps need it
            reference = waveform[:, None]
            for layer in encoder.conv_layers:
                reference = layer(reference)
            reference = reference.transpose(1, 2)
            upstream = torch.randn_like(reference)
            expected_grads = torch.autograd.grad((reference * upstream).sum(), inputs)
            features = encoder(waveform)
            grads = torch.autograd.grad((features * upstream).sum(), inputs)
            with torch.inference_mode():
                fast = encoder(waveform)
            assert fast.shape == reference.shape == (2, int(frame_lengths(torch.tensor(samples), config)), 24)
            assert (fast - reference).abs().max() <= 1e-10, (norm, samples)
            assert (features - reference).abs().max() <= 1e-10, (norm, samples)
            for grad, expected in zip(grads, expected_grads):
                assert (grad - expected).abs().max() <= 1e-9 * expected.abs().max(), (norm, samples)


def test_positional_convolution_gradients_equal_conv1d():
    """GroupedConv's input gradient (a forward convolution with the kernel flipped and transposed)
    and its weight and bias gradients against autograd through F.conv1d, in float64, for even and
    odd kernels."""
    for kernel, groups in ((8, 4), (7, 2)):
        x = torch.randn(2, 12, 30, dtype=torch.float64, requires_grad=True)
        weight = torch.randn(12, 12 // groups, kernel, dtype=torch.float64, requires_grad=True)
        bias = torch.randn(12, dtype=torch.float64, requires_grad=True)
        expected = torch.nn.functional.conv1d(x, weight, bias, padding=kernel // 2, groups=groups)
        actual = GroupedConv.apply(x, weight, bias, kernel // 2, groups)
        assert torch.allclose(actual, expected, atol=1e-12)
        upstream = torch.randn_like(expected)
        for got, want in zip(torch.autograd.grad(actual, (x, weight, bias), upstream),
                             torch.autograd.grad(expected, (x, weight, bias), upstream)):
            assert torch.allclose(got, want, atol=1e-12)


def test_dropout_drops_the_asked_fraction_and_keeps_the_mean():
    """The 16-bit mask: drop rate within 5 standard errors of p, neighbours (which share one
    64-bit draw) uncorrelated, the mean unchanged, and the gradient the same mask and scale."""
    count = 1 << 22
    for p in (0.1, 0.5, 0.9):
        keep = keep_mask(torch.Size([count]), p).double()
        tolerance = 5 * (p * (1 - p) / count) ** 0.5
        assert abs((1 - keep.mean().item()) - p) < tolerance
        lanes = keep.view(-1, 4) - keep.mean()
        for lane in range(3):  # the four 16-bit pieces of one draw must be independent
            correlation = (lanes[:, lane] * lanes[:, lane + 1]).mean() / lanes.var()
            assert abs(correlation.item()) < 5 / (count / 4) ** 0.5
    x = torch.ones(count, requires_grad=True)
    y = dropout(x, 0.1, training=True)
    kept = y != 0
    assert abs(y.mean().item() - 1) < 5 * (0.1 / 0.9 / count) ** 0.5
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / (1 - 6554 / 65536)))  # p rounded to 1/65536
    y.backward(torch.full_like(y, 2.0))
    assert torch.equal(x.grad, y.detach() * 2)
    assert dropout(x, 0.1, training=False) is x


def test_attention_with_dropout_is_softmax_attention_with_the_mask():
    """Against scaled_dot_product_attention without dropout, given the same keep mask (drawn again
    from the same seed), with padded keys."""
    q, k, v = torch.randn(3, 2, 4, 9, 8, dtype=torch.float64).unbind(0)
    key_mask = torch.ones(2, 1, 1, 9, dtype=torch.bool)
    key_mask[1, ..., 6:] = False
    torch.manual_seed(3)
    actual = attention_with_dropout(q, k, v, key_mask, 0.25)
    torch.manual_seed(3)
    keep = keep_mask(torch.Size([2, 4, 9, 9]), 0.25)
    weights = torch.softmax((q @ k.transpose(-1, -2) / 8**0.5).masked_fill(~key_mask, float("-inf")), -1)
    assert torch.allclose(actual, (weights * keep / 0.75) @ v, atol=1e-12)
    torch.manual_seed(3)
    kept_all = attention_with_dropout(q, k, v, key_mask, 1e-9)  # rounds to p = 0: nothing dropped
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)
    assert torch.allclose(kept_all, expected, atol=1e-12)


def test_layerdrop_skips_layers_only_in_training():
    config = Wav2Vec2Config(**{**SMALL, "layerdrop": 1.0, "hidden_dropout": 0.0})
    model = wav2vec2.Wav2Vec2Model(config)
    hidden = torch.randn(1, 20, config.hidden_size)
    encoder = model.encoder
    model.train()
    skipped = encoder(hidden)
    expected = encoder.layer_norm(hidden + encoder.pos_conv_embed(hidden))  # no layer ran
    assert torch.allclose(skipped, expected, atol=1e-6)
    model.eval()
    assert not torch.allclose(encoder(hidden), expected, atol=1e-3)


def test_config_round_trips_unknown_fields():
    values = {**SMALL, "conv_dim": [16] * 7, "some_future_field": {"a": 1}, "feat_extract_dropout": 0.0}
    config = Wav2Vec2Config.from_dict(values)
    assert config.conv_dim == (16,) * 7
    again = config.to_dict()
    assert again["some_future_field"] == {"a": 1} and again["conv_dim"] == [16] * 7
    assert Wav2Vec2Config.from_dict(again) == config


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_full_size_models_match_transformers(family, tmp_path):
    """The real base and large configurations, random weights: every weight used, same logits."""
    size = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
    if family == "lv60":
        size = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096)
    folder = make_hf_checkpoint(tmp_path, family, conv_dim=(512,) * 7, num_conv_pos_embeddings=128,
                                num_conv_pos_embedding_groups=16, **size)
    theirs = transformers.Wav2Vec2ForCTC.from_pretrained(folder).eval()
    ours = wav2vec2.load_model(folder)
    their_keys = set(from_hf_keys(theirs.state_dict()))
    assert their_keys == set(ours.state_dict())  # nothing left over, nothing missing
    assert_padded_batch_matches(ours, theirs, family, [48_000, 30_000], seed=3)
