"""Self-supervised pretraining: span masking, distractors, and the three losses of wav2vec 2.0.

    L = L_m + alpha * L_d + beta * L_p

L_m, the contrastive loss: at each masked step t the context vector c_t must pick the true
quantized latent q_t out of K+1 candidates (q_t and K distractors q~, quantized latents of other
masked steps of the same utterance), by cosine similarity at temperature kappa:

    L_m = -log( exp(sim(c_t, q_t) / kappa) / sum_{q~ in Q_t} exp(sim(c_t, q~) / kappa) )

L_d, the diversity loss, pushes the G codebooks to use their V entries equally:
(G*V - perplexity) / (G*V). L_p is the mean squared feature-encoder output.

Reduction: every term here is a *mean over the masked steps*. fairseq and transformers sum L_m
over the masked steps and scale alpha*L_d and beta*L_p by their number; fairseq then divides
the gradient by that number, which gives exactly these means (so its learning rates apply).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.distributed as dist
import torch.nn.functional as F

from .audio import Preprocessing
from .model import Wav2Vec2Config, Wav2Vec2Model, init_weights
from .quantizer import GumbelVectorQuantizer, perplexity_of


def span_mask(lengths: list[int], frames: int, prob: float = 0.65, span: int = 10, min_spans: int = 2,
              rng: np.random.Generator | None = None) -> torch.Tensor:
    """(batch, frames) bool mask of time steps to hide from the Transformer.

    Each utterance of `length` real frames gets about prob * length / span spans of `span` steps
    (rounded at random, at least `min_spans`), with starts drawn without replacement, so spans
    may overlap and about half the steps are masked at prob=0.65. Padding is never masked.
    """
    rng = rng or np.random.default_rng()
    mask = np.zeros((len(lengths), frames), dtype=bool)
    for row, length in enumerate(lengths):
        starts_available = length - span + 1
        if starts_available <= 0:
            continue
        count = max(int(prob * length / span + rng.random()), min_spans)
        starts = rng.choice(starts_available, min(count, starts_available), replace=False)
        for start in starts:
            mask[row, start:start + span] = True
    return torch.from_numpy(mask)


def sample_distractors(mask: torch.Tensor, count: int = 100, cross_count: int = 0,
                       rng: np.random.Generator | None = None) -> torch.Tensor:
    """(batch, frames, count + cross_count) indices into the flattened (batch * frames) steps.

    For every masked step: `count` other masked steps of the same utterance, uniformly with
    replacement but never the step itself; then `cross_count` masked steps from anywhere in the
    batch (again never itself). Rows of unmasked steps are 0 and unused.
    """
    rng = rng or np.random.default_rng()
    batch, frames = mask.shape
    indices = np.zeros((batch, frames, count + cross_count), dtype=np.int64)
    masked = mask.numpy()
    flat_masked = np.flatnonzero(masked)

    def others(n: int, k: int) -> np.ndarray:
        """(n, k) draws from range(n) without the row's own index, uniformly."""
        draws = rng.integers(0, n - 1, size=(n, k)) if n > 1 else np.zeros((n, k), dtype=np.int64)
        return draws + (draws >= np.arange(n)[:, None])

    for row in range(batch):
        positions = np.flatnonzero(masked[row])
        if len(positions) > 1:
            indices[row, positions, :count] = row * frames + positions[others(len(positions), count)]
        if cross_count and len(flat_masked) > 1:
            own = np.searchsorted(flat_masked, row * frames + positions)
            draws = rng.integers(0, len(flat_masked) - 1, size=(len(positions), cross_count))
            indices[row, positions, count:] = flat_masked[draws + (draws >= own[:, None])]
    return torch.from_numpy(indices)


def contrastive_logits(context: torch.Tensor, quantized: torch.Tensor, candidates: torch.Tensor,
                       temperature: float = 0.1) -> torch.Tensor:
    """Cosine similarities / kappa between each context vector and its K+1 candidates.

    context: (steps, dim); quantized: (n, dim), the pool of quantized targets; candidates:
    (steps, K+1) rows of `quantized`, column 0 the true target. All similarities come from one
    product of the normalised vectors, (steps, n), read at the candidates: far less memory traffic
    than gathering (steps, K+1, dim) copies. A distractor identical to its target gets -inf: it
    cannot be told apart, so it must not count.
    """
    with torch.autocast(context.device.type, enabled=False):  # in float32: logits are divided by kappa
        similarity = F.normalize(context.float(), dim=-1, eps=1e-8) @ F.normalize(quantized.float(), dim=-1, eps=1e-8).T
    logits = similarity.gather(1, candidates) / temperature
    _, identity = torch.unique(quantized.detach(), dim=0, return_inverse=True)  # equal rows, equal ids
    same = identity[candidates[:, 1:]] == identity[candidates[:, :1]]
    return torch.cat([logits[:, :1], logits[:, 1:].masked_fill(same, float("-inf"))], dim=1)


def contrastive_loss(logits: torch.Tensor, count: torch.Tensor | float | None = None) -> torch.Tensor:
    """-log softmax(logits)[true target] (column 0), summed over steps and divided by `count`
    (by default the number of steps: the mean)."""
    target = torch.zeros(len(logits), dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits, target, reduction="sum") / (len(logits) if count is None else count)


def diversity_loss(perplexity: torch.Tensor, groups: int, entries: int) -> torch.Tensor:
    """(G*V - perplexity) / (G*V): 0 when all entries are used equally, near 1 when one is."""
    return (groups * entries - perplexity) / (groups * entries)


def feature_penalty(features: torch.Tensor, mask: torch.Tensor | None = None,
                    count: torch.Tensor | float | None = None) -> torch.Tensor:
    """Mean squared feature-encoder output (before the projection's LayerNorm) over the real
    frames (mask) and channels; with `count`, the sum over frames of their mean is divided by it."""
    squares = features.float().pow(2).mean(-1)
    squares = squares.flatten() if mask is None else squares[mask]
    return squares.sum() / (len(squares) if count is None else count)


@dataclass
class PretrainingOutput:
    loss: torch.Tensor  # L_m + alpha * L_d + beta * L_p, means over masked steps
    contrastive_loss: torch.Tensor
    diversity_loss: torch.Tensor
    feature_penalty: torch.Tensor
    accuracy: torch.Tensor  # how often the true target has the highest similarity
    perplexity: torch.Tensor  # code perplexity over the masked steps
    masked_steps: int
    code_probs: torch.Tensor  # (groups, entries): the codebooks' softmax summed over the masked steps
    code_choices: torch.Tensor  # (groups, entries): masked steps at which each entry was the most likely


class Wav2Vec2ForPreTraining(nn.Module):
    """wav2vec 2.0 with the quantizer and the projections of the contrastive task.

    Parameter names are those of transformers.Wav2Vec2ForPreTraining.
    """

    def __init__(self, config: Wav2Vec2Config, feature_grad_mult: float = 0.1,
                 feature_penalty_weight: float = 10.0):
        super().__init__()
        self.config = config
        self.preprocessing = Preprocessing()  # what its audio was fed with; saved beside the weights
        self.feature_grad_mult = feature_grad_mult
        self.feature_penalty_weight = feature_penalty_weight
        self.wav2vec2 = Wav2Vec2Model(config)
        self.dropout_features = nn.Dropout(config.feat_quantizer_dropout)
        self.quantizer = GumbelVectorQuantizer(config.conv_dim[-1], config.num_codevector_groups,
                                               config.num_codevectors_per_group, config.codevector_dim)
        self.project_hid = nn.Linear(config.hidden_size, config.proj_codevector_dim)
        self.project_q = nn.Linear(config.codevector_dim, config.proj_codevector_dim)
        init_weights(self, config.initializer_range)
        self.quantizer.reset_parameters()
        self.project_hid.reset_parameters()  # PyTorch's default for the two heads, as fairseq
        self.project_q.reset_parameters()

    def forward(self, waveform: torch.Tensor, attention_mask: torch.Tensor | None,
                time_mask: torch.Tensor, distractors: torch.Tensor,
                gumbel_noise: torch.Tensor | None = None) -> PretrainingOutput:
        """time_mask: (batch, frames) bool from span_mask; distractors: (batch, frames, K) from
        sample_distractors, indices into the flattened batch * frames steps; gumbel_noise:
        (batch, frames, G, V), drawn from the global generator when not given.

        In a distributed run every mean is taken over the masked steps of all processes, and the
        code perplexity over their average codebook distribution, so that N processes compute the
        loss of one process on the union of their batches. Each process's terms are then its
        share times the number of processes, because DistributedDataParallel averages gradients.
        """
        encoded = self.wav2vec2(waveform, attention_mask, time_mask,
                                feature_grad_mult=self.feature_grad_mult if self.training else 1.0)
        context = self.project_hid(encoded.context)
        quantized, _, probs = self.quantizer(self.dropout_features(encoded.normalised_features), time_mask,
                                             gumbel_noise)
        quantized = self.project_q(quantized)

        # Targets and distractors are masked steps: index them among those. The clamp keeps the
        # unused 0 rows sample_distractors leaves for an utterance of one masked step in range.
        row = (torch.cumsum(time_mask.flatten(), 0) - 1).clamp(min=0)  # flat step -> masked row
        candidates = torch.cat([row[time_mask.flatten()][:, None], row[distractors[time_mask]]], dim=1)
        logits = contrastive_logits(context[time_mask], quantized[time_mask], candidates,
                                    self.config.contrastive_logits_temperature)
        processes = world_size()
        masked = all_sum(time_mask.sum().float()).detach()
        contrastive = contrastive_loss(logits, masked / processes)
        masked_probs = probs[time_mask.flatten()]
        code_probs = all_sum(masked_probs.sum(0))
        perplexity = perplexity_of(code_probs / masked)
        diversity = diversity_loss(perplexity, self.quantizer.groups, self.quantizer.entries)
        frames = encoded.features[..., 0].numel() if encoded.mask is None else encoded.mask.sum()
        penalty = feature_penalty(encoded.features, encoded.mask, all_sum(torch.as_tensor(
            frames, dtype=torch.float32, device=waveform.device)) / processes)
        loss = contrastive + self.config.diversity_loss_weight * diversity + self.feature_penalty_weight * penalty
        correct = all_sum((logits.argmax(-1) == 0).sum().float()).detach()
        choices = torch.stack([torch.bincount(group, minlength=self.quantizer.entries)
                               for group in masked_probs.argmax(-1).T])
        return PretrainingOutput(loss, contrastive, diversity, penalty, correct / masked, perplexity.detach(),
                                 int(masked), code_probs.detach(), all_sum(choices.float()).detach())


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def all_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum of x over the processes of a distributed run, differentiably; x itself when alone."""
    if world_size() == 1:
        return x
    import torch.distributed.nn.functional as distributed_functional

    return distributed_functional.all_reduce(x)
