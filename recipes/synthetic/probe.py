"""What are a pretrained encoder's frozen features worth? A CTC probe (issue 17).

The same small CTC head learns to spell the labelled set from the frozen representations of two
encoders of one shape: the pretrained one, and a random initialisation of its config. The
encoders run once per utterance and their per-layer outputs are kept in memory, so the head can
train for many epochs at little cost (fine-tuning with a frozen encoder runs the encoder again at
every update).

Two heads, each on both encoders:
- `last`: a linear layer on the encoder's output, the head fine-tuning puts there;
- `layers`: a linear layer on a learnt softmax-weighted sum of every layer's output (the input of
  the Transformer and each layer's output, each normalised without gain), as SUPERB probes; the
  learnt weights say where the information sits.

Each head keeps its state of lowest dev CER (greedy decoding) and is scored on `test` and
`test_voices`; the table goes to OUT/probe.md and the numbers to OUT/probe.json.

    python recipes/synthetic/probe.py --pretrained runs/synthetic/pretrain/models/step-* --data data/synthetic --out runs/synthetic/probe
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import jiwer
import torch
import torch.nn as nn
import torch.nn.functional as F

from wav2vec2.audio import load_audio, normalize
from wav2vec2.decoding import best_path, greedy_decode
from wav2vec2.errors import Wav2Vec2Error
from wav2vec2.manifest import read_manifest
from wav2vec2.model import Wav2Vec2ForCTC
from wav2vec2.train.finetune import FinetuneSettings, build_model, labelled
from wav2vec2.vocab import Vocabulary, normalize_text

SPLITS = ("train", "dev", "test", "test_voices")


@dataclass
class Features:
    """One split's frozen per-layer outputs, its label ids and its reference texts."""

    layers: list[torch.Tensor]  # per utterance: (1 + Transformer layers, frames, hidden) in float16
    labels: list[list[int]]
    references: list[str]


@torch.no_grad()
def layer_outputs(model: Wav2Vec2ForCTC, waveform: torch.Tensor) -> torch.Tensor:
    """(samples,) -> (1 + Transformer layers, frames, hidden): the Transformer's input (after the
    positional convolution is added, as the first layer reads it) and every layer's output."""
    outputs = []
    hooks = [model.wav2vec2.encoder.layers[0].register_forward_pre_hook(lambda _, args: outputs.append(args[0]))]
    hooks += [layer.register_forward_hook(lambda *hook: outputs.append(hook[2]))
              for layer in model.wav2vec2.encoder.layers]
    try:
        model.wav2vec2(waveform[None])
    finally:
        for hook in hooks:
            hook.remove()
    return torch.cat(outputs).half()


def extract(model: Wav2Vec2ForCTC, manifest: Path, vocab: Vocabulary, normalise_input: bool) -> Features:
    entries = read_manifest(manifest)
    kept, labels, _ = labelled(entries, vocab)
    layers = []
    for index in kept:
        audio = load_audio(entries[index].audio)
        if normalise_input:
            audio = normalize(audio)
        layers.append(layer_outputs(model, torch.from_numpy(audio)))
    return Features(layers, labels, [normalize_text(entries[i].text, vocab) for i in kept])


class Probe(nn.Module):
    """A linear CTC head on one layer (`last`) or on a learnt mixture of all of them (`layers`)."""

    def __init__(self, layers: int, hidden: int, vocab_size: int, mix: bool):
        super().__init__()
        self.mix = mix
        self.layer_logits = nn.Parameter(torch.zeros(layers), requires_grad=mix)
        self.head = nn.Linear(hidden, vocab_size)

    def layer_weights(self) -> torch.Tensor:
        if self.mix:
            return self.layer_logits.softmax(0)
        return F.one_hot(torch.tensor(len(self.layer_logits) - 1), len(self.layer_logits)).float()

    def forward(self, layers: torch.Tensor) -> torch.Tensor:
        """(batch, layers, frames, hidden) -> logits (batch, frames, vocab)."""
        normalised = F.layer_norm(layers.float(), layers.shape[-1:])
        return self.head(torch.einsum("l,bltd->btd", self.layer_weights(), normalised))


def padded(layers: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([x.shape[1] for x in layers])
    batch = torch.zeros(len(layers), layers[0].shape[0], int(lengths.max()), layers[0].shape[2], dtype=layers[0].dtype)
    for row, x in enumerate(layers):
        batch[row, :, :x.shape[1]] = x
    return batch, lengths


@torch.no_grad()
def score(probe: Probe, features: Features, vocab: Vocabulary) -> dict[str, float]:
    hypotheses = []
    for layers in features.layers:
        ids, probs = best_path(probe(layers[None])[0])
        hypotheses.append(normalize_text(greedy_decode(ids, probs, vocab).text, vocab))
    return {"cer": jiwer.cer(features.references, hypotheses), "wer": jiwer.wer(features.references, hypotheses)}


def train_probe(features: dict[str, Features], vocab: Vocabulary, mix: bool, epochs: int, lr: float,
                batch_size: int, seed: int) -> dict:
    torch.manual_seed(seed)
    train = features["train"]
    layers, _, hidden = train.layers[0].shape
    probe = Probe(layers, hidden, len(vocab), mix)
    optimizer = torch.optim.Adam([p for p in probe.parameters() if p.requires_grad], lr=lr)
    order = list(range(len(train.layers)))
    shuffle = random.Random(seed)
    best, history = None, []
    for epoch in range(1, epochs + 1):
        shuffle.shuffle(order)
        for start in range(0, len(order), batch_size):
            chosen = order[start:start + batch_size]
            batch, lengths = padded([train.layers[i] for i in chosen])
            targets = [torch.tensor(train.labels[i]) for i in chosen]
            log_probs = probe(batch).log_softmax(-1).transpose(0, 1)
            loss = F.ctc_loss(log_probs, torch.cat(targets), lengths, torch.tensor([len(t) for t in targets]),
                              blank=vocab.blank, zero_infinity=True)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        dev = score(probe, features["dev"], vocab)
        history.append({"epoch": epoch, "loss": loss.item(), "dev_cer": dev["cer"]})
        if best is None or dev["cer"] < best["dev"]["cer"]:
            best = {"epoch": epoch, "dev": dev, "state": {k: v.clone() for k, v in probe.state_dict().items()}}
    probe.load_state_dict(best.pop("state"))
    return {**best, **{split: score(probe, features[split], vocab) for split in ("test", "test_voices")},
            "layer_weights": [round(w, 3) for w in probe.layer_weights().tolist()], "history": history}


def encoder(init: str, train_manifest: Path, seed: int) -> Wav2Vec2ForCTC:
    """The encoder of `init` (a checkpoint folder or a config file: random weights) with its
    vocabulary built from the training transcripts, as fine-tuning would build it."""
    torch.manual_seed(seed)
    model = build_model(FinetuneSettings(init=init, train=str(train_manifest), out="unused"),
                        read_manifest(train_manifest))
    return model.eval()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pretrained", nargs="+", required=True, metavar="FOLDER",
                        help="pretrained checkpoint folders to probe (of one config: the points of one run)")
    parser.add_argument("--random", help="the config their random twin is built from (default: the first "
                                         "pretrained checkpoint's own config.json)")
    parser.add_argument("--data", type=Path, default=Path("data/synthetic"), help="the corpus folder (make_corpus.py)")
    parser.add_argument("--labels", default="train_1h",
                        help="the labelled split the heads learn from (default: train_1h)")
    parser.add_argument("--out", type=Path, required=True, help="folder for probe.md and probe.json")
    parser.add_argument("--epochs", type=int, default=60, help="passes over the labelled split (default: 60)")
    parser.add_argument("--lr", type=float, default=1e-2, help="Adam's learning rate for the heads (default: 1e-2)")
    parser.add_argument("--batch-size", type=int, default=16, help="utterances per update (default: 16)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the random encoder and the heads (default: 0)")
    args = parser.parse_args()
    manifests = {"train": args.data / f"{args.labels}.tsv", **{s: args.data / f"{s}.tsv" for s in SPLITS[1:]}}
    encoders = {str(folder): folder for folder in args.pretrained}
    encoders["random"] = args.random or str(Path(args.pretrained[0]) / "config.json")
    results, started = {}, time.perf_counter()
    normalise_input = None
    try:
        for name, init in encoders.items():  # the pretrained ones first
            model = encoder(init, manifests["train"], args.seed)
            if normalise_input is None:  # every encoder reads the input as the first pretrained one did
                normalise_input = model.preprocessing.do_normalize
            features = {split: extract(model, path, model.vocab, normalise_input)
                        for split, path in manifests.items()}
            print(f"{name}: features of {sum(len(f.layers) for f in features.values())} utterances "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)
            for head in ("last", "layers"):
                result = train_probe(features, model.vocab, head == "layers", args.epochs, args.lr, args.batch_size,
                                     args.seed)
                results[f"{name} {head}"] = {"encoder": name, "head": head, **result}
                print(f"  {head}: test CER {result['test']['cer']:.3f} ({time.perf_counter() - started:.0f} s)",
                      flush=True)
            del features
    except Wav2Vec2Error as error:
        print(f"probe.py: error: {error}", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "probe.json").write_text(json.dumps({"arguments": {k: str(v) for k, v in vars(args).items()},
                                                     "seconds": round(time.perf_counter() - started),
                                                     "results": results}, indent=1))
    table = ["| encoder | head | best epoch | dev CER | test CER | test_voices CER | test WER | layer weights |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results.values():
        table.append(f"| {r['encoder']} | {r['head']} | {r['epoch']} | {r['dev']['cer']:.1%} | {r['test']['cer']:.1%} | "
                     f"{r['test_voices']['cer']:.1%} | {r['test']['wer']:.1%} | "
                     f"{' '.join(f'{w:.2f}' for w in r['layer_weights'])} |")
    table.append("")
    for name in args.pretrained:
        for head in ("last", "layers"):
            gain = 1 - results[f"{name} {head}"]["test"]["cer"] / results[f"random {head}"]["test"]["cer"]
            table.append(f"- {name}, {head}: {gain:+.1%} relative test CER against the random encoder "
                         f"(the issue's target: at least +25 %)")
    (args.out / "probe.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
