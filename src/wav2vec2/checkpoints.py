"""Checkpoints: a Hub id or a local folder <-> our modules, in the Hugging Face layout.

A folder holds `config.json`, the weights (`model.safetensors`, sharded safetensors, or a
`pytorch_model.bin` read with `weights_only=True`), `vocab.json` with the tokenizer settings, and
the feature-extractor settings (`preprocessor_config.json`, or the `processor_config.json` that
transformers 5 writes). Hub ids are downloaded once into the Hugging Face cache and read from
there afterwards, also offline.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

import torch
import torch.nn as nn

from .audio import Preprocessing
from .errors import CheckpointError
from .model import Wav2Vec2Config, Wav2Vec2ForCTC
from .vocab import Vocabulary

CONFIG_FILES = ["config.json", "vocab.json", "tokenizer_config.json", "special_tokens_map.json",
                "preprocessor_config.json", "processor_config.json"]
SAFETENSORS_FILES = ["model.safetensors", "model.safetensors.index.json", "model-*.safetensors"]
PICKLE_FILES = ["pytorch_model.bin", "pytorch_model.bin.index.json", "pytorch_model-*.bin"]

# Keys that a checkpoint may lack without harm: the mask embedding is only used in training.
OPTIONAL_KEYS = {"wav2vec2.masked_spec_embed"}


# The demo model shipped inside the package: a small CTC model trained on the synthetic English
# speech of recipes/synthetic/ (see its RESULTS.md), so that something recognises speech offline.
DEMO_NAME = "demo"
DEMO_FOLDER = Path(__file__).parent / "demo"


def resolve(name_or_path: str | os.PathLike) -> Path:
    """The shipped demo model ("demo"; a local folder of that name is "./demo"), a local
    checkpoint folder, or the cached snapshot of a Hugging Face Hub id."""
    if str(name_or_path) == DEMO_NAME:
        if not (DEMO_FOLDER / "config.json").is_file():
            raise CheckpointError(f"the demo model is missing from this installation ({DEMO_FOLDER})")
        return DEMO_FOLDER
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    name = str(name_or_path)
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name:
        raise CheckpointError(f"{name}: no such checkpoint folder")
    return download(name)


def download(repo_id: str, revision: str | None = None) -> Path:
    """Fetch a checkpoint from the Hub into its cache (or find it there when offline)."""
    import huggingface_hub
    from huggingface_hub.errors import (HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    def fetch(patterns: list[str]) -> Path:
        return Path(huggingface_hub.snapshot_download(repo_id, revision=revision, allow_patterns=patterns))

    try:
        folder = fetch(CONFIG_FILES + SAFETENSORS_FILES)
        if not any(folder.glob("*.safetensors")):
            folder = fetch(CONFIG_FILES + PICKLE_FILES)
    except (RepositoryNotFoundError, RevisionNotFoundError):
        raise CheckpointError(f"{repo_id}: no such local folder, and no such model on the Hugging Face Hub") from None
    except (LocalEntryNotFoundError, OfflineModeIsEnabled, HfHubHTTPError, OSError, ValueError) as error:
        offline = huggingface_hub.constants.HF_HUB_OFFLINE or isinstance(error, OfflineModeIsEnabled)
        why = "offline mode is on (HF_HUB_OFFLINE)" if offline else "the Hub could not be reached"
        raise CheckpointError(f"{repo_id}: not a local folder, and not in the Hugging Face cache; {why}. "
                              "Download it once with network access, pass a local checkpoint folder, "
                              f"or use the shipped demo model, which works offline (--model {DEMO_NAME})") from None
    return folder


def read_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint folder: safetensors first, then pickles loaded safely."""
    from safetensors.torch import load_file

    def shards(index_name: str) -> list[Path]:
        index = json.loads((folder / index_name).read_text())
        return sorted({folder / name for name in index["weight_map"].values()})

    try:
        if (folder / "model.safetensors").is_file():
            files, loader = [folder / "model.safetensors"], load_file
        elif (folder / "model.safetensors.index.json").is_file():
            files, loader = shards("model.safetensors.index.json"), load_file
        else:
            def loader(file):
                return torch.load(file, map_location="cpu", weights_only=True)
            if (folder / "pytorch_model.bin").is_file():
                files = [folder / "pytorch_model.bin"]
            elif (folder / "pytorch_model.bin.index.json").is_file():
                files = shards("pytorch_model.bin.index.json")
            else:
                raise CheckpointError(f"{folder}: no weights (model.safetensors or pytorch_model.bin)")
        state: dict[str, torch.Tensor] = {}
        for file in files:
            state.update(loader(str(file)))
    except CheckpointError:
        raise
    except Exception as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"{folder}: the weights could not be read ({reason})") from None
    return state


def from_hf_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename Hugging Face keys to ours.

    Ours say `feature_encoder` where theirs say `feature_extractor`, and keep the query, key and
    value projections in one `in_proj`. The weight-normed positional convolution is stored either
    the old way (`weight_g`, `weight_v`) or as a parametrization (`parametrizations.weight.
    original0/1`); we use the latter. A bare `Wav2Vec2Model` checkpoint has no `wav2vec2.` prefix.
    """
    bare = not any(key.startswith("wav2vec2.") for key in state)
    renamed = {}
    for key, value in state.items():
        if bare:
            key = "wav2vec2." + key
        key = key.replace("wav2vec2.feature_extractor.", "wav2vec2.feature_encoder.")
        key = re.sub(r"\.conv\.weight_g$", ".conv.parametrizations.weight.original0", key)
        key = re.sub(r"\.conv\.weight_v$", ".conv.parametrizations.weight.original1", key)
        renamed[key] = value
    for key in [k for k in renamed if re.search(r"\.attention\.q_proj\.(weight|bias)$", k)]:
        parts = [key.replace(".q_proj.", f".{name}.") for name in ("q_proj", "k_proj", "v_proj")]
        if all(part in renamed for part in parts):
            renamed[key.replace(".q_proj.", ".in_proj.")] = torch.cat([renamed.pop(p) for p in parts])
    return renamed


def to_hf_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our keys to Hugging Face's: the inverse of from_hf_keys."""
    renamed = {}
    for key, value in state.items():
        key = key.replace("wav2vec2.feature_encoder.", "wav2vec2.feature_extractor.")
        if ".attention.in_proj." in key:
            for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3)):
                renamed[key.replace(".in_proj.", f".{name}.")] = part
        else:
            renamed[key] = value
    return renamed


def load_state(module: nn.Module, state: dict[str, torch.Tensor], source: str,
               optional: set[str] = OPTIONAL_KEYS, ignore: tuple[str, ...] = ()) -> None:
    """Copy `state` into `module`, or raise one CheckpointError naming every key that does not fit.

    `optional` keys may be missing from the checkpoint; keys starting with a prefix in `ignore`
    may be present without a place in the module (for example a pretraining head).
    """
    own = module.state_dict()
    missing = sorted(k for k in own if k not in state and k not in optional)
    unexpected = sorted(k for k in state if k not in own and not k.startswith(ignore))
    misshaped = sorted(f"{k} {tuple(state[k].shape)} != {tuple(own[k].shape)}"
                       for k in own if k in state and state[k].shape != own[k].shape)
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
        if keys:
            shown = ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")
            problems.append(f"{len(keys)} {label} weight(s): {shown}")
    if problems:
        raise CheckpointError(f"{source}: weights do not fit the model: " + "; ".join(problems))
    module.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)


def read_config(folder: Path) -> Wav2Vec2Config:
    path = folder / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{folder}: no config.json")
    try:
        values = json.loads(path.read_text())
    except ValueError as error:
        raise CheckpointError(f"{path}: not valid JSON ({error})") from None
    if values.get("model_type", "wav2vec2") != "wav2vec2":
        raise CheckpointError(f"{path}: model_type is {values['model_type']!r}, not 'wav2vec2'")
    try:
        return Wav2Vec2Config.from_dict(values)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: {error}") from None


def load_model(name_or_path: str | os.PathLike, device: str | torch.device = "cpu",
               precision: str = "fp32") -> Wav2Vec2ForCTC:
    """Load a wav2vec2 CTC checkpoint from a Hub id or a local folder, ready for inference, at
    `precision`: fp32, bf16 or int8 (on CPUs), or auto (see wav2vec2.precision)."""
    from .precision import apply_precision, check_precision

    check_precision(precision, device)  # before the weights are read
    folder = resolve(name_or_path)
    config = read_config(folder)
    vocab = Vocabulary.from_folder(folder)
    preprocessing = Preprocessing.from_folder(folder) or Preprocessing(
        return_attention_mask=config.feat_extract_norm == "layer")
    state = from_hf_keys(read_state_dict(folder))
    if "lm_head.weight" not in state:
        raise CheckpointError(f"{name_or_path}: the checkpoint has no CTC head (lm_head); "
                              "it is a pretrained encoder that must be fine-tuned first")
    model = Wav2Vec2ForCTC(config, vocab, preprocessing)
    load_state(model, state, str(name_or_path), ignore=("quantizer.", "project_q.", "project_hid."))
    return apply_precision(model.to(device).eval(), precision)


def save_model(model: nn.Module, folder: str | os.PathLike, dtype: torch.dtype | None = None) -> None:
    """Write a Wav2Vec2ForCTC or Wav2Vec2ForPreTraining as a Hugging Face checkpoint folder
    (config, safetensors weights, preprocessor settings, and the vocabulary of a CTC model),
    each file replaced atomically. `dtype` (float16, say) halves the file; loading casts the
    weights back to the model's float32."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = {**model.config.to_dict(), "architectures": [type(model).__name__]}
    texts = {"config.json": json.dumps(config, indent=2),
             "preprocessor_config.json": json.dumps(model.preprocessing.to_dict(), indent=2)}
    if getattr(model, "vocab", None) is not None:
        texts.update(model.vocab.files())
    state = {}
    for key, value in to_hf_keys(model.state_dict()).items():
        value = value.detach().cpu()
        if dtype is not None and value.is_floating_point():
            value = value.to(dtype)
        state[key] = value.contiguous()
    _write_atomically(folder / "model.safetensors",
                      lambda path: save_file(state, str(path), metadata={"format": "pt"}))
    for name, text in texts.items():
        _write_atomically(folder / name, lambda path, text=text: path.write_text(text, encoding="utf-8"))


def load_pretrained(name_or_path: str | os.PathLike):
    """A Wav2Vec2ForPreTraining checkpoint (ours, or transformers'), for inspection or more training."""
    from .pretraining import Wav2Vec2ForPreTraining

    folder = resolve(name_or_path)
    model = Wav2Vec2ForPreTraining(read_config(folder))
    model.preprocessing = Preprocessing.from_folder(folder) or model.preprocessing
    load_state(model, from_hf_keys(read_state_dict(folder)), str(name_or_path))
    return model


def _write_atomically(target: Path, write) -> None:
    """Write through a temporary file in the same folder, then rename: a failed write (a full
    disk, say) leaves the previous file intact."""
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    os.close(handle)
    try:
        write(Path(temporary))
        os.replace(temporary, target)
    except OSError as error:
        raise CheckpointError(f"{target}: could not be written ({error.strerror or error})") from None
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
