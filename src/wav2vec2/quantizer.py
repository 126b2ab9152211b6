"""Product quantization of the latent features: the targets of wav2vec 2.0's contrastive task.

Each latent vector z_t picks one entry from each of G codebooks of V entries; the chosen entries
are concatenated (q_t). Choosing is an argmax, which has no gradient, so training uses the
Gumbel-softmax: the forward pass takes the hard one-hot choice of logits + Gumbel noise, the
backward pass the gradient of the softmax at temperature tau (straight-through estimator).
"""

from __future__ import annotations

import torch
import torch.nn as nn


def gumbel_temperature(step: int, start: float = 2.0, end: float = 0.5, decay: float = 0.999995) -> float:
    """tau = max(start * decay**step, end): anneal from exploring codebooks to near-hard choices
    (the paper's schedule: a fixed factor per update, whatever the length of the run)."""
    return max(start * decay**step, end)


def annealed_temperature(step: int, anneal_steps: int, start: float = 2.0, end: float = 0.5) -> float:
    """tau = start * (end / start)**(step / anneal_steps) until anneal_steps, then end: the same
    exponential decay, timed to reach `end` at a given update of the run."""
    if step >= anneal_steps:
        return end
    return start * (end / start) ** (step / anneal_steps)


def code_perplexity(probs: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Sum over groups of exp(entropy) of the codebook distribution averaged over (masked) steps.

    probs: (steps, groups, entries); mask: (steps,) bool. G*V when every entry is used equally, G
    when each group always picks the same entry.
    """
    if mask is not None:
        probs = probs[mask]
    return perplexity_of(probs.mean(0))


def perplexity_of(average: torch.Tensor) -> torch.Tensor:
    """(groups, entries) average codebook distribution -> sum over groups of exp(entropy)."""
    return group_perplexities(average).sum()


def group_perplexities(average: torch.Tensor) -> torch.Tensor:
    """(groups, entries) average codebook distribution -> (groups,) exp(entropy) of each: from 1
    (one entry always) to V (all equally).

    An entry never chosen can have an average of exactly 0 (its softmax underflows in float32 when
    its logit is ~100 below the top one), where the gradient of xlogy(p, p) is 0/0 = NaN. The log's
    argument is clamped to the smallest normal number: the entropy changes by < 1e-38 per entry,
    and that entry's share of the logits' gradient is its limit, 0 (its softmax, 0, times a log)."""
    return torch.exp(-torch.xlogy(average, average.clamp_min(torch.finfo(average.dtype).tiny)).sum(-1))


def gumbel_softmax(logits: torch.Tensor, temperature: float, noise: torch.Tensor | None = None) -> torch.Tensor:
    """Hard one-hot of argmax(logits + g) forward, softmax((logits + g) / temperature) backward.

    g is Gumbel noise, -log(Exponential(1)); drawn from the global generator when not given,
    exactly as torch.nn.functional.gumbel_softmax draws it.
    """
    if noise is None:
        noise = -torch.empty_like(logits, memory_format=torch.legacy_contiguous_format).exponential_().log()
    soft = ((logits + noise) / temperature).softmax(-1)
    hard = torch.zeros_like(logits).scatter_(-1, soft.argmax(-1, keepdim=True), 1.0)
    return hard - soft.detach() + soft


class GumbelVectorQuantizer(nn.Module):
    """G codebooks of V entries (codevectors), selected by a linear map of the features."""

    def __init__(self, in_dim: int, groups: int = 2, entries: int = 320, codevector_dim: int = 256):
        super().__init__()
        if codevector_dim % groups:
            raise ValueError(f"codevector_dim {codevector_dim} must be divisible by {groups} groups")
        self.groups = groups
        self.entries = entries
        self.weight_proj = nn.Linear(in_dim, groups * entries)
        self.codevectors = nn.Parameter(torch.empty(1, groups * entries, codevector_dim // groups).uniform_())
        self.temperature = 2.0  # set by the training loop at every update (its schedule: temperature_at)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Logits of unit scale, so that the Gumbel noise does not drown them from the start."""
        nn.init.normal_(self.weight_proj.weight, mean=0.0, std=1.0)
        nn.init.zeros_(self.weight_proj.bias)
        nn.init.uniform_(self.codevectors)

    def forward(self, features: torch.Tensor, mask: torch.Tensor | None = None,
                noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """features: (batch, frames, in_dim); mask: (batch, frames) bool, the steps that count for
        the perplexity (the masked ones in pretraining); noise: Gumbel noise (batch, frames,
        groups, entries) for training, drawn here when not given.

        Returns the quantized vectors (batch, frames, codevector_dim), the code perplexity, and the
        codebook probabilities (batch * frames, groups, entries): softmax in training (for the
        diversity loss), the hard choice at inference.
        """
        batch, frames, _ = features.shape
        logits = self.weight_proj(features).view(batch * frames * self.groups, self.entries)
        if self.training:
            if noise is not None:
                noise = noise.reshape(logits.shape).to(torch.float32)
            choice = gumbel_softmax(logits.float(), self.temperature, noise).type_as(logits)
            probs = logits.float().view(batch * frames, self.groups, self.entries).softmax(-1)
        else:
            choice = torch.zeros_like(logits).scatter_(-1, logits.argmax(-1, keepdim=True), 1.0)
            probs = choice.view(batch * frames, self.groups, self.entries)
        perplexity = code_perplexity(probs, None if mask is None else mask.flatten())
        # one-hot (steps, G*V) times codebooks (G*V, d/G), group by group, then concatenated
        choice = choice.view(batch * frames, self.groups, self.entries)
        codebooks = self.codevectors.view(self.groups, self.entries, -1)
        quantized = torch.einsum("sge,ged->sgd", choice, codebooks).reshape(batch, frames, -1)
        return quantized, perplexity, probs
