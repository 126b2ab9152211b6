"""Is pretraining learning? Codebook statistics of a logged interval, and the two ways a run fails
quietly: the contrastive loss sits at chance, log(K+1), or the codebooks collapse (a few codes
for every frame: the targets become easy to predict and worth nothing)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..quantizer import group_perplexities


def codebook_usage(code_probs: torch.Tensor, code_choices: torch.Tensor) -> dict:
    """The interval's summed softmax and most-likely counts, both (groups, entries), -> the
    perplexity of each group over the interval's masked steps, and the share of the G*V codes that
    were the most likely at one of them at least."""
    average = code_probs / code_probs.sum(-1, keepdim=True)
    return {"group_perplexity": group_perplexities(average).tolist(),
            "codes_used": (code_choices > 0).float().mean().item()}


def patience_for(max_steps: int, log_every: int) -> int:
    """How long a symptom must last to be reported: a third of the run (small models on little data
    leave chance after 30-60 % of a 300-update run: recipes/synthetic/RESULTS.md), but at least 50
    updates and at most 5,000 (a long run should not wait for days), and one logged interval."""
    return max(log_every, min(max(max_steps // 3, 50), 5000))


@dataclass
class HealthWatch:
    """Reads each logged record; says once, with the likely fix, when a symptom has lasted
    `patience` updates."""

    num_negatives: int  # K: distractors per masked step, all kinds
    codes: int  # G*V
    patience: int  # updates a symptom must last before it is reported
    start: int = 0  # updates before this (the warm-up) are healthy whatever they show
    at_chance_since: int | None = None  # the update after which the symptom began
    collapsed_since: int | None = None
    peak: float = 0.0  # the highest code perplexity so far
    last_step: int = 0
    reported: tuple[str, ...] = ()

    @property
    def chance(self) -> float:
        return math.log(self.num_negatives + 1)

    def observe(self, record: dict) -> list[str]:
        """The warnings this record brings, each at most once a run."""
        step, since = record["step"], max(self.last_step, self.start)
        self.last_step = step
        self.peak = max(self.peak, record["perplexity"])
        counted = step > self.start
        if not (counted and record["contrastive_loss"] > 0.99 * self.chance):
            self.at_chance_since = None
        elif self.at_chance_since is None:
            self.at_chance_since = since
        if not (counted and record["perplexity"] < 0.5 * self.peak):
            self.collapsed_since = None
        elif self.collapsed_since is None:
            self.collapsed_since = since
        found = {}
        if self.at_chance_since is not None and step - self.at_chance_since >= self.patience:
            found["chance"] = (f"the contrastive loss has sat at chance, log(K+1) = {self.chance:.3f}, since update "
                               f"{self.at_chance_since}: the context does not tell the targets apart yet; try "
                               "shorter mask spans (--mask-length 5) or a model larger than tiny")
        if self.collapsed_since is not None and step - self.collapsed_since >= self.patience:
            found["collapse"] = (f"the code perplexity has stayed below half its peak since update "
                                 f"{self.collapsed_since} ({record['perplexity']:.0f} of {self.peak:.0f}, with "
                                 f"{self.codes} codes): the codebooks are collapsing; a larger --diversity-weight "
                                 "(say 0.5) or a lower --lr keeps them in use")
        new = [message for name, message in found.items() if name not in self.reported]
        self.reported += tuple(found)
        return new
