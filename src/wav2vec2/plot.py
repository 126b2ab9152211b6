"""Loss curves of a training run: `wav2vec2 plot RUN_DIR` draws log.jsonl to a PNG."""

from __future__ import annotations

import json
from pathlib import Path

from .errors import Wav2Vec2Error

# Panels in the order they are drawn, three to a row; a run shows those its log has. Pretraining's
# code usage comes right below its loss and accuracy: a collapse shows beside the gain it buys.
PANELS = [
    ("loss", "loss"), ("contrastive_loss", "contrastive loss"), ("accuracy", "contrastive accuracy"),
    ("perplexity", "code perplexity"), ("group_perplexity", "code perplexity per group"),
    ("codes_used", "share of codes used"), ("diversity_loss", "diversity loss"),
    ("feature_penalty", "feature penalty"), ("ctc_loss", "CTC loss"), ("wer", "dev WER"), ("cer", "dev CER"),
    ("temperature", "Gumbel temperature"), ("lr", "learning rate"),
]


def read_log(run: Path) -> list[dict]:
    path = run / "log.jsonl"
    if not path.is_file():
        raise Wav2Vec2Error(f"{run}: no log.jsonl (is it a training run folder?)")
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except ValueError:
                raise Wav2Vec2Error(f"{path}:{number}: not valid JSON") from None
    return [r for r in records if "step" in r]


def plot_run(run: str | Path, output: str | Path | None = None) -> Path:
    """Draw every logged quantity against the step; returns the PNG's path (default RUN/curves.png)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = Path(run)
    records = read_log(run)
    panels = [(key, title) for key, title in PANELS if any(key in r for r in records)]
    if not panels:
        raise Wav2Vec2Error(f"{run}/log.jsonl has no logged steps yet")
    columns = min(3, len(panels))
    rows = -(-len(panels) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.5 * columns, 3 * rows), squeeze=False)
    for axis, (key, title) in zip(axes.flat, panels):
        points = [(r["step"], r[key]) for r in records if r.get(key) is not None]
        marker = "." if len(points) < 30 else None
        if points and isinstance(points[0][1], list):  # one value per codebook group: one line each
            for group in range(len(points[0][1])):
                axis.plot([p[0] for p in points], [p[1][group] for p in points], marker=marker,
                          label=f"group {group + 1}")
            axis.legend()
        else:
            axis.plot([p[0] for p in points], [p[1] for p in points], marker=marker)
        axis.set_title(title)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
    for axis in list(axes.flat)[len(panels):]:
        axis.set_visible(False)
    figure.suptitle(str(run))
    figure.tight_layout()
    output = Path(output) if output else run / "curves.png"
    figure.savefig(output, dpi=100)
    plt.close(figure)
    return output
