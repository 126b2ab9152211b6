"""Grow a trained pre-LN CTC model into a deeper, wider one that computes exactly the same logits.

    .venv/bin/python recipes/synthetic/grow.py --model demo --out runs/demo/grown --depth 2 --ffn 2048

Why: the demo model stopped fitting its training data better at 4.3 M parameters, and training a
larger model from scratch would throw away the hours of CPU time already in it. Two changes keep
the function unchanged, so training continues from where the small model stood:

- **Depth**: after each Transformer layer come `depth - 1` copies of it whose two output
  projections (attention `out_proj`, feed-forward `output_dense`) are zero. In a pre-LN block
  x + f(LN(x)) a zero output makes the block the identity; the copies' other weights give their
  first gradients something learned to work with.
- **Feed-forward width**: new intermediate units with freshly drawn input weights and zero output
  weights add nothing until training moves them.

Post-LN blocks (LN(x + f(x))) are not the identity with a zero output, so they are refused.
"""

from __future__ import annotations

import argparse

import torch

from wav2vec2.checkpoints import load_model, save_model
from wav2vec2.model import Wav2Vec2ForCTC


def grow(model: Wav2Vec2ForCTC, depth: int, intermediate_size: int, seed: int = 0) -> Wav2Vec2ForCTC:
    """A new model with `depth` times the layers and `intermediate_size` feed-forward units."""
    config = model.config
    if not config.do_stable_layer_norm:
        raise ValueError("only pre-LN models (do_stable_layer_norm) can grow without changing their output")
    if depth < 1 or intermediate_size < config.intermediate_size:
        raise ValueError("depth must be at least 1 and the feed-forward width cannot shrink")
    grown_config = config.__class__.from_dict(config.to_dict())
    grown_config.num_hidden_layers = config.num_hidden_layers * depth
    grown_config.intermediate_size = intermediate_size
    grown = Wav2Vec2ForCTC(grown_config, model.vocab, model.preprocessing)
    generator = torch.Generator().manual_seed(seed)

    old_layers = model.wav2vec2.encoder.layers
    new_layers = grown.wav2vec2.encoder.layers
    kept = {name: tensor for name, tensor in model.state_dict().items() if ".encoder.layers." not in name}
    missing, unexpected = grown.load_state_dict(kept, strict=False)
    assert not unexpected and all(".encoder.layers." in name for name in missing)  # the layers come next
    width = config.intermediate_size
    with torch.no_grad():
        for index, old in enumerate(old_layers):
            for copy in range(depth):
                new = new_layers[index * depth + copy]
                targets = new.state_dict()
                for name, tensor in old.state_dict().items():
                    target = targets[name]
                    if name == "feed_forward.intermediate_dense.weight":
                        target[:width] = tensor
                        target[width:] = torch.randn(target[width:].shape, generator=generator) * config.initializer_range
                    elif name == "feed_forward.intermediate_dense.bias":
                        target[:width] = tensor
                        target[width:] = 0.0
                    elif name == "feed_forward.output_dense.weight":
                        target[:, :width] = tensor
                        target[:, width:] = 0.0
                    else:
                        target.copy_(tensor)
                if copy > 0:  # the identity: nothing reaches the residual stream
                    for projection in (new.attention.out_proj, new.feed_forward.output_dense):
                        projection.weight.zero_()
                        projection.bias.zero_()
    return grown


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="the trained pre-LN CTC model (folder, or demo)")
    parser.add_argument("--out", required=True, help="folder for the grown model (Hugging Face layout)")
    parser.add_argument("--depth", type=int, default=2, help="layers per original layer (1 keeps the depth)")
    parser.add_argument("--ffn", type=int, default=None, help="feed-forward width (default: unchanged)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the new feed-forward units' input weights")
    args = parser.parse_args()
    model = load_model(args.model)
    try:
        grown = grow(model, args.depth, args.ffn or model.config.intermediate_size, args.seed)
    except ValueError as error:
        parser.exit(1, f"grow.py: {error}\n")
    save_model(grown, args.out)
    print(f"{args.out}: {grown.config.num_hidden_layers} layers, feed-forward {grown.config.intermediate_size}, "
          f"{sum(p.numel() for p in grown.parameters()) / 1e6:.1f} M parameters")


if __name__ == "__main__":
    main()
