"""Codebook health: the per-group perplexity and the share of codes used against a brute-force count,
and the warnings of a run that sits at chance or whose codebooks collapse, on made-up logs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from wav2vec2.pretraining import Wav2Vec2ForPreTraining, sample_distractors, span_mask
from wav2vec2.train.health import HealthWatch, codebook_usage
from wav2vec2.train.presets import preset_config

CHANCE = math.log(101)


def test_group_perplexity_and_codes_used_by_brute_force():
    torch.manual_seed(0)
    model = Wav2Vec2ForPreTraining(preset_config("tiny")).train()
    seen = []
    model.quantizer.register_forward_hook(lambda module, inputs, output: seen.append(output[2].detach()))
    waveform = torch.randn(2, 16_000, generator=torch.Generator().manual_seed(1))
    time_mask = span_mask([49, 49], 49, rng=np.random.default_rng(2))
    distractors = sample_distractors(time_mask, 10, rng=np.random.default_rng(3))
    output = model(waveform, None, time_mask, distractors)
    usage = codebook_usage(output.code_probs, output.code_choices)

    probs = seen[0][time_mask.flatten()].tolist()  # (masked steps, groups, entries)
    groups, entries = len(probs[0]), len(probs[0][0])
    for g in range(groups):
        average = [sum(step[g][e] for step in probs) / len(probs) for e in range(entries)]
        expected = math.exp(-sum(p * math.log(p) for p in average if p > 0))
        assert usage["group_perplexity"][g] == pytest.approx(expected, rel=1e-5)
    used = sum(len({max(range(entries), key=step[g].__getitem__) for step in probs}) for g in range(groups))
    assert usage["codes_used"] == pytest.approx(used / (groups * entries))
    assert sum(usage["group_perplexity"]) == pytest.approx(output.perplexity.item(), rel=1e-5)


def log(losses: list[float], perplexities: list[float], every: int = 10) -> list[dict]:
    return [{"step": every * (i + 1), "contrastive_loss": loss, "perplexity": perplexity}
            for i, (loss, perplexity) in enumerate(zip(losses, perplexities))]


def warnings_of(records: list[dict], patience: int = 50, start: int = 20) -> list[tuple[int, str]]:
    watch = HealthWatch(num_negatives=100, codes=320, patience=patience, start=start)
    return [(record["step"], message) for record in records for message in watch.observe(record)]


def test_a_run_at_chance_is_reported_once_after_the_patience():
    found = warnings_of(log([CHANCE + 0.01] * 20, [200] * 20))
    # updates up to the warm-up's end (20) do not count: at chance for 50 more is update 70
    assert [step for step, _ in found] == [70]
    assert "chance" in found[0][1] and "--mask-length" in found[0][1]


def test_a_collapse_is_reported_once_after_the_patience():
    perplexities = [150, 200, 230, 200, 150, 110, 100, 90, 80, 80, 80, 80]
    found = warnings_of(log([3.0] * 12, perplexities))
    # below half the peak (115) from the interval after update 50: reported at update 100
    assert [step for step, _ in found] == [100]
    assert "collapsing" in found[0][1] and "80 of 230" in found[0][1] and "--diversity-weight" in found[0][1]


def test_a_healthy_run_and_short_dips_are_not_reported():
    losses = [CHANCE + 0.1] * 5 + [4.4, 4.2, 4.0, 3.8, 3.7, 3.6, 3.5]  # leaves chance within the patience
    perplexities = [200, 230, 220, 110, 100, 105, 200, 210, 190, 200, 210, 205]  # a dip of 30 updates
    assert warnings_of(log(losses, perplexities)) == []
