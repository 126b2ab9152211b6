"""The `wav2vec2` command: argument parsing and printing only; the library does the work."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import Wav2Vec2Error

DEFAULT_MODEL = "facebook/wav2vec2-base-960h"


def fail(message: str, code: int = 1) -> int:
    print(f"wav2vec2: error: {message}", file=sys.stderr)
    return code


def transcribe_command(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from .checkpoints import load_model
    from .transcribe import transcribe_many
    from .writers import render

    if args.device == "cuda" and not torch.cuda.is_available():
        return fail("--device cuda: no CUDA device is available (use --device cpu)")
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model, device=args.device)
    if args.output_dir:
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    failures = 0
    with tqdm(total=None, unit="s", unit_scale=True, desc="transcribing", disable=None,
              leave=False, file=sys.stderr) as bar:
        results = transcribe_many(model, args.files, batch_size=args.batch_size,
                                  chunk_length=args.chunk_length, stride=args.stride,
                                  on_progress=lambda seconds: bar.update(round(seconds, 2)))
        for index, result in results:
            if isinstance(result, Exception):
                failures += 1
                bar.clear()
                print(f"wav2vec2: error: {result}", file=sys.stderr)
                continue
            text = render(result, args.format)
            if args.output_dir:
                target = Path(args.output_dir) / f"{Path(args.files[index]).stem}.{args.format}"
                target.write_text(text, encoding="utf-8")
            elif len(args.files) > 1 and args.format == "txt":
                print(f"{args.files[index]}: {text}", end="", flush=True)
            else:
                print(text, end="", flush=True)
    if failures:
        print(f"wav2vec2: {failures} of {len(args.files)} files failed", file=sys.stderr)
    return 1 if failures else 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from .writers import FORMATS

    parser = argparse.ArgumentParser(prog="wav2vec2", description="wav2vec 2.0 speech recognition")
    parser.add_argument("--version", action="version", version=f"wav2vec2 {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("transcribe", help="transcribe audio files (WAV, FLAC, OGG, MP3; any rate)")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"Hugging Face Hub id or local checkpoint folder (default: {DEFAULT_MODEL})")
    p.add_argument("--batch-size", type=positive_int, default=1, help="chunks per forward pass")
    p.add_argument("--chunk-length", type=positive_float, default=20.0,
                   help="seconds of audio per forward pass (default: 20)")
    p.add_argument("--stride", type=positive_float, default=2.0,
                   help="seconds of overlap on each side of a chunk (default: 2)")
    p.add_argument("--format", choices=FORMATS, default="txt")
    p.add_argument("--output-dir", metavar="D", help="write FILE_STEM.FORMAT here instead of printing")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--threads", type=positive_int, help="CPU threads for PyTorch")
    p.set_defaults(run=transcribe_command)
    return parser


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {text}")
    return value


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except Wav2Vec2Error as error:
        return fail(str(error))
    except ValueError as error:  # settings the library rejects (chunk and stride lengths, say)
        return fail(str(error), 2)
    except OSError as error:
        return fail(f"{getattr(error, 'filename', '') or ''}: {error.strerror or error}".lstrip(": "))
    except KeyboardInterrupt:
        return fail("interrupted", 130)


if __name__ == "__main__":
    sys.exit(main())
