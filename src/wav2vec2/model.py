"""The wav2vec 2.0 network (Baevski et al., 2020), written plainly.

    waveform (batch, samples)
      -> FeatureEncoder      7 strided convolutions, 20 ms frames          (batch, frames, 512)
      -> FeatureProjection   LayerNorm + Linear                            (batch, frames, hidden)
      -> Encoder             convolutional positional embedding + Transformer
      -> lm_head             CTC logits                                    (batch, frames, vocab)

Module and parameter names follow the Hugging Face checkpoints (except `feature_encoder`, which
they call `feature_extractor`), so that loading a checkpoint is a near one-to-one copy.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .kernels import (Dropout, GroupedConv, ScaleGradient, attention_with_dropout, plain_ops,
                      time_major_feature_encoder)

ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
}


@dataclass
class Wav2Vec2Config:
    """The fields of a Hugging Face wav2vec2 `config.json` that shape or train the network.

    Defaults are those of `facebook/wav2vec2-base`. Fields this class does not know are kept in
    `extra` and written back unchanged, so a config survives a load/save round trip.
    """

    vocab_size: int = 32
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout: float = 0.1
    activation_dropout: float = 0.1
    attention_dropout: float = 0.1
    feat_proj_dropout: float = 0.0
    final_dropout: float = 0.1
    layerdrop: float = 0.1
    layer_norm_eps: float = 1e-5
    initializer_range: float = 0.02
    # Feature encoder: "group" = GroupNorm after the first convolution only (base),
    # "layer" = LayerNorm after every convolution (large / lv60).
    feat_extract_norm: str = "group"
    feat_extract_activation: str = "gelu"
    conv_dim: tuple[int, ...] = (512, 512, 512, 512, 512, 512, 512)
    conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)
    conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
    conv_bias: bool = False
    num_conv_pos_embeddings: int = 128
    num_conv_pos_embedding_groups: int = 16
    # False: post-LayerNorm Transformer (base); True: pre-LayerNorm "stable layer norm" (lv60).
    do_stable_layer_norm: bool = False
    # SpecAugment-style masking of the projected features during training.
    apply_spec_augment: bool = True
    mask_time_prob: float = 0.05
    mask_time_length: int = 10
    mask_time_min_masks: int = 2
    mask_feature_prob: float = 0.0
    mask_feature_length: int = 10
    mask_feature_min_masks: int = 0
    # Quantizer and contrastive task (pretraining).
    num_codevector_groups: int = 2
    num_codevectors_per_group: int = 320
    codevector_dim: int = 256
    proj_codevector_dim: int = 256
    contrastive_logits_temperature: float = 0.1
    num_negatives: int = 100
    diversity_loss_weight: float = 0.1
    feat_quantizer_dropout: float = 0.0
    # CTC.
    ctc_loss_reduction: str = "sum"
    ctc_zero_infinity: bool = False
    pad_token_id: int = 0
    bos_token_id: int = 1
    eos_token_id: int = 2
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Wav2Vec2Config:
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in known}
        derived = {"model_type", "num_feat_extract_layers"}  # written by to_dict
        extra = {k: v for k, v in values.items() if k not in known and k not in derived}
        config = cls(**kwargs, extra=extra)
        config.validate()
        return config

    def to_dict(self) -> dict[str, Any]:
        values = {k: v for k, v in dataclasses.asdict(self).items() if k != "extra"}
        values = {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}
        return {**self.extra, **values, "model_type": "wav2vec2",
                "num_feat_extract_layers": len(self.conv_dim)}

    def validate(self) -> None:
        if self.feat_extract_norm not in ("group", "layer"):
            raise ValueError(f"feat_extract_norm must be 'group' or 'layer', not {self.feat_extract_norm!r}")
        if not len(self.conv_dim) == len(self.conv_kernel) == len(self.conv_stride):
            raise ValueError("conv_dim, conv_kernel and conv_stride must have the same length")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("hidden_size must be a multiple of num_attention_heads")
        for name in (self.hidden_act, self.feat_extract_activation):
            if name not in ACTIVATIONS:
                raise ValueError(f"unsupported activation {name!r} (known: {', '.join(ACTIVATIONS)})")
        if self.extra.get("add_adapter"):
            raise ValueError("checkpoints with an adapter (add_adapter=true) are not supported")

    @property
    def samples_per_frame(self) -> int:
        """Hop between two output frames in samples: 320 (20 ms at 16 kHz) for the usual encoder."""
        hop = 1
        for stride in self.conv_stride:
            hop *= stride
        return hop

    @property
    def receptive_field(self) -> int:
        """Samples that one output frame sees: 400 (25 ms) for the usual encoder."""
        field, hop = 1, 1
        for kernel, stride in zip(self.conv_kernel, self.conv_stride):
            field += (kernel - 1) * hop
            hop *= stride
        return field


def frame_lengths(sample_lengths: torch.Tensor, config: Wav2Vec2Config) -> torch.Tensor:
    """Number of output frames for inputs of the given numbers of samples (no padding anywhere)."""
    lengths = sample_lengths
    for kernel, stride in zip(config.conv_kernel, config.conv_stride):
        lengths = torch.div(lengths - kernel, stride, rounding_mode="floor") + 1
    return lengths.clamp(min=0)


def frame_mask(sample_mask: torch.Tensor, num_frames: int, config: Wav2Vec2Config) -> torch.Tensor:
    """(batch, samples) padding mask -> (batch, frames) mask, True where a frame sees only real audio."""
    lengths = frame_lengths(sample_mask.long().sum(-1), config)
    return torch.arange(num_frames, device=sample_mask.device)[None, :] < lengths[:, None]


class ConvLayer(nn.Module):
    """One convolution of the feature encoder with its optional normalisation and activation."""

    def __init__(self, in_dim: int, out_dim: int, kernel: int, stride: int, bias: bool,
                 norm: str | None, activation: str):
        super().__init__()
        self.conv = nn.Conv1d(in_dim, out_dim, kernel, stride=stride, bias=bias)
        self.norm = norm
        if norm == "group":  # one group per channel: normalises each channel over time
            self.layer_norm = nn.GroupNorm(out_dim, out_dim, affine=True)
        elif norm == "layer":  # normalises each frame over channels
            self.layer_norm = nn.LayerNorm(out_dim, elementwise_affine=True)
        self.activation = ACTIVATIONS[activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, channels, time) -> (batch, channels, time)."""
        x = self.conv(x)
        if self.norm == "group":
            x = self.layer_norm(x)
        elif self.norm == "layer":
            x = self.layer_norm(x.transpose(1, 2)).transpose(1, 2)
        return self.activation(x)

    def finish(self, x: torch.Tensor) -> torch.Tensor:
        """The per-frame LayerNorm, if any, and the activation of a time-major convolution output."""
        if self.norm == "layer":
            x = self.layer_norm(x)
        return self.activation(x)


class FeatureEncoder(nn.Module):
    """Raw waveform -> one 512-dimensional latent vector z_t every 20 ms."""

    block_frames = 512  # outputs of the second convolution computed per cache-sized block

    def __init__(self, config: Wav2Vec2Config):
        super().__init__()
        dims = (1,) + tuple(config.conv_dim)
        layers = []
        for i, (kernel, stride) in enumerate(zip(config.conv_kernel, config.conv_stride)):
            if config.feat_extract_norm == "layer":
                norm = "layer"
            else:
                norm = "group" if i == 0 else None
            layers.append(ConvLayer(dims[i], dims[i + 1], kernel, stride, config.conv_bias, norm,
                                    config.feat_extract_activation))
        self.conv_layers = nn.ModuleList(layers)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        """(batch, samples) -> (batch, frames, conv_dim[-1])."""
        if (waveform.device.type != "cpu" or torch.is_autocast_enabled("cpu") or len(self.conv_layers) < 2
                or plain_ops()):
            x = waveform[:, None, :]
            for layer in self.conv_layers:
                x = layer(x)
            return x.transpose(1, 2)
        return torch.stack([time_major_feature_encoder(self.conv_layers, w.contiguous(), self.block_frames)
                            for w in waveform])


class FeatureProjection(nn.Module):
    """LayerNorm of the latent features, then a linear map to the Transformer's width."""

    def __init__(self, config: Wav2Vec2Config):
        super().__init__()
        self.layer_norm = nn.LayerNorm(config.conv_dim[-1], eps=config.layer_norm_eps)
        self.projection = nn.Linear(config.conv_dim[-1], config.hidden_size)
        self.dropout = Dropout(config.feat_proj_dropout)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (projected, normalised): the quantizer of pretraining reads the normalised ones."""
        normalised = self.layer_norm(features)
        return self.dropout(self.projection(normalised)), normalised


class PositionalConvEmbedding(nn.Module):
    """Relative positions from a wide grouped convolution over time (instead of sinusoids).

    Weight-normalised over the kernel axis (dim=2) as in the paper's code; with an even kernel the
    convolution yields one frame too many, which is dropped at the end.
    """

    def __init__(self, config: Wav2Vec2Config):
        super().__init__()
        kernel = config.num_conv_pos_embeddings
        conv = nn.Conv1d(config.hidden_size, config.hidden_size, kernel, padding=kernel // 2,
                         groups=config.num_conv_pos_embedding_groups)
        nn.init.normal_(conv.weight, mean=0.0, std=2 * math.sqrt(1 / (kernel * config.hidden_size)))
        nn.init.zeros_(conv.bias)
        self.conv = nn.utils.parametrizations.weight_norm(conv, name="weight", dim=2)
        self.remove = 1 if kernel % 2 == 0 else 0
        self.activation = ACTIVATIONS[config.feat_extract_activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, frames, hidden) -> (batch, frames, hidden)."""
        x = x.transpose(1, 2)
        if x.device.type == "cpu" and not torch.is_autocast_enabled("cpu") and not plain_ops():
            y = GroupedConv.apply(x, self.conv.weight, self.conv.bias, self.conv.padding[0], self.conv.groups)
        else:
            y = self.conv(x)
        if self.remove:
            y = y[:, :, : -self.remove]
        return self.activation(y).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention through PyTorch's fused scaled_dot_product_attention (written out
    by attention_with_dropout when training on a CPU with dropout).

    Queries, keys and values come from one (3 * hidden, hidden) projection, `in_proj`: a single
    matrix product runs much closer to the CPU's peak than three narrow ones. Checkpoints keep
    them apart as q_proj, k_proj and v_proj; checkpoints.py joins and splits them.
    """

    def __init__(self, hidden: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.in_proj = nn.Linear(hidden, 3 * hidden)
        self.out_proj = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        """x: (batch, frames, hidden); key_mask: (batch, 1, 1, frames), True = attend, or None."""
        batch, frames, hidden = x.shape
        qkv = self.in_proj(x).view(batch, frames, 3, self.heads, hidden // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (batch, heads, frames, head_dim)
        if self.training and self.dropout > 0 and x.device.type == "cpu":
            y = attention_with_dropout(q, k, v, key_mask, self.dropout)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask,
                                               dropout_p=self.dropout if self.training else 0.0)
        return self.out_proj(y.transpose(1, 2).reshape(batch, frames, hidden))


class FeedForward(nn.Module):
    def __init__(self, config: Wav2Vec2Config):
        super().__init__()
        self.intermediate_dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.output_dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.activation = ACTIVATIONS[config.hidden_act]
        self.intermediate_dropout = Dropout(config.activation_dropout)
        self.output_dropout = Dropout(config.hidden_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.intermediate_dropout(self.activation(self.intermediate_dense(x)))
        return self.output_dropout(self.output_dense(x))


class EncoderLayer(nn.Module):
    """A Transformer block. Post-LN (base): x = LN(x + f(x)). Pre-LN (lv60): x = x + f(LN(x))."""

    def __init__(self, config: Wav2Vec2Config):
        super().__init__()
        self.pre_norm = config.do_stable_layer_norm
        self.attention = Attention(config.hidden_size, config.num_attention_heads, config.attention_dropout)
        self.dropout = Dropout(config.hidden_dropout)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.feed_forward = FeedForward(config)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        if self.pre_norm:
            x = x + self.dropout(self.attention(self.layer_norm(x), key_mask))
            return x + self.feed_forward(self.final_layer_norm(x))
        x = self.layer_norm(x + self.dropout(self.attention(x, key_mask)))
        return self.final_layer_norm(x + self.feed_forward(x))


class Encoder(nn.Module):
    """The context network: positional convolution, then the Transformer layers, with LayerDrop."""

    def __init__(self, config: Wav2Vec2Config):
        super().__init__()
        self.pre_norm = config.do_stable_layer_norm
        self.layerdrop = config.layerdrop
        self.pos_conv_embed = PositionalConvEmbedding(config)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout)
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.num_hidden_layers))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (batch, frames, hidden); mask: (batch, frames), True on real frames, or None."""
        key_mask = None
        if mask is not None:
            x = x.masked_fill(~mask[:, :, None], 0.0)  # padding must not leak through the convolution
            key_mask = mask[:, None, None, :]
        x = x + self.pos_conv_embed(x)
        if not self.pre_norm:
            x = self.layer_norm(x)
        x = self.dropout(x)
        for layer in self.layers:
            if self.training and self.layerdrop > 0 and torch.rand(()) < self.layerdrop:
                continue  # LayerDrop: skip the whole block
            x = layer(x, key_mask)
        if self.pre_norm:
            x = self.layer_norm(x)
        return x


@dataclass
class Wav2Vec2Output:
    context: torch.Tensor  # c_t: Transformer output (batch, frames, hidden)
    features: torch.Tensor  # z_t: feature-encoder output, before the projection's LayerNorm
    normalised_features: torch.Tensor  # LayerNorm(z_t): what the quantizer reads
    mask: torch.Tensor | None  # (batch, frames) True on real frames, None without padding


class Wav2Vec2Model(nn.Module):
    """Feature encoder + projection + context network: waveform in, contextual vectors out."""

    def __init__(self, config: Wav2Vec2Config):
        super().__init__()
        self.config = config
        self.feature_encoder = FeatureEncoder(config)
        self.feature_projection = FeatureProjection(config)
        # Replaces masked time steps during pretraining and fine-tuning (SpecAugment).
        self.masked_spec_embed = nn.Parameter(torch.empty(config.hidden_size).uniform_())
        self.encoder = Encoder(config)

    def forward(self, waveform: torch.Tensor, attention_mask: torch.Tensor | None = None,
                time_mask: torch.Tensor | None = None, feature_grad_mult: float = 1.0,
                channel_mask: torch.Tensor | None = None) -> Wav2Vec2Output:
        """waveform: (batch, samples); attention_mask: (batch, samples), 1 on real samples;
        time_mask: (batch, frames) bool, True where the features are replaced by the mask embedding;
        feature_grad_mult: scales the gradient reaching the feature encoder (0 freezes it);
        channel_mask: (batch, hidden) bool, channels zeroed at every frame (SpecAugment's
        frequency masking, for fine-tuning)."""
        if feature_grad_mult == 0.0:
            with torch.no_grad():
                features = self.feature_encoder(waveform)
        else:
            features = self.feature_encoder(waveform)
            if feature_grad_mult != 1.0 and features.requires_grad:
                features = ScaleGradient.apply(features, feature_grad_mult)
        mask = None
        if attention_mask is not None:
            mask = frame_mask(attention_mask, features.shape[1], self.config)
        hidden, normalised = self.feature_projection(features)
        if time_mask is not None:
            hidden = torch.where(time_mask[:, :, None], self.masked_spec_embed.to(hidden.dtype), hidden)
        if channel_mask is not None:
            hidden = hidden.masked_fill(channel_mask[:, None, :], 0.0)
        context = self.encoder(hidden, mask)
        return Wav2Vec2Output(context, features, normalised, mask)


def init_weights(model: nn.Module, initializer_range: float = 0.02) -> None:
    """The initialisation of the paper's code (as fairseq and transformers do it): linear layers
    N(0, 0.02), convolutions He-normal, norms the identity. Modules with a special scheme (the
    positional convolution, the quantizer) set their own when built and are left alone here."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=initializer_range)
            nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.LayerNorm, nn.GroupNorm)):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Conv1d) and not nn.utils.parametrize.is_parametrized(module):
            nn.init.kaiming_normal_(module.weight)
            if module.bias is not None:
                bound = math.sqrt(module.groups / (module.in_channels * module.kernel_size[0]))
                nn.init.uniform_(module.bias, -bound, bound)
        elif isinstance(module, FeatureProjection):
            bound = math.sqrt(1 / module.projection.in_features)
            nn.init.uniform_(module.projection.weight, -bound, bound)
            nn.init.uniform_(module.projection.bias, -bound, bound)


class Wav2Vec2ForCTC(nn.Module):
    """wav2vec 2.0 with a linear CTC head: waveform -> per-frame character logits.

    A loaded checkpoint also carries what it needs to read audio and write text: `vocab`
    (wav2vec2.vocab.Vocabulary) and `preprocessing` (wav2vec2.audio.Preprocessing).
    """

    def __init__(self, config: Wav2Vec2Config, vocab=None, preprocessing=None):
        super().__init__()
        from .audio import Preprocessing  # local: audio.py does not need the model

        self.config = config
        self.vocab = vocab
        self.preprocessing = preprocessing or Preprocessing()
        self.precision = "fp32"  # what wav2vec2.precision.apply_precision made of it
        self.wav2vec2 = Wav2Vec2Model(config)
        self.dropout = Dropout(config.final_dropout)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size)
        init_weights(self, config.initializer_range)

    def forward(self, waveform: torch.Tensor, attention_mask: torch.Tensor | None = None,
                time_mask: torch.Tensor | None = None, channel_mask: torch.Tensor | None = None,
                feature_grad_mult: float = 1.0) -> torch.Tensor:
        """(batch, samples) -> CTC logits (batch, frames, vocab_size). The masks and the gradient
        multiplier are for fine-tuning (see Wav2Vec2Model.forward)."""
        context = self.wav2vec2(waveform, attention_mask, time_mask, feature_grad_mult, channel_mask).context
        return self.lm_head(self.dropout(context).to(self.lm_head.weight.dtype))  # bf16 context: float logits

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    def transcribe(self, audio, **options):
        """Transcribe a file path or a 16 kHz mono array; see wav2vec2.transcribe.transcribe."""
        from .transcribe import transcribe

        return transcribe(self, audio, **options)

    def save(self, folder) -> None:
        """Write a Hugging Face checkpoint folder (config, safetensors weights, vocab, preprocessor)."""
        from .checkpoints import save_model

        save_model(self, folder)
