"""The self-supervised pretraining loop: `wav2vec2 pretrain`, or `pretrain(PretrainSettings(...))`.

Each step: a batch of unlabelled audio crops; span masks over the latent frames; K distractors
per masked step; the loss of wav2vec2.pretraining; AdamW with warm-up and linear decay, gradient
clipping and accumulation. The run folder holds log.jsonl, checkpoints/ (resumable, atomic) and,
at the end, final/: a Hugging Face Wav2Vec2ForPreTraining checkpoint, the starting point of
fine-tuning.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from ..audio import SAMPLE_RATE, Preprocessing
from ..checkpoints import save_model
from ..manifest import load_data
from ..model import Wav2Vec2Config, frame_lengths
from ..pretraining import Wav2Vec2ForPreTraining, sample_distractors, span_mask
from ..quantizer import annealed_temperature, gumbel_temperature
from .data import BatchOrder, load_batch, make_batches, measure, rng_for
from .health import HealthWatch, codebook_usage, patience_for
from .loop import (Progress, RunLog, Runtime, autocast, average_over_processes, checkpoint_on_main, make_optimizer,
                   peak_lrs, resume_point, run_training, seed_for, set_lr, training_precision, update,
                   warmup_linear_decay)
from .presets import preset_config


@dataclass
class PretrainSettings:
    data: str  # a folder of audio files, or a manifest (see wav2vec2.manifest)
    out: str  # the run folder
    config: str = "tiny"  # tiny | small | base | large, or a config.json
    max_steps: int = 1000
    seed: int = 0
    resume: bool = False
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    lr: float = 5e-4
    warmup: float = 0.08  # share of max_steps
    weight_decay: float = 0.01
    max_batch_seconds: float = 20.0  # audio per batch and process, after cropping
    max_seconds: float = 15.6  # crop length
    min_seconds: float = 0.3  # shorter clips are skipped (and counted)
    accumulate: int = 1  # batches per update
    clip_norm: float = 10.0
    log_every: int = 10
    save_every: int = 500
    keep_checkpoints: int = 2
    models_every: int = 0  # also a model folder models/step-N every this many updates (0: only final/)
    mask_prob: float = 0.65
    mask_length: int = 10
    min_spans: int = 2
    num_negatives: int = 100
    cross_negatives: int = 0  # distractors from other utterances of the batch
    gumbel_start: float = 2.0
    gumbel_end: float = 0.5
    gumbel_anneal: float = 0.7  # share of max_steps over which the temperature falls from start to end
    gumbel_decay: float | None = None  # instead, the paper's factor per update (0.999995)
    feature_grad_mult: float | None = None  # default: 0.1 for the "group" family, 1.0 for "layer"
    feature_penalty_weight: float | None = None  # default: 10 for the "group" family, 0 for "layer"
    diversity_weight: float | None = None  # default: the model config's diversity_loss_weight (0.1)
    normalize: bool | None = None  # zero-mean unit-variance input; default: only for "layer" models


# One line per setting for `wav2vec2 pretrain --help` (the command's options are these fields).
HELP = {
    "data": "a folder of audio files, or a manifest (TSV or JSON lines)",
    "out": "the run folder: log.jsonl, checkpoints/, final/",
    "config": "model size: tiny, small, base or large, or a config.json",
    "max_steps": "optimiser updates in the whole run",
    "seed": "seeds every random choice (masks, distractors, noise, batch order)",
    "resume": "continue the run in --out from its latest checkpoint",
    "device": "auto (a GPU when present), cpu or cuda",
    "precision": "auto (bf16 on GPUs that support it and on CPUs with AMX or AVX-512 BF16, else fp32), fp32, bf16 or fp16",
    "lr": "peak learning rate of AdamW",
    "warmup": "share of --max-steps spent in the linear warm-up, before the linear decay",
    "weight_decay": "AdamW weight decay",
    "max_batch_seconds": "seconds of audio per batch and process, after cropping",
    "max_seconds": "longer clips are cropped to this many seconds at a random offset",
    "min_seconds": "shorter clips are skipped (and counted in the log)",
    "accumulate": "batches whose gradients add up to one update",
    "clip_norm": "gradient norm clipped to this value",
    "log_every": "updates between two lines of log.jsonl",
    "save_every": "updates between two checkpoints",
    "keep_checkpoints": "how many of the latest checkpoints to keep",
    "models_every": "also write a model folder, models/step-N, every this many updates, to fine-tune from several "
                    "points of the run (0: only final/)",
    "mask_prob": "share of time steps that start a masked span (before overlaps)",
    "mask_length": "time steps per masked span",
    "min_spans": "masked spans per utterance at least",
    "num_negatives": "distractors per masked step, from the same utterance",
    "cross_negatives": "more distractors per masked step, from the other utterances of the batch",
    "gumbel_start": "Gumbel-softmax temperature at the start",
    "gumbel_end": "Gumbel-softmax temperature at the end of the annealing, and after it",
    "gumbel_anneal": "share of --max-steps over which the temperature falls exponentially from --gumbel-start "
                     "to --gumbel-end (then stays there)",
    "gumbel_decay": "instead of --gumbel-anneal, multiply the temperature by this after every update, whatever "
                    "the run's length (the paper: 0.999995)",
    "feature_grad_mult": "scales the gradient that reaches the feature encoder (default: 0.1 for the \"group\" "
                         "family, 1.0 for the \"layer\" family, as fairseq's base and large recipes)",
    "feature_penalty_weight": "weight of the feature-encoder output penalty, the mean squared activation "
                              "(default: 10 for the \"group\" family, 0 for the \"layer\" family)",
    "diversity_weight": "weight of the diversity loss, which keeps the codebooks in use (default: the config's "
                        "diversity_loss_weight, 0.1)",
    "normalize": "feed each crop at zero mean and unit variance (default: only for the \"layer\" family)",
}


def check_settings(settings: PretrainSettings) -> None:
    for name in ("warmup", "gumbel_anneal"):
        if not 0 <= getattr(settings, name) <= 1:
            raise ValueError(f"--{name.replace('_', '-')} is a share of --max-steps, from 0 to 1, "
                             f"not {getattr(settings, name)}")


def temperature_at(step: int, settings: PretrainSettings) -> float:
    """The Gumbel temperature of an update: annealed over a share of the run, so that a run of any
    length explores its codebooks first and chooses near-hard at the end, or the paper's factor
    per update when --gumbel-decay is given."""
    if settings.gumbel_decay is not None:
        return gumbel_temperature(step, settings.gumbel_start, settings.gumbel_end, settings.gumbel_decay)
    return annealed_temperature(step, round(settings.gumbel_anneal * settings.max_steps), settings.gumbel_start,
                                settings.gumbel_end)


def describe_schedules(settings: PretrainSettings, warmup: int) -> dict[str, str]:
    """The learning-rate and temperature schedules in words, for the first line of log.jsonl."""
    start, end = settings.gumbel_start, settings.gumbel_end
    if settings.gumbel_decay is not None:
        temperature = f"max({start:g} * {settings.gumbel_decay:g}**step, {end:g})"
    else:
        anneal = round(settings.gumbel_anneal * settings.max_steps)
        temperature = f"{start:g} * ({end:g}/{start:g})**(step/{anneal}) until update {anneal}, then {end:g}"
    return {"lr": f"linear warm-up to {settings.lr:g} over {warmup} updates, then linear decay to 0 at update "
                  f"{settings.max_steps}", "temperature": temperature}


def random_choices(utterances: list[int], samples: int, config: Wav2Vec2Config, settings: PretrainSettings,
                   index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Masks, distractors and Gumbel noise of one batch, each utterance's from its own generator,
    so they do not depend on which other utterances share the batch (or the process)."""
    frames = int(frame_lengths(torch.tensor(samples), config))
    masks, distractors, noises = [], [], []
    groups, entries = config.num_codevector_groups, config.num_codevectors_per_group
    for row, utterance in enumerate(utterances):
        mask = span_mask([frames], frames, settings.mask_prob, settings.mask_length, settings.min_spans,
                         rng_for(settings.seed, index, utterance, 1))
        chosen = sample_distractors(mask, settings.num_negatives, 0, rng_for(settings.seed, index, utterance, 2))
        generator = torch.Generator().manual_seed(int(rng_for(settings.seed, index, utterance, 3).integers(2**62)))
        masks.append(mask)
        distractors.append(chosen + row * frames)
        noises.append(-torch.empty(1, frames, groups, entries).exponential_(generator=generator).log())
    time_mask, distractors = torch.cat(masks), torch.cat(distractors)
    if settings.cross_negatives:
        batch_rng = rng_for(settings.seed, index, 0, 4)  # purpose 4: the batch's, not one utterance's
        cross = sample_distractors(time_mask, 0, settings.cross_negatives, batch_rng)
        distractors = torch.cat([distractors, cross], dim=-1)
    return time_mask, distractors, torch.cat(noises)


def pretrain(settings: PretrainSettings) -> Path:
    """Run (or resume) pretraining; returns the folder of the final checkpoint."""
    check_settings(settings)
    return run_training(_pretrain, settings)


def _pretrain(settings: PretrainSettings, runtime: Runtime) -> Path:
    out = Path(settings.out)
    checkpoints = out / "checkpoints"
    precision = training_precision(runtime.device, settings.precision)
    state = resume_point(out, settings.resume)
    start = state["step"] if state else 0
    config = Wav2Vec2Config.from_dict(state["config"]) if state else preset_config(settings.config)
    if settings.diversity_weight is not None:  # saved with the model, so a resumed run keeps it
        config.diversity_loss_weight = settings.diversity_weight
    out.mkdir(parents=True, exist_ok=True)
    layer_family = config.feat_extract_norm == "layer"  # fairseq's large recipe against its base one
    normalize = settings.normalize if settings.normalize is not None else layer_family
    feature_grad_mult = settings.feature_grad_mult if settings.feature_grad_mult is not None else (
        1.0 if layer_family else 0.1)
    feature_penalty_weight = settings.feature_penalty_weight if settings.feature_penalty_weight is not None else (
        0.0 if layer_family else 10.0)

    min_samples = max(int(settings.min_seconds * SAMPLE_RATE),
                      config.receptive_field + config.samples_per_frame * settings.mask_length)
    max_samples = int(settings.max_seconds * SAMPLE_RATE)
    entries, lengths, skipped = measure(load_data(settings.data), min_samples)
    batches = make_batches(lengths, int(settings.max_batch_seconds * SAMPLE_RATE), max_samples)
    order = BatchOrder(batches, runtime.world, settings.seed)

    torch.manual_seed(settings.seed)
    model = Wav2Vec2ForPreTraining(config, feature_grad_mult, feature_penalty_weight)
    model.to(runtime.device)
    optimizer = make_optimizer([(list(model.parameters()), settings.lr)], settings.weight_decay)
    peaks = peak_lrs(optimizer)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    trained = (DistributedDataParallel(model, find_unused_parameters=config.layerdrop > 0)
               if runtime.world > 1 else model)
    warmup = round(settings.warmup * settings.max_steps)

    log = RunLog(out, runtime.main, resume_from=start if settings.resume else None)
    if runtime.main and not settings.resume:
        log.write({"event": "start", "utterances": len(entries), "batches": len(batches), "skipped": skipped,
                   "processes": runtime.world, "precision": precision, "settings": asdict(settings), "schedules":
                   describe_schedules(settings, warmup), "parameters": sum(p.numel() for p in model.parameters()),
                   "feature_encoder": {"grad_mult": feature_grad_mult, "penalty_weight": feature_penalty_weight,
                                       "normalized_input": normalize}})
    health = HealthWatch(settings.num_negatives + settings.cross_negatives, config.num_codevector_groups *
                         config.num_codevectors_per_group, patience_for(settings.max_steps, settings.log_every),
                         start=warmup)
    for record in log.records():  # what a resumed run had seen
        health.observe(record)
    progress = Progress(runtime.main, start, settings.max_steps, "pretraining")
    interval: dict[str, float] = {}
    code_probs, code_choices = 0.0, 0.0
    audio_total = state.get("audio_seconds", 0.0) if state else 0.0  # trained on, all processes
    model.preprocessing = Preprocessing(do_normalize=normalize,
                                        return_attention_mask=config.feat_extract_norm == "layer")
    model.train()
    for step in range(start, settings.max_steps):
        torch.manual_seed(seed_for(settings.seed, step, runtime.rank))  # dropout, LayerDrop: resumable
        factor = warmup_linear_decay(step, warmup, settings.max_steps)
        set_lr(optimizer, peaks, factor)
        lr = settings.lr * factor
        temperature = temperature_at(step, settings)
        model.quantizer.temperature = temperature
        audio_seconds = 0.0
        for micro in range(settings.accumulate):
            index = step * settings.accumulate + micro
            waveform, utterances = load_batch(entries, order.batch(index, runtime.rank), max_samples,
                                              settings.seed, index, normalize)
            time_mask, distractors, noise = random_choices(utterances, waveform.shape[1], config, settings, index)
            last = micro == settings.accumulate - 1
            sync = trained.no_sync() if runtime.world > 1 and not last else contextlib.nullcontext()
            with sync:
                with autocast(runtime.device, precision):
                    output = trained(waveform.to(runtime.device), None, time_mask.to(runtime.device),
                                     distractors.to(runtime.device), noise.to(runtime.device))
                (output.loss / settings.accumulate).backward()
            output.loss = output.loss.detach()
            audio_seconds += waveform.numel() / SAMPLE_RATE
            for name in ("loss", "contrastive_loss", "diversity_loss", "feature_penalty", "accuracy", "perplexity"):
                interval[name] = interval.get(name, 0.0) + getattr(output, name).item() / settings.accumulate
            interval["masked_steps"] = interval.get("masked_steps", 0.0) + output.masked_steps
            code_probs, code_choices = code_probs + output.code_probs, code_choices + output.code_choices
        grad_norm = update(model, optimizer, settings.clip_norm, step)
        seconds = progress.update({"loss": output.loss.item(), "acc": output.accuracy.item()})
        interval["steps"] = interval.get("steps", 0) + 1
        interval["seconds"] = interval.get("seconds", 0.0) + seconds
        interval["audio_seconds"] = interval.get("audio_seconds", 0.0) + audio_seconds
        audio_total += audio_seconds * runtime.world
        done = step + 1
        if done % settings.log_every == 0 or done == settings.max_steps:
            steps = interval.pop("steps")
            timing = {"seconds": interval.pop("seconds"), "audio": interval.pop("audio_seconds")}
            record = {k: v / steps for k, v in interval.items()}
            record = {"step": done, **average_over_processes(record, runtime.device),
                      **codebook_usage(code_probs, code_choices), "temperature": temperature, "lr": lr,
                      "grad_norm": grad_norm, "audio_hours": audio_total / 3600,
                      "audio_seconds_per_second": timing["audio"] * runtime.world / timing["seconds"]}
            log.write(record)
            for message in health.observe(record) if runtime.main else []:
                warnings.warn(f"update {done}: {message}")
            interval, code_probs, code_choices = {}, 0.0, 0.0
        if done % settings.save_every == 0 or done == settings.max_steps:
            snapshot = {"step": done, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "config": config.to_dict(), "audio_seconds": audio_total}
            checkpoint_on_main(runtime, checkpoints, done, snapshot, settings.keep_checkpoints)
        if settings.models_every and done % settings.models_every == 0 and runtime.main:
            save_model(model, out / "models" / f"step-{done:07d}")
    progress.close()
    final = out / "final"
    if runtime.main:
        save_model(model, final)
    if runtime.world > 1:
        torch.distributed.barrier()
    return final
