"""The `wav2vec2` command: argument parsing and printing only; the library does the work."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import warnings
from pathlib import Path

from .errors import Wav2Vec2Error

DEFAULT_MODEL = "facebook/wav2vec2-base-960h"
MODEL_HELP = (f"Hugging Face Hub id, local checkpoint folder, or `demo` (the shipped model for synthetic English "
              f"speech, works offline) (default: {DEFAULT_MODEL})")


PRECISION_HELP = ("auto (bf16 on CPUs with AMX; else int8 or bf16 by the CPU's flags and the model's width, "
                  "where they measured faster; else fp32), "
                  "fp32, bf16 or int8 (these two on CPUs only)")


def use_device(args: argparse.Namespace) -> None:
    """--device and --threads of a command that runs the model: --device cuda where PyTorch sees no
    GPU is an error before anything is loaded."""
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise Wav2Vec2Error("--device cuda: no CUDA device is available (use --device cpu)")
    if args.threads:
        torch.set_num_threads(args.threads)


def fail(message: str, code: int = 1) -> int:
    print(f"wav2vec2: error: {message}", file=sys.stderr)
    return code


def one_line_warnings(show):
    """A warnings.showwarning that prints the library's warnings as one line each, like its errors,
    and hands other packages' to `show`."""
    package = str(Path(__file__).parent)

    def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
        if str(filename).startswith(package):
            print(f"wav2vec2: warning: {message}", file=sys.stderr, flush=True)
        else:
            show(message, category, filename, lineno, file, line)

    return show_warning


def beam_decoder(args: argparse.Namespace):
    """--decoder and the beam-search options -> a function of the model's vocabulary giving the
    decoder (None: greedy). The LM and lexicon files are read now, so a bad file fails before the
    model loads."""
    from .beam import BeamDecoder, BeamSettings, read_lexicon
    from .lm import load_lm

    given = [f"--{name}" for name in ("lm", "lexicon", "hotword") if getattr(args, name)]
    if args.decoder == "greedy" and given:
        raise ValueError(f"{', '.join(given)} need --decoder beam")
    if args.decoder != "beam" and not given:
        return lambda vocab: None
    settings = BeamSettings(beam_size=args.beam_size, lm=args.lm, lexicon=args.lexicon, lm_weight=args.lm_weight,
                            word_score=args.word_score, hotwords=tuple(args.hotword or ()))
    settings.validate()
    lm = load_lm(args.lm) if args.lm else None
    lexicon = read_lexicon(args.lexicon) if args.lexicon else None
    return lambda vocab: BeamDecoder(vocab, settings, lm=lm, lexicon=lexicon)


def transcribe_command(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .checkpoints import load_model
    from .transcribe import transcribe_many
    from .writers import render

    use_device(args)
    make_decoder = beam_decoder(args)
    model = load_model(args.model, device=args.device, precision=args.precision)
    decoder = make_decoder(model.vocab)
    if args.output_dir:
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    failures = 0
    with tqdm(total=None, unit="s", unit_scale=True, desc="transcribing", disable=None,
              leave=False, file=sys.stderr) as bar:
        results = transcribe_many(model, args.files, batch_size=args.batch_size,
                                  chunk_length=args.chunk_length, stride=args.stride,
                                  on_progress=lambda seconds: bar.update(round(seconds, 2)), decoder=decoder)
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


def listen_command(args: argparse.Namespace) -> int:
    import signal

    import torch

    from .checkpoints import load_model
    from .microphone import FilePlayer, Microphone, list_input_devices
    from .streaming import StreamingConfig, StreamingRecognizer

    if args.list_devices:
        devices = list_input_devices()
        if not devices:
            return fail("no audio input devices found (is a microphone connected and the sound server running?)")
        for d in devices:
            mark = "*" if d.default else " "
            print(f"{mark} {d.index:3d}  {d.name} ({d.host_api}, {d.channels} in, {d.sample_rate} Hz)")
        return 0
    if args.fast and not args.source_file:
        return fail("--fast only applies to --from FILE", 2)
    settings = dict(pause=args.pause, min_speech=args.min_speech, max_phrase=args.max_phrase,
                    interval=args.interval, context=args.context)
    config = StreamingConfig(**{name: value for name, value in settings.items() if value is not None})
    config.validate()
    make_decoder = beam_decoder(args)
    if args.source_file:
        source = FilePlayer(args.source_file, realtime=not args.fast)
    else:
        source = Microphone(args.device, args.sample_rate)  # fails fast, before the model is loaded
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model, precision=args.precision)
    recognizer = StreamingRecognizer(model, config, source.sample_rate, decoder=make_decoder(model.vocab))
    printer = LivePrinter(args.json, args.output, source.name)

    def interrupt(*_) -> None:  # first Ctrl-C: stop listening and flush the last phrase; second: abort
        source.stop()
        signal.signal(signal.SIGINT, signal.default_int_handler)

    previous = signal.signal(signal.SIGINT, interrupt)
    try:
        with source:
            print(f"Listening to {source.name} ({source.sample_rate} Hz). You can start speaking now; "
                  "Ctrl-C stops.", file=sys.stderr, flush=True)
            for block in source:
                for event in recognizer.feed(block):
                    printer.show(event)
                printer.check(source)
        for event in recognizer.flush():
            printer.show(event)
        printer.check(source)
    finally:
        signal.signal(signal.SIGINT, previous)
        printer.close()
    return 0


class LivePrinter:
    """Events out: on a terminal the partial is one line rewritten in place and each final a
    `You said: ...` line (elsewhere finals only); with --json, one JSON object per event. Finals are
    appended to --output with their times in the stream. Warnings say when audio waits or is lost."""

    def __init__(self, as_json: bool, output: str | None, source_name: str):
        import datetime

        self.json = as_json
        self.tty = sys.stdout.isatty()
        self.partial_shown = False
        self.output = open(output, "a", encoding="utf-8") if output else None
        if self.output:
            started = datetime.datetime.now().isoformat(sep=" ", timespec="seconds")
            self.output.write(f"# wav2vec2 listen, {started}, {source_name}\n")
            self.output.flush()
        self.lag_warned = 0.0  # the lag at the last warning
        self.dropped_warned = 0.0
        self.overflows_warned = 0

    def show(self, event) -> None:
        import json
        import shutil

        if self.json:
            print(json.dumps(event.to_dict(), ensure_ascii=False), flush=True)
        elif event.type == "partial":
            if self.tty and event.text:
                width = max(10, shutil.get_terminal_size().columns - 1)
                text = event.text if len(event.text) <= width else "…" + event.text[-(width - 1):]
                sys.stdout.write(f"\r\x1b[K{text}")
                sys.stdout.flush()
                self.partial_shown = True
        else:
            self.clear()
            if event.text:
                print(f"You said: {event.text}", flush=True)
        if event.type == "final" and event.text and self.output:
            self.output.write(f"[{clock(event.start)} --> {clock(event.end)}] {event.text}\n")
            self.output.flush()

    def check(self, source) -> None:
        """Say so when the model falls behind the audio, and when audio is lost."""
        if source.lag > max(1.0, 2 * self.lag_warned):
            self.warn(f"transcription is {source.lag:.1f} s behind the audio: the model is too slow for real "
                      "time here (try --threads, a smaller model or a longer --interval)")
            self.lag_warned = source.lag
        elif source.lag < 0.5:
            self.lag_warned = 0.0
        if source.dropped > self.dropped_warned:
            self.warn(f"{source.dropped:.1f} s of audio dropped so far: the model could not keep up")
            self.dropped_warned = source.dropped
        if source.overflows > self.overflows_warned:
            self.warn(f"the audio device lost input {source.overflows} times (input overflow)")
            self.overflows_warned = source.overflows

    def warn(self, message: str) -> None:
        self.clear()
        print(f"wav2vec2: warning: {message}", file=sys.stderr, flush=True)

    def clear(self) -> None:
        if self.partial_shown:
            sys.stdout.write("\r\x1b[K")
            sys.stdout.flush()
            self.partial_shown = False

    def close(self) -> None:
        self.clear()
        if self.output:
            self.output.close()


def clock(seconds: float) -> str:
    """HH:MM:SS.mmm"""
    milliseconds = round(seconds * 1000)
    hours, rest = divmod(milliseconds, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    return f"{hours:02d}:{minutes:02d}:{rest // 1000:02d}.{rest % 1000:03d}"


def evaluate_command(args: argparse.Namespace) -> int:
    import json

    from tqdm import tqdm

    from .checkpoints import load_model
    from .evaluate import check_labelled, evaluate, write_report
    from .manifest import load_data

    use_device(args)
    entries = load_data(args.manifest)
    check_labelled(entries)
    make_decoder = beam_decoder(args)
    model = load_model(args.model, device=args.device, precision=args.precision)
    decoder = make_decoder(model.vocab)
    with tqdm(total=len(entries), unit="utt", desc="evaluating", disable=None, leave=False, file=sys.stderr) as bar:
        def progress(utterance) -> None:
            if utterance.error is not None:
                bar.clear()
                print(f"wav2vec2: error: {utterance.error}", file=sys.stderr)
            bar.update(1)

        result = evaluate(model, entries, batch_size=args.batch_size, on_utterance=progress, decoder=decoder)
    if args.output:
        write_report(result, args.output)
    if result.unknown_characters:
        print("wav2vec2: warning: the references contain characters outside the model's vocabulary "
              f"(each is an error): {' '.join(result.unknown_characters)}", file=sys.stderr)
    if args.json:
        print(json.dumps({"model": str(args.model), "manifest": str(args.manifest), "precision": model.precision,
                          **result.summary()},
                         ensure_ascii=False))
    else:
        w, c = result.words, result.characters
        print(f"WER {100 * result.wer:.2f}% ({w.errors} errors in {w.hits + w.substitutions + w.deletions} words: "
              f"{w.substitutions} substitutions, {w.deletions} deletions, {w.insertions} insertions)")
        print(f"CER {100 * result.cer:.2f}% ({c.errors} errors in {c.hits + c.substitutions + c.deletions} "
              f"characters: {c.substitutions} substitutions, {c.deletions} deletions, {c.insertions} insertions)")
        print(f"{len(result.utterances) - len(result.failed)} utterances, {result.audio_seconds:.1f} s of audio "
              f"in {result.processing_seconds:.1f} s (real-time factor {result.rtf:.3f})")
    if result.failed:
        print(f"wav2vec2: {len(result.failed)} of {len(entries)} files failed and are not scored", file=sys.stderr)
    return 1 if result.failed else 0


def export_command(args: argparse.Namespace) -> int:
    from .checkpoints import load_model
    from .export import export_onnx

    path = export_onnx(load_model(args.model), args.out, args.precision)
    print(f"{path}: {path.stat().st_size / 1e6:.1f} MB ({args.precision})")
    return 0


def pretrain_command(args: argparse.Namespace) -> int:
    from .train.pretrain import PretrainSettings, pretrain

    final = pretrain(settings_from(args, PretrainSettings))
    print(f"pretrained model: {final}")
    return 0


def finetune_command(args: argparse.Namespace) -> int:
    from .train.finetune import FinetuneSettings, finetune

    final = finetune(settings_from(args, FinetuneSettings))
    print(f"fine-tuned model: {final}")
    return 0


def plot_command(args: argparse.Namespace) -> int:
    from .plot import plot_run

    print(plot_run(args.run_dir, args.output))
    return 0


def align_command(args: argparse.Namespace) -> int:

    from .align import align, read_transcript, render_alignment
    from .audio import AudioFile
    from .checkpoints import load_model

    use_device(args)
    transcript = read_transcript(args.transcript)
    AudioFile(args.audio)  # a missing or unreadable file fails before the model loads
    result = align(load_model(args.model, device=args.device), args.audio, transcript)
    text = render_alignment(result, args.format)
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        print(text, end="", flush=True)
    flagged = [word.text for word in result.words if word.status == "unalignable"]
    if flagged:
        print(f"wav2vec2: warning: {len(flagged)} of {len(result.words)} words are probably not in the audio "
              f"(status unalignable): {' '.join(flagged[:10])}{' ...' if len(flagged) > 10 else ''}",
              file=sys.stderr)
    return 0


def lm_build_command(args: argparse.Namespace) -> int:
    from .lm import estimate, read_sentences, write_arpa

    vocab = None
    if args.model:
        from .checkpoints import resolve
        from .vocab import Vocabulary

        vocab = Vocabulary.from_folder(resolve(args.model))
    sentences, dropped = read_sentences(args.text, vocab)
    model = estimate(sentences, args.order, min_count=args.prune or (), max_vocab=args.max_vocab)
    write_arpa(model, args.out)
    words = sum(len(sentence.split()) for sentence in sentences)
    sizes = ", ".join(f"{count} {n}-grams" for n, count in enumerate(model.sizes(), 1))
    print(f"{args.out}: {sizes} from {len(sentences)} sentences, {words} words (lines dropped for characters "
          f"outside the vocabulary: {dropped})")
    return 0


def lm_tune_command(args: argparse.Namespace) -> int:

    from .checkpoints import load_model
    from .evaluate import check_labelled, tune
    from .manifest import load_data

    use_device(args)
    entries = load_data(args.manifest)
    check_labelled(entries)
    args.decoder, args.lm_weight, args.word_score = "beam", 0.0, 0.0  # the weights are what is searched
    make_decoder = beam_decoder(args)
    model = load_model(args.model, device=args.device, precision=args.precision)
    failed = []

    def progress(utterance) -> None:
        if utterance.error is not None:
            failed.append(utterance)
            print(f"wav2vec2: error: {utterance.error}", file=sys.stderr)

    def show(lm_weight: float, word_score: float, wer: float) -> None:
        print(f"--lm-weight {lm_weight:<5g} --word-score {word_score:<5g} WER {100 * wer:.2f}%", flush=True)

    result = tune(model, entries, make_decoder(model.vocab), args.lm_weights, args.word_scores,
                  on_utterance=progress, on_pair=show)
    print(f"best: --lm-weight {result.lm_weight:g} --word-score {result.word_score:g}: WER {100 * result.wer:.2f}% "
          f"(greedy {100 * result.greedy_wer:.2f}%; {result.utterances} utterances)")
    if failed:
        print(f"wav2vec2: {len(failed)} of {len(entries)} files failed and are not scored", file=sys.stderr)
    return 1 if failed else 0


def serve_command(args: argparse.Namespace) -> int:

    from .checkpoints import load_model
    from .server import ServerSettings, SpeechServer, bind, run

    use_device(args)
    api_key = args.api_key if args.api_key is not None else os.environ.get("WAV2VEC2_API_KEY") or None
    settings = ServerSettings(model_name=str(args.model), max_streams=args.max_streams, api_key=api_key,
                              max_upload=round(args.max_upload_mb * 2**20), max_message=round(args.max_message_kb * 1024),
                              idle_timeout=args.idle_timeout, max_batch=args.max_batch, parallel=args.parallel)
    settings.validate()
    make_decoder = beam_decoder(args)  # LM and lexicon files are read before the model loads
    sock = bind(args.host, args.port)  # and a taken port fails before the model loads too
    model = load_model(args.model, device=args.device, precision=args.precision)
    server = SpeechServer(model, settings, decoder=make_decoder(model.vocab))
    host, port = sock.getsockname()[:2]
    print(f"Serving {args.model} (precision {getattr(server.model, 'precision', 'fp32')}) on "
          f"http://{f'[{host}]' if ':' in host else host}:{port}/ with at most {args.max_streams} live streams"
          f"{' and an API key' if api_key else ''}; Ctrl-C stops.", file=sys.stderr, flush=True)
    if not api_key and host not in ("127.0.0.1", "::1", "localhost"):
        print(f"wav2vec2: warning: listening on {host} without --api-key: anyone who can reach this machine can use "
              "the server", file=sys.stderr, flush=True)
    run(server, sock)
    return 0


def add_settings(parser: argparse.ArgumentParser, settings_class, required: tuple[str, ...],
                 helps: dict[str, str]) -> None:
    """One --option per field of a settings dataclass, so the command and the Python API match;
    `helps` has each field's help line."""
    for field in dataclasses.fields(settings_class):
        flag = "--" + field.name.replace("_", "-")
        text = helps[field.name]
        if field.type in ("bool", bool):
            parser.add_argument(flag, action="store_true", default=field.default, help=text)
        elif field.type == "bool | None":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=field.default, help=text)
        else:
            kind = {"int": int, "float": float, "int | None": int, "float | None": float}.get(field.type, str)
            plain = field.name in required or field.default is None or "(default:" in text
            shown = "" if plain else f" (default: {field.default})"
            parser.add_argument(flag, type=kind, required=field.name in required,
                                default=None if field.name in required else field.default, help=text + shown)


def settings_from(args: argparse.Namespace, settings_class):
    return settings_class(**{f.name: getattr(args, f.name) for f in dataclasses.fields(settings_class)})


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from .precision import PRECISIONS
    from .writers import FORMATS

    parser = argparse.ArgumentParser(prog="wav2vec2", description="wav2vec 2.0 speech recognition")
    parser.add_argument("--version", action="version", version=f"wav2vec2 {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("transcribe", help="transcribe audio files (WAV, FLAC, OGG, MP3; any rate)")
    p.add_argument("files", nargs="+", metavar="FILE", help="audio files to transcribe")
    p.add_argument("--model", default=DEFAULT_MODEL, help=MODEL_HELP)
    p.add_argument("--batch-size", type=positive_int, default=1, help="chunks per forward pass")
    p.add_argument("--chunk-length", type=positive_float, default=20.0,
                   help="seconds of audio per forward pass (default: 20)")
    p.add_argument("--stride", type=positive_float, default=2.0,
                   help="seconds of overlap on each side of a chunk (default: 2)")
    p.add_argument("--format", choices=FORMATS, default="txt", help="output format (default: txt)")
    p.add_argument("--output-dir", metavar="D", help="write FILE_STEM.FORMAT here instead of printing")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the model runs (default: cpu)")
    p.add_argument("--threads", type=positive_int, help="CPU threads for PyTorch")
    p.add_argument("--precision", choices=PRECISIONS, default="auto", help=PRECISION_HELP + " (default: auto)")
    add_decoder_options(p)
    p.set_defaults(run=transcribe_command)

    from .streaming import StreamingConfig as S

    p = commands.add_parser("listen", help="transcribe the microphone (or a file) live, phrase by phrase")
    p.add_argument("--model", default=DEFAULT_MODEL, help=MODEL_HELP)
    p.add_argument("--device", metavar="N|NAME", help="input device: index or part of its name (default: the system's)")
    p.add_argument("--list-devices", action="store_true", help="list the input devices and exit")
    p.add_argument("--sample-rate", type=positive_int, metavar="HZ",
                   help="record at this rate instead of the device's native one")
    p.add_argument("--from", dest="source_file", metavar="FILE",
                   help="listen to FILE instead of the microphone, at real-time pace")
    p.add_argument("--fast", action="store_true", help="with --from: as fast as possible, not in real time")
    p.add_argument("--json", action="store_true",
                   help="one JSON object per event (type partial or final, text, start, end, words)")
    p.add_argument("--output", metavar="FILE", help="append each final, with its times, to FILE")
    p.add_argument("--pause", type=positive_float, metavar="S",
                   help=f"seconds of silence that end a phrase (default: {S.pause})")
    p.add_argument("--min-speech", type=positive_float, metavar="S",
                   help=f"ignore bursts of speech shorter than this (default: {S.min_speech} s)")
    p.add_argument("--max-phrase", type=positive_float, metavar="S",
                   help=f"commit longer speech in pieces, at word boundaries (default: {S.max_phrase} s)")
    p.add_argument("--interval", type=positive_float, metavar="S",
                   help=f"seconds of speech between model runs and partials (default: {S.interval})")
    p.add_argument("--context", type=positive_float, metavar="S",
                   help=f"seconds of audio the model sees on each side of the frames it keeps (default: {S.context})")
    p.add_argument("--threads", type=positive_int, help="CPU threads for PyTorch")
    p.add_argument("--precision", choices=PRECISIONS, default="auto", help=PRECISION_HELP + " (default: auto)")
    add_decoder_options(p, "the finals (partials stay greedy)")
    p.set_defaults(run=listen_command)

    p = commands.add_parser("evaluate", help="word and character error rates on labelled audio")
    p.add_argument("--manifest", required=True, metavar="TEST",
                   help="TSV or JSON-lines manifest with audio and text, or a LibriSpeech folder")
    p.add_argument("--model", default=DEFAULT_MODEL, help=MODEL_HELP)
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.add_argument("--output", type=report_path, metavar="FILE",
                   help="write per-utterance results to FILE.json or FILE.csv")
    p.add_argument("--batch-size", type=positive_int, default=1, help="chunks per forward pass")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the model runs (default: cpu)")
    p.add_argument("--threads", type=positive_int, help="CPU threads for PyTorch")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help=PRECISION_HELP + " (default: fp32, so that scores do not depend on the machine)")
    add_decoder_options(p)
    p.set_defaults(run=evaluate_command)

    p = commands.add_parser("export", help="write a CTC model as ONNX, for onnxruntime (needs the onnx package)")
    p.add_argument("model", metavar="MODEL", help="Hugging Face Hub id, local checkpoint folder, or `demo`")
    p.add_argument("out", metavar="OUT.onnx", help="the ONNX file to write")
    p.add_argument("--precision", choices=("fp32", "int8"), default="fp32",
                   help="fp32, or int8: onnxruntime's dynamic quantization of the matrix products (default: fp32)")
    p.set_defaults(run=export_command)

    from .train.pretrain import HELP as PRETRAIN_HELP
    from .train.pretrain import PretrainSettings

    p = commands.add_parser("pretrain", help="self-supervised pretraining on unlabelled audio")
    add_settings(p, PretrainSettings, ("data", "out"), PRETRAIN_HELP)
    p.set_defaults(run=pretrain_command)

    from .train.finetune import HELP as FINETUNE_HELP
    from .train.finetune import FinetuneSettings

    p = commands.add_parser("finetune", help="CTC fine-tuning on labelled audio")
    add_settings(p, FinetuneSettings, ("init", "train", "out"), FINETUNE_HELP)
    p.set_defaults(run=finetune_command)

    p = commands.add_parser("plot", help="draw the curves of a training run to a PNG")
    p.add_argument("run_dir", metavar="RUN_DIR", help="the --out folder of a pretrain or finetune run")
    p.add_argument("--output", metavar="PNG", help="default: RUN_DIR/curves.png")
    p.set_defaults(run=plot_command)

    p = commands.add_parser("lm", help="word n-gram language models for beam-search decoding")
    lm_commands = p.add_subparsers(dest="lm_command", required=True)
    q = lm_commands.add_parser("build", help="estimate a modified Kneser-Ney n-gram model from text, as ARPA")
    q.add_argument("--text", nargs="+", required=True, metavar="FILE", help="UTF-8 text, one sentence per line")
    q.add_argument("--order", type=positive_int, default=4, help="n-gram order (default: 4)")
    q.add_argument("--out", required=True, metavar="ARPA", help="the ARPA file to write (gzip if it ends in .gz)")
    q.add_argument("--model", help="spell the text as this checkpoint's vocabulary does (Hub id, folder or `demo`; "
                                   "default: upper-case letters and apostrophes, as facebook/wav2vec2-base-960h)")
    q.add_argument("--prune", type=positive_int, nargs="+", metavar="MIN_COUNT",
                   help="keep only n-grams seen at least MIN_COUNT times, one value per order from bigrams up, "
                        "the last repeating: `--prune 1 2` keeps all bigrams and the higher n-grams seen twice "
                        "(default: keep all)")
    q.add_argument("--max-vocab", type=positive_int, metavar="N",
                   help="keep the N most frequent words, the others becoming <unk> (default: all)")
    q.set_defaults(run=lm_build_command)
    q = lm_commands.add_parser("tune", help="search --lm-weight and --word-score for the lowest WER on a dev set")
    q.add_argument("--model", default=DEFAULT_MODEL, help=MODEL_HELP)
    q.add_argument("--lm", required=True, metavar="FILE", help="word n-gram model: ARPA (plain or .gz) or KenLM binary")
    q.add_argument("--manifest", required=True, metavar="DEV",
                   help="TSV or JSON-lines manifest with audio and text, or a LibriSpeech folder")
    q.add_argument("--lexicon", metavar="FILE", help=LEXICON_HELP)
    q.add_argument("--hotword", action="append", type=hotword, metavar="WORD[:BOOST]", help=HOTWORD_HELP)
    q.add_argument("--beam-size", type=positive_int, default=100, help="texts kept per frame (default: 100)")
    q.add_argument("--lm-weights", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0],
                   metavar="W", help="LM weights to try (default: 0 0.25 0.5 0.75 1 1.5 2)")
    q.add_argument("--word-scores", type=float, nargs="+", default=[-1.0, 0.0, 1.0, 2.0, 3.0], metavar="S",
                   help="word scores to try with each LM weight (default: -1 0 1 2 3)")
    q.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the model runs (default: cpu)")
    q.add_argument("--threads", type=positive_int, help="CPU threads for PyTorch")
    q.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help=PRECISION_HELP + " (default: fp32, as evaluate)")
    q.set_defaults(run=lm_tune_command)

    from .align import FORMATS as ALIGN_FORMATS

    p = commands.add_parser("align", help="align a known transcript to audio: word and character times")
    p.add_argument("audio", metavar="AUDIO", help="the audio file (WAV, FLAC, OGG, MP3; any rate)")
    p.add_argument("transcript", metavar="TRANSCRIPT", help="UTF-8 text file: what is said in AUDIO")
    p.add_argument("--format", choices=ALIGN_FORMATS, default="json",
                   help="json (words, characters, scores, statuses), srt, vtt, textgrid (Praat) or ctm "
                        "(default: json)")
    p.add_argument("--model", default=DEFAULT_MODEL, help=MODEL_HELP)
    p.add_argument("--output", metavar="FILE", help="write to FILE instead of printing")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the model runs (default: cpu)")
    p.add_argument("--threads", type=positive_int, help="CPU threads for PyTorch")
    p.set_defaults(run=align_command)

    p = commands.add_parser("serve", help="an HTTP and WebSocket server: files (OpenAI's API), live audio, a browser page")
    p.add_argument("--model", default=DEFAULT_MODEL, help=MODEL_HELP)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: 127.0.0.1, this machine only; 0.0.0.0 for every interface)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on; 0 picks a free one (default: 8000)")
    p.add_argument("--max-streams", type=positive_int, default=8,
                   help="live WebSocket streams at once; the next is refused (default: 8)")
    p.add_argument("--api-key", metavar="KEY",
                   help="require `Authorization: Bearer KEY` on HTTP and WebSocket (default: $WAV2VEC2_API_KEY if set, "
                        "else no key)")
    p.add_argument("--max-upload-mb", type=positive_float, default=512, metavar="MB",
                   help="largest file upload, in MiB (default: 512)")
    p.add_argument("--max-message-kb", type=positive_float, default=1024, metavar="KB",
                   help="largest WebSocket message, in KiB (default: 1024)")
    p.add_argument("--idle-timeout", type=positive_float, default=30.0, metavar="S",
                   help="close a live stream that sends nothing for S seconds (default: 30)")
    p.add_argument("--max-batch", type=positive_int, default=8,
                   help="live model windows of different streams run in one forward pass; 1 turns batching off "
                        "(default: 8)")
    p.add_argument("--parallel", type=positive_int, default=2,
                   help="forward passes run at once, each on --threads / N threads: 2 keeps two cores busier "
                        "with the short windows of many live streams; 1 gives a lone file all threads (default: 2)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the model runs (default: cpu)")
    p.add_argument("--threads", type=positive_int, help="CPU threads for PyTorch")
    p.add_argument("--precision", choices=PRECISIONS, default="auto", help=PRECISION_HELP + " (default: auto)")
    add_decoder_options(p, "the text of files and of live finals (partials stay greedy)")
    p.set_defaults(run=serve_command)
    return parser


LEXICON_HELP = ("the words the output may contain, one per line, each optionally followed by its spelling "
                "in tokens (default: any spelling is a word)")
HOTWORD_HELP = ("a word to favour, with an optional boost in nats (default 10); repeat for more; works for words "
                "the LM lacks")


def add_decoder_options(parser: argparse.ArgumentParser, what: str = "the text") -> None:
    parser.add_argument("--decoder", choices=("greedy", "beam"),
                        help=f"how {what} is decoded: greedy (best token per frame), or beam search with an optional "
                             "LM (default: beam with --lm, --lexicon or --hotword, else greedy)")
    parser.add_argument("--beam-size", type=positive_int, default=100, help="beam search: texts kept per frame "
                                                                            "(default: 100)")
    parser.add_argument("--lm", metavar="FILE", help="word n-gram model for beam search: ARPA (plain or .gz) or "
                                                     "KenLM binary (`wav2vec2 lm build` makes one)")
    parser.add_argument("--lexicon", metavar="FILE", help=LEXICON_HELP)
    parser.add_argument("--lm-weight", type=float, default=0.5,
                        help="multiplies the LM's ln probability of each word (default: 0.5; `wav2vec2 lm tune` "
                             "finds a better one)")
    parser.add_argument("--word-score", type=float, help="added for each word (default: 1 with --lm, else 0)")
    parser.add_argument("--hotword", action="append", type=hotword, metavar="WORD[:BOOST]", help=HOTWORD_HELP)


def hotword(text: str) -> str:
    from .beam import parse_hotword

    try:
        parse_hotword(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def report_path(text: str) -> str:
    if Path(text).suffix.lower() not in (".json", ".csv"):
        raise argparse.ArgumentTypeError(f"must end in .json or .csv, not {text!r}")
    return text


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {text}")
    return value


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings():
        warnings.showwarning = one_line_warnings(warnings.showwarning)
        return run_command(args)


def run_command(args: argparse.Namespace) -> int:
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
    except Exception as error:  # a bug: one line, and the traceback on request
        if os.environ.get("WAV2VEC2_DEBUG"):
            raise
        return fail(f"internal error: {type(error).__name__}: {error} (set WAV2VEC2_DEBUG=1 for the traceback)", 3)


if __name__ == "__main__":
    sys.exit(main())
