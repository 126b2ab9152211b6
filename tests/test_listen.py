"""`wav2vec2 listen` in a subprocess: fed from a file, from a PulseAudio virtual microphone, and
every way it can fail to find one.

The oracle for the text is the offline transcription of the phrases the command reports (same
model, same chunking); for the PulseAudio path, where the recording starts at an unknown moment,
the phrases' true spans in the played file, shifted by one common offset.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

import wav2vec2
from wav2vec2.cli import main
from wav2vec2.streaming import StreamingConfig

from .test_streaming import RATE, TOLERANCE, need, offline, one_thread, speech  # noqa: F401 (fixtures)

COMMAND = str(Path(sys.executable).parent / "wav2vec2")


@pytest.fixture(scope="module")
def talker(checkpoints, tmp_path_factory) -> Path:
    """The random base checkpoint, nudged to emit word delimiters (see test_streaming.models), saved."""
    model = wav2vec2.load_model(checkpoints["base"])
    with torch.no_grad():
        model.lm_head.bias[model.vocab.ids[model.vocab.word_delimiter]] += 3.0
    folder = tmp_path_factory.mktemp("talker")
    model.save(folder)
    return folder


@pytest.fixture(scope="module")
def speech_file(speech, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("listen") / "phrases.wav"
    soundfile.write(str(path), speech.audio, RATE, subtype="FLOAT")
    return path


def run(*args, env=None) -> subprocess.CompletedProcess:
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run([COMMAND, "listen", *map(str, args)], capture_output=True, text=True, timeout=300,
                          env=environment, stdin=subprocess.DEVNULL)


class Listening:
    """`wav2vec2 listen` running in the background, its output read as it comes."""

    def __init__(self, *args, env=None):
        environment = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
        self.process = subprocess.Popen([COMMAND, "listen", *map(str, args)], stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, env=environment)
        self.out: list[str] = []
        self.err: list[str] = []
        self.ready = threading.Event()
        self.readers = [threading.Thread(target=self._read, args=(self.process.stdout, self.out), daemon=True),
                        threading.Thread(target=self._read, args=(self.process.stderr, self.err), daemon=True)]
        for reader in self.readers:
            reader.start()

    def _read(self, stream, lines: list[str]) -> None:
        for line in stream:
            lines.append(line)
            if line.startswith("Listening"):
                self.ready.set()
        self.ready.set()  # ended (or failed) before it was ready

    def wait_until_listening(self) -> float:
        assert self.ready.wait(120) and self.process.poll() is None, "".join(self.err)
        return time.monotonic()

    def stop(self) -> int:
        """Ctrl-C, then wait for the flushed output."""
        self.process.send_signal(signal.SIGINT)
        code = self.process.wait(timeout=120)
        for reader in self.readers:
            reader.join(10)
        return code

    def events(self) -> list[dict]:
        return [json.loads(line) for line in self.out]


def check_finals(finals: list[dict], model, audio: np.ndarray, speech, offset: float = 0.0) -> None:
    """Each final is the offline transcription of its stretch of audio (if `audio` is given), and its
    words lie in the phrase that was spoken (the spans shifted by `offset` seconds)."""
    from wav2vec2.streaming import Event

    for index, final in enumerate(finals):
        assert set(final) >= {"type", "text", "start", "end", "words"}
        if audio is not None:
            expected = offline(model, audio, Event("final", final["text"], final["start"], final["end"]),
                               StreamingConfig())
            assert final["text"] == expected.text
        a, b = speech.seconds(index)
        for word in final["words"]:
            assert a + offset - TOLERANCE <= word["start"] <= word["end"] <= b + offset + TOLERANCE


def test_listen_to_a_file_prints_the_offline_transcription_of_each_phrase(talker, speech, speech_file, tmp_path):
    result = run("--from", speech_file, "--fast", "--json", "--model", talker, "--threads", 1)
    assert result.returncode == 0, result.stderr
    assert result.stderr.startswith("Listening to")
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert {e["type"] for e in events} == {"partial", "final"}
    finals = [e for e in events if e["type"] == "final"]
    assert len(finals) == len(speech.spans)
    check_finals(finals, wav2vec2.load_model(talker), wav2vec2.load_audio(speech_file), speech)
    for final in finals:  # each phrase had partials before its final
        assert any(e["type"] == "partial" and e["start"] == final["start"] and e["end"] < final["end"]
                   for e in events)

    # without --json, and not on a terminal: only the finals, as "You said: ..."; --output appends
    log = tmp_path / "said.txt"
    for _ in range(2):
        plain = run("--from", speech_file, "--fast", "--model", talker, "--threads", 1, "--output", log)
        assert plain.returncode == 0, plain.stderr
        assert plain.stdout == "".join(f"You said: {f['text']}\n" for f in finals)
    lines = log.read_text().splitlines()
    assert [line.startswith("# wav2vec2 listen, ") for line in lines] == ([True] + [False] * len(finals)) * 2
    entries = [line for line in lines if not line.startswith("#")]
    assert entries == [f"[{clock(f['start'])} --> {clock(f['end'])}] {f['text']}" for f in finals] * 2


def test_on_a_terminal_the_partial_is_one_line_rewritten_in_place(talker, speech_file):
    import pty

    expected = [json.loads(line) for line in run("--from", speech_file, "--fast", "--json", "--model", talker,
                                                 "--threads", 1).stdout.splitlines()]
    controller, terminal = pty.openpty()
    process = subprocess.Popen([COMMAND, "listen", "--from", str(speech_file), "--fast", "--model", str(talker),
                                "--threads", "1"], stdout=terminal, stderr=subprocess.DEVNULL,
                               stdin=subprocess.DEVNULL, env={**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "60"})
    os.close(terminal)
    shown = b""
    while True:
        try:
            data = os.read(controller, 4096)
        except OSError:  # the terminal closed with the process
            break
        if not data:
            break
        shown += data
    os.close(controller)
    assert process.wait(60) == 0
    # each partial rewrites the line ("\r" + erase), cut to the terminal's width; each final is a line
    pieces = shown.decode().replace("\r\n", "\n").split("\r\x1b[K")
    partials = [e["text"] for e in expected if e["type"] == "partial" and e["text"]]
    assert [p for p in pieces if p and not p.startswith("You said: ")] == \
        [t if len(t) <= 59 else "…" + t[-58:] for t in partials]
    assert [p for p in pieces if p.startswith("You said: ")] == \
        [f"You said: {e['text']}\n" for e in expected if e["type"] == "final"]


def clock(seconds: float) -> str:
    whole = int(seconds)
    return f"{whole // 3600:02d}:{whole // 60 % 60:02d}:{whole % 60:02d}.{round((seconds - whole) * 1000):03d}"


def test_ctrl_c_stops_a_real_time_stream_and_flushes_the_phrase_in_progress(talker, speech, speech_file):
    listening = Listening("--from", speech_file, "--json", "--model", talker, "--threads", 1)
    started = listening.wait_until_listening()
    a, b = speech.seconds(1)
    time.sleep(max(0.0, started + (a + b) / 2 - time.monotonic()))  # in the middle of the second phrase
    interrupted = time.monotonic() - started
    assert listening.stop() == 0, "".join(listening.err)
    finals = [e for e in listening.events() if e["type"] == "final"]
    assert len(finals) == 2, listening.out  # the first phrase, and the second one cut short
    check_finals(finals, wav2vec2.load_model(talker), wav2vec2.load_audio(speech_file), speech)
    assert a < finals[1]["end"] < b
    assert finals[1]["end"] <= interrupted + 0.1  # a file is played no faster than real time


def test_listen_errors_are_one_line_each(talker, speech_file, tmp_path, capsys):
    def fails(result: subprocess.CompletedProcess, code: int, *phrases: str) -> None:
        assert result.returncode == code
        assert result.stdout == "" and len(result.stderr.splitlines()) == 1, result.stderr
        assert all(phrase in result.stderr for phrase in phrases), result.stderr

    for args, code, phrase in ((["--from", tmp_path / "missing.wav"], 1, "missing.wav: no such file"),
                               (["--fast"], 2, "--fast only applies to --from FILE"),
                               (["--from", speech_file, "--pause", 0.05], 2, "padding")):
        assert main(["listen", *map(str, args), "--model", str(talker)]) == code  # in this process: quicker
        fails(subprocess.CompletedProcess([], code, *capsys.readouterr()), code, phrase)

    # no sound server, no sound card: no microphone
    empty = tmp_path / "runtime"
    empty.mkdir(mode=0o700)
    nothing = {"XDG_RUNTIME_DIR": str(empty), "PULSE_SERVER": f"unix:{empty / 'none'}"}
    if run("--list-devices", env=nothing).returncode == 0:
        pytest.skip("this machine has a microphone of its own")
    fails(run("--model", talker, env=nothing), 1, "no microphone found", "--from FILE")
    fails(run("--list-devices", env=nothing), 1, "no audio input devices found")

    # PortAudio missing: python-sounddevice cannot find the library
    hide = ("import ctypes.util, sys; ctypes.util.find_library = lambda name: None; "
            "from wav2vec2.cli import main; sys.exit(main())")
    result = subprocess.run([sys.executable, "-c", hide, "listen", "--model", str(talker)], capture_output=True,
                            text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    fails(result, 1, "PortAudio library is not installed", "apt-get install libportaudio2")


# ---------------------------------------------------------------- a virtual microphone (PulseAudio)

@pytest.fixture(scope="module")
def pulse(tmp_path_factory):
    """A private PulseAudio server whose default source `vmic` hears what is played to `vspeaker`.

    Yields the environment variables that point clients at it; the server is stopped afterwards.
    """
    for tool in ("pulseaudio", "pactl", "paplay"):
        need(tool)
    runtime = tmp_path_factory.mktemp("pulse")
    runtime.chmod(0o700)
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime), "HOME": str(runtime)}
    env.pop("PULSE_SERVER", None)
    log = open(runtime / "pulseaudio.log", "w")
    server = subprocess.Popen(
        ["pulseaudio", "--daemonize=no", "--exit-idle-time=-1", "--disallow-exit", "-n", "--use-pid-file=no",
         "--load=module-native-protocol-unix", "--load=module-null-sink sink_name=vspeaker rate=16000 channels=1",
         "--load=module-remap-source master=vspeaker.monitor source_name=vmic", "--load=module-always-sink"],
        env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while subprocess.run(["pactl", "info"], env=env, capture_output=True).returncode != 0:
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"PulseAudio did not start: {(runtime / 'pulseaudio.log').read_text()}")
            time.sleep(0.2)
        for command in (["set-default-sink", "vspeaker"], ["set-default-source", "vmic"]):
            subprocess.run(["pactl", *command], env=env, check=True, capture_output=True)
        yield {"XDG_RUNTIME_DIR": str(runtime), "HOME": str(runtime)}
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def test_listen_to_a_pulseaudio_microphone(pulse, talker, speech, speech_file):
    listed = run("--list-devices", env=pulse)
    assert listed.returncode == 0 and "pulse" in listed.stdout, listed.stderr
    listening = Listening("--device", "pulse", "--json", "--model", talker, "--threads", 1, env=pulse)
    listening.wait_until_listening()
    assert "Hz" in listening.err[0] and "pulse" in listening.err[0]
    subprocess.run(["paplay", "--device=vspeaker", str(speech_file)], env={**os.environ, **pulse}, check=True,
                   timeout=120)
    time.sleep(1.5)  # the pause that ends the last phrase
    assert listening.stop() == 0, "".join(listening.err)
    assert not [line for line in listening.err if "warning" in line]
    finals = [e for e in listening.events() if e["type"] == "final"]
    assert len(finals) == len(speech.spans), listening.out
    assert all(f["text"] for f in finals)
    # the recording started before the file was played: the phrases come out shifted by one offset
    offsets = [f["start"] + StreamingConfig.padding - speech.seconds(i)[0] for i, f in enumerate(finals)]
    assert max(offsets) - min(offsets) < 0.1, offsets
    check_finals(finals, None, None, speech, offset=float(np.median(offsets)))


@pytest.mark.parametrize("args, message", [
    (["--device", "nonexistent"], "No input device matching 'nonexistent'"),
    (["--device", "99"], "there is no input device 99"),
    (["--device", "pulse", "--sample-rate", "1"], "pulse refuses to record at 1 Hz"),
])
def test_listen_refuses_devices_it_cannot_use(pulse, talker, args, message):
    result = run(*args, "--model", talker, env=pulse)
    assert result.returncode == 1 and result.stdout == ""
    assert len(result.stderr.splitlines()) == 1 and message in result.stderr, result.stderr
    assert "--list-devices" in result.stderr or "--sample-rate" in result.stderr


# ---------------------------------------------------------------- falling behind, refused rates (no device needed)

class FakeSoundDevice:
    """Just enough of python-sounddevice: one 48 kHz input device that refuses 16 kHz."""

    class PortAudioError(Exception):
        pass

    device = {"index": 3, "name": "Fake USB Mic", "hostapi": 0, "max_input_channels": 1, "default_samplerate": 48000.0}

    def __init__(self):
        self.streams = []

    def query_devices(self, device=None, kind=None):
        if device is None and kind is None:
            return [self.device]
        if device in (None, 3) or (isinstance(device, str) and device in self.device["name"]):
            return self.device
        raise ValueError(f"No input device matching {device!r}")

    def check_input_settings(self, device, channels, dtype, samplerate):
        if samplerate != 48000:
            raise self.PortAudioError("Invalid sample rate [PaErrorCode -9997]")

    def InputStream(self, **settings):  # noqa: N802 (sounddevice's name)
        stream = type("Stream", (), {"settings": settings, "active": True, "start": lambda self: None,
                                     "close": lambda self, ignore_errors=True: None})()
        self.streams.append(stream)
        return stream


def test_a_device_that_refuses_16_khz_is_opened_at_its_own_rate(monkeypatch):
    from wav2vec2 import microphone
    from wav2vec2.errors import MicrophoneError

    fake = FakeSoundDevice()
    monkeypatch.setattr(microphone, "import_sounddevice", lambda: fake)
    with pytest.raises(MicrophoneError, match="Fake USB Mic refuses to record at 16000 Hz .*native 48000 Hz"):
        microphone.Microphone("USB", sample_rate=16000)
    assert microphone.Microphone("USB").sample_rate == 48000
    with pytest.raises(MicrophoneError, match="there is no input device 7"):
        microphone.Microphone(7)


def test_audio_waits_while_the_model_is_busy_and_losses_are_counted(monkeypatch):
    from types import SimpleNamespace

    from wav2vec2 import microphone

    fake = FakeSoundDevice()
    monkeypatch.setattr(microphone, "import_sounddevice", lambda: fake)
    mic = microphone.Microphone(max_backlog=1.0)
    ok, overflow = SimpleNamespace(input_overflow=False), SimpleNamespace(input_overflow=True)
    with mic:
        callback = fake.streams[0].settings["callback"]
        blocks = [np.full((4800, 1), i, np.float32) for i in range(12)]  # 12 blocks of 0.1 s, unread
        for block in blocks:
            callback(block, len(block), None, ok)
        callback(blocks[0], 4800, None, overflow)
        assert mic.lag == pytest.approx(1.0) and mic.dropped == pytest.approx(0.3) and mic.overflows == 1
        mic.stop()  # what is queued is still read, in order
        assert [int(b[0]) for b in mic] == list(range(10))
    assert mic.lag == 0

    class Source:
        lag, dropped, overflows = 0.0, 0.0, 0

    from wav2vec2.cli import LivePrinter

    printer, source, said = LivePrinter(False, None, "test"), Source(), []
    monkeypatch.setattr(printer, "warn", said.append)
    for lag, dropped, overflows in [(0.5, 0, 0), (1.2, 0, 0), (1.5, 0, 0), (2.5, 0, 0), (0.2, 0.7, 0), (0.2, 0.7, 2)]:
        source.lag, source.dropped, source.overflows = lag, dropped, overflows
        printer.check(source)
    assert said[0].startswith("transcription is 1.2 s behind the audio") and said[1].startswith("transcription is 2.5")
    assert said[2].startswith("0.7 s of audio dropped") and "lost input 2 times" in said[3] and len(said) == 4
