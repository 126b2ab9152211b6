"""CTC fine-tuning: `wav2vec2 finetune`, or `finetune(FinetuneSettings(...))`.

A pretrained encoder gets a fresh linear CTC head over a character vocabulary (the init
checkpoint's, or one built from the training transcripts). The feature encoder stays frozen
(unless `train_feature_encoder`, for a random initialisation that has nothing worth keeping),
the Transformer too for the first `freeze_steps` updates (only the head learns, from stable
features); time and channel masking (SpecAugment) and LayerDrop regularise; the learning rate
follows the tri-stage schedule. The dev set is scored every `eval_every` steps and the best model
(lowest WER, or CER with `best_metric="cer"`) is kept: the run folder's final/ is that model, a
complete Hugging Face checkpoint.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from ..audio import SAMPLE_RATE, Preprocessing, load_audio, normalize
from ..checkpoints import from_hf_keys, load_state, read_config, read_state_dict, resolve, save_model
from ..errors import AudioError, DataError, Wav2Vec2Error
from ..manifest import Entry, load_data
from ..model import Wav2Vec2Config, Wav2Vec2ForCTC, frame_lengths
from ..pretraining import span_mask
from ..vocab import Vocabulary, build_vocabulary, normalize_text
from .data import BatchOrder, change_speed, make_batches, measure, rng_for
from .loop import (Progress, RunLog, Runtime, autocast, average_over_processes, checkpoint_on_main, make_optimizer,
                   peak_lrs, resume_point, run_training, seed_for, set_lr, training_precision, tri_stage,
                   update)
from .presets import PRESETS, preset_config


@dataclass
class FinetuneSettings:
    init: str  # a pretrained checkpoint (folder or Hub id); a preset name or config.json: random initialisation
    train: str  # manifest (or LibriSpeech folder) of labelled audio
    out: str  # the run folder
    dev: str | None = None  # labelled audio scored every eval_every steps
    max_steps: int = 1000
    seed: int = 0
    resume: bool = False
    device: str = "auto"
    precision: str = "auto"
    lr: float = 5e-5
    head_lr: float | None = None  # default: lr
    weight_decay: float = 0.0
    freeze_steps: int = 0  # updates during which only the CTC head learns
    reinit_top: int = 0  # top Transformer layers that start from a fresh initialisation, not the init's
    train_feature_encoder: bool = False  # for random initialisation: nothing to keep frozen
    max_batch_seconds: float = 40.0
    max_seconds: float = 30.0  # longer utterances are skipped (and counted)
    accumulate: int = 1
    clip_norm: float = 10.0
    mask_time_prob: float = 0.5
    mask_time_length: int = 10
    mask_feature_prob: float = 0.1
    mask_feature_length: int = 64
    speed_perturb: float = 0.0  # each training utterance's speed drawn from [1 - x, 1 + x]
    layerdrop: float | None = None  # default: the init checkpoint's
    log_every: int = 10
    eval_every: int = 500
    best_metric: str = "wer"  # wer | cer: what picks the kept model (cer ranks models that still insert words)
    save_every: int = 500
    keep_checkpoints: int = 2
    batch_size_eval: int = 8


# One line per setting for `wav2vec2 finetune --help` (the command's options are these fields).
HELP = {
    "init": "pretrained checkpoint (folder or Hub id), or tiny/small/base/large or a config.json for random weights",
    "train": "manifest (TSV or JSON lines) or LibriSpeech folder of labelled audio",
    "out": "the run folder: log.jsonl, checkpoints/, best/, final/",
    "dev": "labelled audio scored every --eval-every updates (picks the kept model)",
    "max_steps": "optimiser updates in the whole run",
    "seed": "seeds every random choice (masks, dropout, batch order)",
    "resume": "continue the run in --out from its latest checkpoint",
    "device": "auto (a GPU when present), cpu or cuda",
    "precision": "auto (bf16 on GPUs that support it and on CPUs with AMX or AVX-512 BF16, else fp32), fp32, bf16 or fp16",
    "lr": "peak learning rate of AdamW (tri-stage schedule: 10%% warm-up, 40%% hold, 50%% decay)",
    "head_lr": "peak learning rate of the CTC head (default: --lr); a fresh head on a pretrained body can learn faster",
    "weight_decay": "AdamW weight decay",
    "freeze_steps": "first updates in which only the CTC head learns (the whole encoder frozen)",
    "reinit_top": "top Transformer layers set back to a fresh initialisation: a pretrained model's last layers "
                  "serve its contrastive task, not the letters (RESULTS.md of recipes/synthetic)",
    "train_feature_encoder": "train the convolutions too (for random initialisation)",
    "max_batch_seconds": "seconds of audio per batch and process, padding included",
    "max_seconds": "longer utterances are skipped (and counted)",
    "accumulate": "batches whose gradients add up to one update",
    "clip_norm": "gradient norm clipped to this value",
    "mask_time_prob": "share of time steps that start a span replaced by the mask embedding",
    "mask_time_length": "time steps per masked span",
    "mask_feature_prob": "share of channels that start a zeroed channel span",
    "mask_feature_length": "channels per zeroed span",
    "speed_perturb": "x: each training utterance played at a speed drawn from [1-x, 1+x], tempo and pitch "
                     "together (0: off; 0.1 spans Kaldi's 0.9-1.1; a slowed batch exceeds --max-batch-seconds)",
    "layerdrop": "probability of skipping each Transformer layer in training (default: the init checkpoint's)",
    "log_every": "updates between two lines of log.jsonl",
    "eval_every": "updates between two scorings of --dev",
    "best_metric": "wer or cer: what picks the kept model (cer ranks models that still insert words)",
    "save_every": "updates between two checkpoints",
    "keep_checkpoints": "how many of the latest checkpoints to keep",
    "batch_size_eval": "chunks per forward pass when scoring --dev",
}


class CTCTraining(nn.Module):
    """The model and its loss in one forward, so that DistributedDataParallel sees the whole step."""

    def __init__(self, model: Wav2Vec2ForCTC, train_feature_encoder: bool):
        super().__init__()
        self.model = model
        self.feature_grad_mult = 1.0 if train_feature_encoder else 0.0  # 0: no graph through the encoder

    def forward(self, waveform: torch.Tensor, attention_mask: torch.Tensor | None, lengths: torch.Tensor,
                targets: torch.Tensor, target_lengths: torch.Tensor, time_mask: torch.Tensor,
                channel_mask: torch.Tensor, freeze_transformer: bool) -> torch.Tensor:
        """The per-utterance CTC losses (0 for impossible alignments)."""
        model = self.model
        with torch.no_grad() if freeze_transformer else contextlib.nullcontext():
            context = model.wav2vec2(waveform, attention_mask, time_mask, self.feature_grad_mult,
                                       channel_mask).context
        logits = model.lm_head(model.dropout(context))
        frames = frame_lengths(lengths, model.config)
        log_probs = logits.float().log_softmax(-1).transpose(0, 1)
        return F.ctc_loss(log_probs, targets, frames, target_lengths, blank=model.vocab.blank,
                          reduction="none", zero_infinity=True)


def alignable(frames: int, labels: list[int]) -> bool:
    """CTC needs a frame per label plus a blank between each pair of equal neighbours."""
    repeats = sum(a == b for a, b in zip(labels, labels[1:]))
    return frames >= len(labels) + repeats


def build_model(settings: FinetuneSettings, train: list[Entry]) -> Wav2Vec2ForCTC:
    """A CTC model with the init checkpoint's encoder (or random weights for a preset) and a
    fresh head over the init's vocabulary, or one built from the training transcripts. A CTC
    checkpoint with its vocabulary keeps its head too: fine-tuning it again is a warm start.
    The top `reinit_top` Transformer layers keep the fresh initialisation instead of the init's."""
    if settings.init in PRESETS or settings.init.endswith(".json"):
        config, state, folder = preset_config(settings.init), None, None
    else:
        folder = resolve(settings.init)
        config, state = read_config(folder), from_hf_keys(read_state_dict(folder))
    vocab = None
    if folder is not None and (folder / "vocab.json").is_file():
        vocab = Vocabulary.from_folder(folder)
    if vocab is None:
        vocab = build_vocabulary(e.text for e in train)
    preprocessing = (Preprocessing.from_folder(folder) if folder is not None else None) or Preprocessing(
        do_normalize=True, return_attention_mask=config.feat_extract_norm == "layer")
    config.vocab_size = len(vocab)
    config.pad_token_id = vocab.blank
    if settings.layerdrop is not None:
        config.layerdrop = settings.layerdrop
    layers = config.num_hidden_layers
    if not 0 <= settings.reinit_top <= layers:
        raise Wav2Vec2Error(f"reinit_top must be between 0 and the model's {layers} layers, not {settings.reinit_top}")
    model = Wav2Vec2ForCTC(config, vocab, preprocessing)  # freshly initialised, seeded by the caller
    if state is not None:
        fresh = tuple(f"wav2vec2.encoder.layers.{i}." for i in range(layers - settings.reinit_top, layers))
        kept = {k: v for k, v in state.items() if k.startswith("wav2vec2.") and not k.startswith(fresh)}
        head = {k: state[k] for k in ("lm_head.weight", "lm_head.bias") if k in state}
        if vocab is not None and len(head) == 2 and head["lm_head.weight"].shape[0] == len(vocab):
            kept.update(head)  # a CTC checkpoint with its own vocabulary: training continues from it
        optional = {"wav2vec2.masked_spec_embed", "lm_head.weight", "lm_head.bias"}
        optional |= {k for k in model.state_dict() if k.startswith(fresh)}
        load_state(model, kept, settings.init, optional=optional)
    return model


def labelled(entries: list[Entry], vocab: Vocabulary) -> tuple[list[int], list[list[int]], int]:
    """Indices of the entries whose normalised transcripts the vocabulary can spell, their label
    ids, and how many were skipped: transcripts with other characters are skipped, counted, and
    their characters reported."""
    kept, labels, unknown = [], [], set()
    for index, entry in enumerate(entries):
        if entry.text is None:
            raise DataError(f"{entry.audio}: no transcript (fine-tuning needs a `text` for every utterance)")
        text = normalize_text(entry.text, vocab)
        missing = vocab.unknown_characters(text)
        if missing or not text:
            unknown |= missing
            continue
        kept.append(index)
        labels.append(vocab.encode(text))
    skipped = len(entries) - len(kept)
    if unknown:
        warnings.warn(f"skipped {skipped} transcripts with characters outside the vocabulary: "
                      f"{' '.join(repr(c) for c in sorted(unknown))}", stacklevel=2)
    if not kept:
        raise DataError("no training transcript can be written with the vocabulary")
    return kept, labels, skipped


def load_labelled_batch(entries: list[Entry], indices: list[int], preprocessing: Preprocessing,
                        speeds: list[float] | None = None) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Padded audio (batch, samples), the real lengths, and the indices that could be read;
    `speeds`, one per index, change each utterance's speed (data.change_speed)."""
    arrays, kept = [], []
    for position, index in enumerate(indices):
        try:
            audio = load_audio(entries[index].audio)
        except AudioError as error:
            warnings.warn(f"skipping {error}", stacklevel=2)
            continue
        if speeds is not None and speeds[position] != 1.0:
            audio = change_speed(audio, speeds[position])
        arrays.append(normalize(audio) if preprocessing.do_normalize else audio)
        kept.append(index)
    if not arrays:
        raise Wav2Vec2Error("no file of a batch could be read")
    lengths = torch.tensor([len(a) for a in arrays])
    waveform = torch.full((len(arrays), int(lengths.max())), preprocessing.padding_value)
    for row, array in enumerate(arrays):
        waveform[row, :len(array)] = torch.from_numpy(array)
    return waveform, lengths, kept


def finetune(settings: FinetuneSettings) -> Path:
    """Run (or resume) fine-tuning; returns the folder of the final (best) model."""
    return run_training(_finetune, settings)


def _finetune(settings: FinetuneSettings, runtime: Runtime) -> Path:
    from ..evaluate import evaluate

    if settings.best_metric not in ("wer", "cer"):
        raise Wav2Vec2Error(f"best_metric must be wer or cer, not {settings.best_metric!r}")
    if not 0 <= settings.speed_perturb < 1:
        raise Wav2Vec2Error(f"speed_perturb must be at least 0 and below 1, not {settings.speed_perturb}")
    precision = training_precision(runtime.device, settings.precision)
    out = Path(settings.out)
    checkpoints = out / "checkpoints"
    state = resume_point(out, settings.resume)
    train = load_data(settings.train)
    dev = load_data(settings.dev) if settings.dev else None
    torch.manual_seed(settings.seed)
    model = build_model(settings, train)
    vocab, config = model.vocab, model.config
    entries, lengths, skipped = measure(train, config.receptive_field)
    kept, labels, skipped["unknown characters"] = labelled(entries, vocab)
    max_samples = int(settings.max_seconds * SAMPLE_RATE)
    short_enough = [(i, label) for i, label in zip(kept, labels) if lengths[i] <= max_samples]
    skipped["too long"] = len(kept) - len(short_enough)
    entries = [entries[i] for i, _ in short_enough]
    lengths = [lengths[i] for i, _ in short_enough]
    labels = [label for _, label in short_enough]
    batches = make_batches(lengths, int(settings.max_batch_seconds * SAMPLE_RATE), max_samples)
    order = BatchOrder(batches, runtime.world, settings.seed)

    model.to(runtime.device)
    for parameter in model.wav2vec2.feature_encoder.parameters():
        parameter.requires_grad = settings.train_feature_encoder
    head = list(model.lm_head.parameters())
    body = [p for name, p in model.named_parameters() if not name.startswith("lm_head.")]
    head_lr = settings.lr if settings.head_lr is None else settings.head_lr
    # one part when the rates agree: the optimizer's groups (and so its checkpoints) stay as they were
    parts = [(body + head, settings.lr)] if head_lr == settings.lr else [(body, settings.lr), (head, head_lr)]
    optimizer = make_optimizer(parts, settings.weight_decay)
    peaks = peak_lrs(optimizer)
    start, best = 0, {"wer": math.inf, "cer": math.inf, "step": 0}
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start, best = state["step"], state["best"]
    training = CTCTraining(model, settings.train_feature_encoder)
    trained = DistributedDataParallel(training, find_unused_parameters=True) if runtime.world > 1 else training

    log = RunLog(out, runtime.main, resume_from=start if settings.resume else None)
    if runtime.main and not settings.resume:
        log.write({"event": "start", "utterances": len(entries), "batches": len(batches), "skipped": skipped,
                   "vocabulary": vocab.tokens, "processes": runtime.world, "precision": precision,
                   "settings": asdict(settings)})
    progress = Progress(runtime.main, start, settings.max_steps, "fine-tuning")
    interval: dict[str, float] = {}
    for step in range(start, settings.max_steps):
        torch.manual_seed(seed_for(settings.seed, step, runtime.rank))  # dropout, LayerDrop: resumable
        model.train()
        factor = tri_stage(step, settings.max_steps)
        set_lr(optimizer, peaks, factor)
        lr = settings.lr * factor
        frozen = step < settings.freeze_steps
        for micro in range(settings.accumulate):
            index = step * settings.accumulate + micro
            batch = order.batch(index, runtime.rank)
            speeds = None
            if settings.speed_perturb > 0:
                speeds = [1 + settings.speed_perturb * rng_for(settings.seed, index, utterance, 3).uniform(-1, 1)
                          for utterance in batch]
            waveform, sample_lengths, kept = load_labelled_batch(entries, batch, model.preprocessing, speeds)
            frames = frame_lengths(sample_lengths, config)
            usable = [alignable(int(f), labels[i]) for f, i in zip(frames, kept)]
            time_mask, channel_mask = spec_augment(kept, frames.tolist(), config, settings, index)
            targets = [torch.tensor(labels[i]) for i in kept]
            attention_mask = None
            if model.preprocessing.return_attention_mask:
                attention_mask = (torch.arange(waveform.shape[1])[None] < sample_lengths[:, None]).long()
            device = runtime.device
            last = micro == settings.accumulate - 1
            sync = trained.no_sync() if runtime.world > 1 and not last else contextlib.nullcontext()
            with sync:
                with autocast(device, precision):
                    if attention_mask is not None:
                        attention_mask = attention_mask.to(device)
                    target_lengths = torch.tensor([len(t) for t in targets])
                    losses = trained(waveform.to(device), attention_mask, sample_lengths.to(device),
                                     torch.cat(targets).to(device), target_lengths.to(device),
                                     time_mask.to(device), channel_mask.to(device), frozen)
                weights = torch.tensor(usable, dtype=losses.dtype, device=device)
                loss = (losses * weights).sum() / max(1, sum(usable))
                (loss / settings.accumulate).backward()
            interval["loss"] = interval.get("loss", 0.0) + loss.item() / settings.accumulate
            interval["unalignable"] = interval.get("unalignable", 0) + len(usable) - sum(usable)
        grad_norm = update(model, optimizer, settings.clip_norm, step)
        progress.update({"loss": loss.item()})
        interval["steps"] = interval.get("steps", 0) + 1
        done = step + 1
        if done % settings.log_every == 0 or done == settings.max_steps:
            steps = interval.pop("steps")
            unalignable = interval.pop("unalignable")
            record = average_over_processes({k: v / steps for k, v in interval.items()}, runtime.device)
            log.write({"step": done, **record, "ctc_loss": record["loss"], "lr": lr, "grad_norm": grad_norm,
                       "unalignable": unalignable, "transformer_frozen": frozen})
            interval = {}
        if dev is not None and (done % settings.eval_every == 0 or done == settings.max_steps):
            if runtime.main:
                result = evaluate(model.eval(), dev, batch_size=settings.batch_size_eval)
                log.write({"step": done, "wer": result.wer, "cer": result.cer})
                if getattr(result, settings.best_metric) < best[settings.best_metric]:
                    best = {"wer": result.wer, "cer": result.cer, "step": done}
                    save_model(model, out / "best")
            if runtime.world > 1:
                torch.distributed.barrier()
        if done % settings.save_every == 0 or done == settings.max_steps:
            snapshot = {"step": done, "model": model.state_dict(), "optimizer": optimizer.state_dict(), "best": best}
            checkpoint_on_main(runtime, checkpoints, done, snapshot, settings.keep_checkpoints)
    progress.close()
    final = out / "final"
    if runtime.main:
        if (out / "best").is_dir():
            shutil.rmtree(final, ignore_errors=True)
            shutil.copytree(out / "best", final)
        else:
            save_model(model, final)
        log.write({"event": "end", "final": str(final), "best": best})
    if runtime.world > 1:
        torch.distributed.barrier()
    return final


def spec_augment(utterances: list[int], frames: list[int], config: Wav2Vec2Config, settings: FinetuneSettings,
                 index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Time spans replaced by the mask embedding and channel spans zeroed, per utterance."""
    longest = max(frames)
    time_rows, channel_rows = [], []
    channels = config.hidden_size
    channel_length = min(settings.mask_feature_length, max(1, channels // 4))
    for utterance, count in zip(utterances, frames):
        time_rows.append(span_mask([count], longest, settings.mask_time_prob, settings.mask_time_length, 2,
                                   rng_for(settings.seed, index, utterance, 1))
                         if settings.mask_time_prob > 0 else torch.zeros(1, longest, dtype=torch.bool))
        channel_rows.append(span_mask([channels], channels, settings.mask_feature_prob, channel_length, 0,
                                      rng_for(settings.seed, index, utterance, 2))
                            if settings.mask_feature_prob > 0 else torch.zeros(1, channels, dtype=torch.bool))
    return torch.cat(time_rows), torch.cat(channel_rows)
