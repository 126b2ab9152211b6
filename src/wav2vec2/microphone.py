"""Live audio in: a microphone through PortAudio (python-sounddevice), or a file played as one.

Both deliver mono float32 blocks at their own sample rate — a microphone is opened at its
device's native rate, since many devices refuse 16 kHz, and the recogniser resamples — and both
say how far the reader is behind real time (`lag`). PortAudio's thread only queues blocks, so
nothing is lost while the model is busy; past `max_backlog` seconds of queued audio, new blocks
are dropped and counted in `dropped`, so that a model too slow for real time cannot use up the
memory, and never silently.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from .audio import SAMPLE_RATE, AudioFile
from .errors import MicrophoneError

INSTALL_PORTAUDIO = ("the PortAudio library is not installed (Debian/Ubuntu: apt-get install libportaudio2; "
                     "Fedora: dnf install portaudio; macOS: brew install portaudio)")


def import_sounddevice():
    """python-sounddevice, or a MicrophoneError that says what to install."""
    try:
        import sounddevice
    except OSError:  # sounddevice raises it when libportaudio cannot be found or loaded
        raise MicrophoneError(INSTALL_PORTAUDIO) from None
    except ImportError:
        raise MicrophoneError("python-sounddevice is not installed (pip install sounddevice)") from None
    except Exception as error:  # PortAudio found but failed to initialise
        raise MicrophoneError(f"PortAudio could not start: {_reason(error)}") from None
    return sounddevice


@dataclass
class InputDevice:
    index: int
    name: str
    host_api: str
    channels: int
    sample_rate: int  # the device's native (default) rate
    default: bool


def list_input_devices() -> list[InputDevice]:
    """The audio input devices PortAudio sees."""
    sd = import_sounddevice()
    apis = sd.query_hostapis()
    default = sd.default.device[0]
    return [InputDevice(d["index"], d["name"], apis[d["hostapi"]]["name"], d["max_input_channels"],
                        int(d["default_samplerate"]), d["index"] == default)
            for d in sd.query_devices() if d["max_input_channels"] > 0]


class Microphone:
    """An input device, one channel, as an iterator of blocks; use it as a context manager.

    `device` is an index or (part of) a name, None for the system's default input; `sample_rate`
    None means the device's native rate. `stop()` may be called from a signal handler or another
    thread: iteration then ends after the blocks already queued.
    """

    def __init__(self, device: int | str | None = None, sample_rate: int | None = None, block: float = 0.02,
                 max_backlog: float = 60.0):
        self._sd = sd = import_sounddevice()
        devices = [d for d in sd.query_devices() if d["max_input_channels"] > 0]
        if not devices:
            raise MicrophoneError("no microphone found: connect one (or check that the sound server runs), "
                                  "or transcribe a file with --from FILE")
        if isinstance(device, str) and device.strip().isdigit():
            device = int(device)
        if isinstance(device, int) and device not in [d["index"] for d in devices]:
            raise MicrophoneError(f"there is no input device {device} (see `wav2vec2 listen --list-devices`)")
        try:
            info = sd.query_devices(device, "input")
        except ValueError as error:  # no such device, or a name that matches several
            raise MicrophoneError(f"{_reason(error)} (see `wav2vec2 listen --list-devices`)") from None
        except sd.PortAudioError as error:
            raise MicrophoneError(f"no input device {device!r}: {_reason(error)} "
                                  "(see `wav2vec2 listen --list-devices`)") from None
        if info["max_input_channels"] < 1:
            raise MicrophoneError(f"device {device!r} ({info['name']}) has no input channels "
                                  "(see `wav2vec2 listen --list-devices`)")
        self.device: int = info["index"]
        self.name: str = info["name"]
        native = int(info["default_samplerate"])
        rate = sample_rate or native
        try:
            sd.check_input_settings(self.device, channels=1, dtype="float32", samplerate=rate)
        except Exception as error:  # PortAudioError ("Invalid sample rate") or ValueError
            hint = (f"leave out --sample-rate to use its native {native} Hz" if sample_rate and sample_rate != native
                    else "choose another with --device")
            raise MicrophoneError(f"{self.name} refuses to record at {rate} Hz ({_reason(error)}); {hint}") from None
        self.sample_rate: int = rate
        self.block = max(1, round(block * rate))
        self.max_backlog = max_backlog
        self.dropped = 0.0  # seconds of audio dropped because the reader was too far behind
        self.overflows = 0  # times the device reported lost input (PortAudio's input overflow)
        self._queue: queue.Queue[np.ndarray] = queue.Queue()
        self._queued = 0  # samples in the queue
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._stream = None

    @property
    def lag(self) -> float:
        """Seconds of audio recorded but not yet read."""
        return self._queued / self.sample_rate

    def __enter__(self) -> Microphone:
        try:
            self._stream = self._sd.InputStream(device=self.device, samplerate=self.sample_rate, channels=1,
                                                dtype="float32", blocksize=self.block, callback=self._callback)
            self._stream.start()
        except self._sd.PortAudioError as error:
            self.__exit__()
            raise MicrophoneError(f"cannot open {self.name} at {self.sample_rate} Hz: {_reason(error)}") from None
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
        if self._stream is not None:
            self._stream.close(ignore_errors=True)
            self._stream = None

    def stop(self) -> None:
        self._stopped.set()

    def _callback(self, data: np.ndarray, frames: int, time_info, status) -> None:
        """PortAudio's thread: queue a copy of the block, nothing more."""
        if status.input_overflow:
            self.overflows += 1
        if self._stopped.is_set():
            return
        if (self._queued + frames) / self.sample_rate > self.max_backlog:
            self.dropped += frames / self.sample_rate
            return
        with self._lock:
            self._queued += frames
        self._queue.put(data[:, 0].copy())

    def __iter__(self) -> Iterator[np.ndarray]:
        if self._stream is None:
            raise RuntimeError("open the microphone with `with Microphone(...) as microphone:` first")
        silent_since = time.monotonic()
        while not (self._stopped.is_set() and self._queue.empty()):
            try:
                block = self._queue.get(timeout=0.1)
            except queue.Empty:
                if self._stopped.is_set():
                    break
                if not self._stream.active or time.monotonic() - silent_since > 5.0:
                    raise MicrophoneError(f"{self.name} stopped delivering audio (unplugged?)") from None
                continue
            silent_since = time.monotonic()
            with self._lock:
                self._queued -= len(block)
            yield block


class FilePlayer:
    """A file as if it were a microphone: 16 kHz blocks at real-time pace, or as fast as possible."""

    def __init__(self, path: str | os.PathLike, realtime: bool = True, block: float = 0.02):
        self.file = AudioFile(path)
        self.name = str(path)
        self.sample_rate = SAMPLE_RATE
        self.realtime = realtime
        self.block = max(1, round(block * SAMPLE_RATE))
        self.dropped = 0.0  # never: a file waits for its reader
        self.overflows = 0
        self.lag = 0.0  # seconds behind real time (when played at real-time pace)
        self._stopped = threading.Event()

    def __enter__(self) -> FilePlayer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self._stopped.set()

    def __iter__(self) -> Iterator[np.ndarray]:
        started = time.monotonic()
        position = 0  # samples delivered
        for chunk in self.file.blocks(1.0):
            for offset in range(0, len(chunk), self.block):
                if self._stopped.is_set():
                    return
                block = chunk[offset:offset + self.block]
                position += len(block)
                if self.realtime:  # a microphone hands over a block once its last sample is recorded
                    wait = started + position / SAMPLE_RATE - time.monotonic()
                    if wait > 0:
                        time.sleep(wait)
                    self.lag = max(0.0, -wait)
                yield block


def _reason(error: Exception) -> str:
    return str(error).strip().rstrip(".") or type(error).__name__
