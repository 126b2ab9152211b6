"""Named model sizes for training from scratch, and configs read from a file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..model import Wav2Vec2Config

# "base" and "large" are the paper's (large as in facebook/wav2vec2-large-lv60: LayerNorm
# encoder, pre-LN); "tiny" and "small" fit a CPU.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(conv_dim=(32,) * 7, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=64, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
                 num_codevectors_per_group=32, codevector_dim=32, proj_codevector_dim=32),
    "small": dict(conv_dim=(256,) * 7, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                  intermediate_size=1024, num_conv_pos_embeddings=64, num_conv_pos_embedding_groups=16,
                  num_codevectors_per_group=160, codevector_dim=128, proj_codevector_dim=128),
    "base": dict(),
    "large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                  feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True,
                  codevector_dim=768, proj_codevector_dim=768),
}


def preset_config(name: str, **overrides: Any) -> Wav2Vec2Config:
    """One of PRESETS, or the path of a config.json."""
    if name in PRESETS:
        return Wav2Vec2Config.from_dict({**PRESETS[name], **overrides})
    path = Path(name)
    if not path.is_file():
        raise ValueError(f"model config {name!r} is neither one of {', '.join(PRESETS)} nor a file")
    return Wav2Vec2Config.from_dict({**json.loads(path.read_text()), **overrides})
