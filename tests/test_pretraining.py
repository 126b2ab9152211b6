"""Pretraining pieces: masks, distractors, each loss by its formula, and parity with transformers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import transformers

from wav2vec2.checkpoints import from_hf_keys, load_state
from wav2vec2.model import Wav2Vec2Config, frame_lengths
from wav2vec2.pretraining import (Wav2Vec2ForPreTraining, contrastive_logits, contrastive_loss,
                                  diversity_loss, feature_penalty, sample_distractors, span_mask)
from wav2vec2.quantizer import GumbelVectorQuantizer, annealed_temperature, code_perplexity, gumbel_temperature

from .conftest import FAMILIES, SMALL

NO_DROPOUT = dict(hidden_dropout=0.0, activation_dropout=0.0, attention_dropout=0.0, feat_proj_dropout=0.0,
                  feat_quantizer_dropout=0.0, final_dropout=0.0, layerdrop=0.0, mask_feature_prob=0.0)
QUANTIZER = dict(num_codevector_groups=2, num_codevectors_per_group=12, codevector_dim=16,
                 proj_codevector_dim=12, num_negatives=7)


# ---- masks and distractors -------------------------------------------------------------------

def test_span_mask_respects_lengths_spans_and_seed():
    lengths = [200, 120, 35, 8]
    mask = span_mask(lengths, 200, prob=0.65, span=10, min_spans=2, rng=np.random.default_rng(0))
    again = span_mask(lengths, 200, prob=0.65, span=10, min_spans=2, rng=np.random.default_rng(0))
    assert torch.equal(mask, again)
    for row, length in enumerate(lengths):
        assert not mask[row, length:].any()  # never inside padding
        runs = np.diff(np.flatnonzero(np.diff(np.r_[0, mask[row].numpy().astype(int), 0])))[::2]
        assert all(run >= 10 for run in runs)  # spans of at least M steps (overlaps make longer runs)
    assert mask[3].sum() == 0  # too short for one span
    assert mask[2].sum() >= 10  # at least min_spans starts (overlapping or not)
    fraction = mask[0].float().mean().item()
    assert 0.3 < fraction < 0.7  # p=0.65, M=10 masks about half the steps


def test_distractors_come_from_other_masked_steps_of_the_same_utterance():
    mask = span_mask([100, 60], 100, rng=np.random.default_rng(1))
    indices = sample_distractors(mask, count=20, rng=np.random.default_rng(2))
    for row in range(2):
        for t in torch.nonzero(mask[row]).flatten().tolist():
            chosen = indices[row, t]
            assert ((chosen // 100) == row).all()  # same utterance
            assert mask.flatten()[chosen].all()  # masked steps only
            assert (chosen != row * 100 + t).all()  # never itself
    crossed = sample_distractors(mask, count=5, cross_count=10, rng=np.random.default_rng(3))
    everywhere = crossed[mask][:, 5:]
    assert mask.flatten()[everywhere].all() and (everywhere // 100 == 1).any() and (everywhere // 100 == 0).any()


# ---- each loss against the formula written out -----------------------------------------------

def test_contrastive_loss_by_the_formula():
    generator = torch.Generator().manual_seed(0)
    context, targets = torch.randn(4, 8, generator=generator), torch.randn(4, 8, generator=generator)
    distractors = torch.randn(4, 3, 8, generator=generator)
    distractors[1, 2] = targets[1]  # identical to the target: excluded
    kappa = 0.1
    pool = torch.cat([targets, distractors.flatten(0, 1)])  # targets are rows 0-3, then distractors
    candidates = torch.cat([torch.arange(4)[:, None], 4 + torch.arange(12).view(4, 3)], dim=1)
    logits = contrastive_logits(context, pool, candidates, kappa)
    expected = []
    for t in range(4):
        def sim(a, b):
            return (a @ b / (a.norm() * b.norm())).item()
        candidates = [targets[t]] + [d for d in distractors[t] if not torch.equal(d, targets[t])]
        numerator = math.exp(sim(context[t], targets[t]) / kappa)
        denominator = sum(math.exp(sim(context[t], q) / kappa) for q in candidates)
        expected.append(-math.log(numerator / denominator))
    assert logits[1, 3] == float("-inf")
    assert contrastive_loss(logits).item() == pytest.approx(sum(expected) / 4, rel=1e-5)


def test_diversity_loss_and_perplexity_by_the_formula():
    probs = torch.softmax(torch.randn(6, 2, 5, generator=torch.Generator().manual_seed(1)), -1)
    mask = torch.tensor([True, False, True, True, False, True])
    average = probs[mask].mean(0)
    perplexity = sum(math.exp(-sum(p * math.log(p) for p in average[g].tolist())) for g in range(2))
    assert code_perplexity(probs, mask).item() == pytest.approx(perplexity, rel=1e-6)
    assert diversity_loss(code_perplexity(probs, mask), 2, 5).item() == pytest.approx((10 - perplexity) / 10)
    uniform = torch.full((3, 2, 5), 0.2)
    assert diversity_loss(code_perplexity(uniform), 2, 5).item() == pytest.approx(0.0, abs=1e-6)


def test_diversity_gradient_is_finite_when_a_code_probability_underflows():
    # A collapsed codebook (as at update 778 of a synthetic run): entry 2 of group 1 lies 200 below
    # the others at every step, so its float32 softmax is exactly 0 (exp(-200) < 1e-45), and so is
    # its average. The gradient is finite: the analytic one, in float64, where nothing underflows.
    logits = torch.randn(6, 2, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    logits[:, 1, 2] -= 200
    mask = torch.tensor([True, False, True, True, False, True])
    ours = logits.float().requires_grad_(True)
    assert (ours.softmax(-1)[:, 1, 2] == 0).all()
    diversity_loss(code_perplexity(ours.softmax(-1), mask), 2, 5).backward()

    # d perplexity_g / d logit_{s,g,k} = P_g / N * p_sk * (sum_e p_se log avg_e - log avg_k) at the N masked steps
    p = logits.softmax(-1)
    average = p[mask].mean(0)
    perplexity = torch.exp(-(average * average.log()).sum(-1))
    mixed = (p * average.log()).sum(-1, keepdim=True)
    expected = -(perplexity[:, None] / mask.sum() * p * (mixed - average.log())) / 10 * mask[:, None, None]
    assert torch.isfinite(ours.grad).all()
    assert torch.allclose(ours.grad.double(), expected, rtol=1e-4, atol=1e-8)


def test_feature_penalty_counts_real_frames_only():
    features = torch.arange(12.0).view(1, 4, 3)
    mask = torch.tensor([[True, True, False, False]])
    assert feature_penalty(features, mask).item() == pytest.approx(sum(x * x for x in range(6)) / 6)
    assert feature_penalty(features).item() == pytest.approx(sum(x * x for x in range(12)) / 12)


def test_gumbel_quantizer_is_hard_forward_soft_backward():
    quantizer = GumbelVectorQuantizer(6, groups=2, entries=4, codevector_dim=8).train()
    features = torch.randn(1, 5, 6, requires_grad=True)
    quantized, perplexity, probs = quantizer(features)
    codebooks = quantizer.codevectors.view(2, 4, 4)
    for step in range(5):  # each half of a quantized vector is exactly one codebook entry
        for g in range(2):
            part = quantized[0, step, 4 * g:4 * g + 4]
            assert min((part - entry).abs().max().item() for entry in codebooks[g]) < 1e-6
    quantized.sum().backward()
    assert features.grad.abs().sum() > 0  # the soft path carries a gradient
    assert gumbel_temperature(0) == 2.0 and gumbel_temperature(10**7) == 0.5
    assert gumbel_temperature(1000) == pytest.approx(2 * 0.999995**1000)


def test_annealed_temperature_reaches_its_end_at_the_given_update_and_stays():
    # tau(t) = start * exp(t / T * ln(end / start)): halfway from 2 to 0.5 in log space is 1
    assert annealed_temperature(0, 300, 2.0, 0.5) == 2.0
    assert annealed_temperature(150, 300, 2.0, 0.5) == pytest.approx(1.0)
    assert annealed_temperature(100, 300, 2.0, 0.5) == pytest.approx(2.0 * math.exp(math.log(0.25) / 3))
    assert annealed_temperature(300, 300, 2.0, 0.5) == annealed_temperature(10**6, 300, 2.0, 0.5) == 0.5
    assert annealed_temperature(0, 0, 2.0, 0.5) == 0.5  # no annealing: the end temperature throughout


# ---- parity with transformers.Wav2Vec2ForPreTraining -----------------------------------------

def pair(family: str):
    torch.manual_seed(0)
    settings = {**SMALL, **FAMILIES[family], **NO_DROPOUT, **QUANTIZER}
    theirs = transformers.Wav2Vec2ForPreTraining(transformers.Wav2Vec2Config(**settings))
    ours = Wav2Vec2ForPreTraining(Wav2Vec2Config.from_dict(theirs.config.to_dict()))
    load_state(ours, from_hf_keys(theirs.state_dict()), "transformers")
    return ours, theirs


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("training", [False, True])
def test_losses_match_transformers(family, training):
    ours, theirs = pair(family)
    ours.train(training), theirs.train(training)
    lengths = [16_000, 12_000]
    waveform = torch.randn(2, 16_000, generator=torch.Generator().manual_seed(5))
    attention_mask = torch.zeros(2, 16_000, dtype=torch.long)
    for row, length in enumerate(lengths):
        attention_mask[row, :length] = 1
        waveform[row, length:] = 0
    frames = frame_lengths(torch.tensor(lengths), ours.config).tolist()
    time_mask = span_mask(frames, frames[0], rng=np.random.default_rng(7))
    distractors = sample_distractors(time_mask, count=7, rng=np.random.default_rng(8))
    mask_argument = attention_mask if family == "lv60" else None
    torch.manual_seed(123)  # the same Gumbel noise for both
    expected = theirs(waveform, attention_mask=mask_argument, mask_time_indices=time_mask,
                      sampled_negative_indices=distractors)
    torch.manual_seed(123)
    actual = ours(waveform, mask_argument, time_mask, distractors)
    masked = time_mask.sum().item()
    assert actual.masked_steps == masked
    # transformers sums over masked steps; we average (see wav2vec2/pretraining.py)
    assert actual.contrastive_loss.item() * masked == pytest.approx(expected.contrastive_loss.item(), rel=1e-4)
    assert actual.diversity_loss.item() * masked == pytest.approx(expected.diversity_loss.item(), rel=1e-4)
    assert actual.perplexity.item() == pytest.approx(expected.codevector_perplexity.item(), rel=1e-4)
    if training:  # gradients flow to every part, the feature encoder at a tenth of the rate
        actual.loss.backward()
        assert all(p.grad is not None for n, p in ours.named_parameters() if "masked_spec_embed" not in n)
        # and equal transformers' after the feature encoder (there our 0.1 scale and penalty differ)
        (expected.loss / masked).backward()
        theirs_grads = from_hf_keys({n: p.grad for n, p in theirs.named_parameters()})
        for name, parameter in ours.named_parameters():
            if "feature_encoder" not in name and "masked_spec_embed" not in name:
                expected_grad = theirs_grads[name]
                error = (parameter.grad - expected_grad).abs().max() / expected_grad.abs().max()
                assert error < 1e-3, name
