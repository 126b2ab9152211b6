"""`wav2vec2 serve` in a subprocess, used as its clients would: the `openai` client and plain HTTP
for files, WebSocket clients for live audio, and clients that misbehave.

Oracles: for files, `wav2vec2 transcribe` on the same file (text, words, subtitles); for live
streams, the offline transcription of the stretch of audio each final covers (test_streaming's
`offline`, through test_listen's `check_finals`), as for `wav2vec2 listen`. The batching of model
windows across streams is checked against passes of one window each.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import soundfile
import soxr
import torch

import wav2vec2
from wav2vec2.batching import SharedModel
from wav2vec2.transcribe import transcribe
from wav2vec2.writers import render

from .test_listen import check_finals, talker  # noqa: F401 (fixture)
from .test_streaming import RATE, need, one_thread, speech  # noqa: F401 (fixtures)

COMMAND = str(Path(sys.executable).parent / "wav2vec2")
KEY = "s3cret-key"


class Server:
    """`wav2vec2 serve` on a free port (--port 0: the port is read from its first line)."""

    def __init__(self, model, *args):
        self.process = subprocess.Popen(
            [COMMAND, "serve", "--model", str(model), "--port", "0", "--precision", "fp32", "--threads", "1",
             *map(str, args)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
            text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        first = self.process.stderr.readline()
        self.err = [first]
        threading.Thread(target=lambda: self.err.extend(self.process.stderr), daemon=True).start()
        match = re.search(r"http://127\.0\.0\.1:(\d+)/", first)
        assert match, first
        self.url = f"http://127.0.0.1:{match.group(1)}"
        self.ws = f"ws://127.0.0.1:{match.group(1)}/v1/listen"
        deadline = time.monotonic() + 60
        while True:
            try:
                self.health()
                break
            except OSError:
                assert time.monotonic() < deadline and self.process.poll() is None, "".join(self.err)
                time.sleep(0.1)

    def health(self) -> dict:
        with urllib.request.urlopen(f"{self.url}/health", timeout=10) as response:
            return json.loads(response.read())

    def rss(self) -> int:
        """Resident memory of the server process, in bytes."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def stop(self) -> int:
        self.process.send_signal(signal.SIGINT)
        return self.process.wait(timeout=60)


@pytest.fixture(scope="module")
def server(talker):
    running = Server(talker, "--idle-timeout", 3)
    yield running
    assert running.stop() == 0, "".join(running.err)
    assert not [line for line in running.err[1:] if line.strip()], "".join(running.err)  # no tracebacks


@pytest.fixture(scope="module")
def strict(talker):
    """A server with a key and small limits."""
    running = Server(talker, "--api-key", KEY, "--max-streams", 2, "--max-upload-mb", 0.25,
                     "--max-message-kb", 64, "--idle-timeout", 1.5)
    yield running
    assert running.stop() == 0, "".join(running.err)


@pytest.fixture(scope="module")
def files(speech, tmp_path_factory) -> dict[str, Path]:
    """The speech as a 16 kHz WAV, and as 44.1 kHz stereo OGG Vorbis (any format transcribe reads)."""
    folder = tmp_path_factory.mktemp("server")
    wav = folder / "speech.wav"
    soundfile.write(str(wav), speech.audio, RATE, subtype="FLOAT")
    ogg = folder / "speech.ogg"
    stereo = soxr.resample(speech.audio, RATE, 44100)
    soundfile.write(str(ogg), np.stack([stereo, 0.8 * stereo], axis=1), 44100, format="OGG", subtype="VORBIS")
    return {"wav": wav, "ogg": ogg}


def cli_transcription(model: Path, path: Path, *options) -> dict:
    result = subprocess.run([COMMAND, "transcribe", str(path), "--model", str(model), "--precision", "fp32",
                             "--format", "json", *map(str, options)], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def multipart(fields: dict[str, str | list[str]], file: Path | None = None,
              data: bytes | None = None) -> tuple[bytes, str]:
    """A multipart/form-data body written by hand (the plain-HTTP client)."""
    boundary = "----wav2vec2-test-boundary"
    parts = []
    for name, values in fields.items():
        for value in values if isinstance(values, list) else [values]:
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    if file is not None or data is not None:
        name = file.name if file is not None else "upload.bin"
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
                     f"Content-Type: application/octet-stream\r\n\r\n".encode()
                     + (file.read_bytes() if file is not None else data) + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def post(server: Server, body: bytes, content_type: str, key: str | None = None) -> tuple[int, str, str]:
    """(status, content type, body) of a POST to /v1/audio/transcriptions."""
    headers = {"Content-Type": content_type, **({"Authorization": f"Bearer {key}"} if key else {})}
    request = urllib.request.Request(f"{server.url}/v1/audio/transcriptions", data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read().decode()


# ---------------------------------------------------------------------- files over HTTP

def test_the_openai_client_and_plain_http_get_what_wav2vec2_transcribe_gives(server, talker, files):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    model = wav2vec2.load_model(talker)
    for path in files.values():
        expected = cli_transcription(talker, path)
        assert expected["text"]
        local = transcribe(model, path)  # the same as the command, for the subtitle formats
        assert local.text == expected["text"]
        with open(path, "rb") as file:
            assert client.audio.transcriptions.create(model="whisper-1", file=file).text == expected["text"]
        for fmt in ("text", "srt", "vtt"):
            with open(path, "rb") as file:
                got = client.audio.transcriptions.create(model="whisper-1", file=file, response_format=fmt)
            assert got == render(local, "txt" if fmt == "text" else fmt)
        with open(path, "rb") as file:
            verbose = client.audio.transcriptions.create(model="whisper-1", file=file, response_format="verbose_json",
                                                         timestamp_granularities=["word", "segment"])
        assert verbose.text == expected["text"]
        assert verbose.duration == pytest.approx(expected["duration"], abs=1e-3)
        assert [(w.word, w.start, w.end) for w in verbose.words] == \
            [(w["text"], w["start"], w["end"]) for w in expected["words"]]
        assert " ".join(s.text for s in verbose.segments) == expected["text"]
        assert all(a.end <= b.start for a, b in zip(verbose.segments, verbose.segments[1:]))

        # plain HTTP, by hand: json by default, words only when asked for
        status, kind, body = post(server, *multipart({"model": "whisper-1"}, path))
        assert (status, kind, json.loads(body)) == (200, "application/json", {"text": expected["text"]})
        status, _, body = post(server, *multipart({"response_format": "verbose_json",
                                                   "timestamp_granularities[]": "word"}, path))
        body = json.loads(body)
        assert status == 200 and "segments" not in body
        assert [w["probability"] for w in body["words"]] == [w["confidence"] for w in expected["words"]]


def test_file_errors_are_openai_errors(server, strict, talker, files, tmp_path):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    not_audio = tmp_path / "notes.txt"
    not_audio.write_text("this is not audio\n" * 10)
    with pytest.raises(openai.BadRequestError, match="notes.txt: not a readable audio file"):
        client.audio.transcriptions.create(model="whisper-1", file=not_audio.open("rb"))
    with pytest.raises(openai.BadRequestError, match="response_format must be one of"):
        client.audio.transcriptions.create(model="whisper-1", file=files["wav"].open("rb"), response_format="xml")
    for fields, message in (({"model": "whisper-1"}, "with a `file` field"),
                            ({"timestamp_granularities[]": "phoneme"}, "must be word or segment"),
                            ({"stream": "true"}, "stream=true is not supported")):
        status, _, body = post(server, *multipart(fields, files["wav"] if "model" not in fields else None))
        assert status == 400 and message in json.loads(body)["error"]["message"], body
    status, _, body = post(server, b"--x\r\nbroken", "multipart/form-data; boundary=x")
    assert status == 400 and json.loads(body)["error"]["type"] == "invalid_request_error"

    # the key: missing or wrong is 401, right is fine; too large is 413, with or without a Content-Length
    keyed = openai.OpenAI(base_url=f"{strict.url}/v1", api_key=KEY, max_retries=0)
    wrong = openai.OpenAI(base_url=f"{strict.url}/v1", api_key="wrong", max_retries=0)
    small = tmp_path / "small.wav"
    soundfile.write(str(small), np.zeros(RATE, np.float32), RATE)
    assert keyed.audio.transcriptions.create(model="whisper-1", file=small.open("rb")).text == \
        transcribe(wav2vec2.load_model(talker), small).text
    with pytest.raises(openai.AuthenticationError, match="API key"):
        wrong.audio.transcriptions.create(model="whisper-1", file=small.open("rb"))
    assert post(strict, *multipart({}, small))[0] == 401
    big = multipart({}, data=bytes(300 * 1024))
    status, _, body = post(strict, *big, key=KEY)
    assert status == 413 and "0.25 MiB" in json.loads(body)["error"]["message"]
    need("curl")
    chunked = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", "Transfer-Encoding: chunked",
                              "-H", f"Authorization: Bearer {KEY}", "-F", f"file=@{files['wav']}",
                              f"{strict.url}/v1/audio/transcriptions"], capture_output=True, text=True, timeout=60)
    assert chunked.stdout == "413"  # no Content-Length: counted as it arrives


@pytest.mark.slow
def test_a_server_with_beam_search_decodes_as_transcribe_and_listen_do(talker, speech, files):
    openai = pytest.importorskip("openai")
    options = ("--decoder", "beam", "--beam-size", 8, "--hotword", "TEA:5")
    running = Server(talker, *options)
    try:
        expected = cli_transcription(talker, files["wav"], *options)
        assert expected["text"] != cli_transcription(talker, files["wav"])["text"]  # not greedy's
        client = openai.OpenAI(base_url=f"{running.url}/v1", api_key="unused", max_retries=0)
        with open(files["wav"], "rb") as file:
            assert client.audio.transcriptions.create(model="whisper-1", file=file).text == expected["text"]
        # a stream may ask for greedy finals instead: they are the offline greedy transcription
        sent, heard = encode(speech.audio, RATE, "pcm16")
        stream = LiveClient(running.ws, {"type": "start", "sample_rate": RATE, "encoding": "pcm16",
                                         "decoder": "greedy"})
        play(stream, sent, RATE, seed=1, realtime=False)
        assert stream.finish() == 1000 and len(stream.of("final")) == len(speech.spans)
        check_finals(stream.of("final"), wav2vec2.load_model(talker), heard, speech)
    finally:
        assert running.stop() == 0, "".join(running.err)


@pytest.mark.slow
def test_a_long_file_is_transcribed_while_the_server_keeps_answering(server, talker, speech, tmp_path):
    audio = np.tile(speech.audio, 60)  # about 10 minutes, as 16-bit FLAC: seconds of work for the model
    path = tmp_path / "long.flac"
    soundfile.write(str(path), audio, RATE, subtype="PCM_16")
    expected = transcribe(wav2vec2.load_model(talker), path)
    before = server.rss()
    result = {}
    worker = threading.Thread(target=lambda: result.update(answer=post(server, *multipart({}, path))))
    worker.start()
    slowest = 0.0
    while worker.is_alive():  # the event loop is free while the model works
        started = time.monotonic()
        server.health()
        slowest = max(slowest, time.monotonic() - started)
        time.sleep(0.05)
    worker.join()
    status, _, body = result["answer"]
    assert status == 200 and json.loads(body)["text"] == expected.text
    assert slowest < 1.5
    assert server.rss() - before < 150 * 2**20  # chunks: not the whole file at once


# ---------------------------------------------------------------------- live over WebSocket

def ws_connect(url: str, **options):
    from websockets.sync.client import connect

    return connect(url, open_timeout=30, close_timeout=10, max_size=None, **options)


class LiveClient:
    """One WebSocket stream: sends a start message, then audio; collects every event it receives."""

    def __init__(self, url: str, start: dict | None, **options):
        self._opened = contextlib.ExitStack()
        self.ws = self._opened.enter_context(ws_connect(url, **options))
        self.events: list[dict] = []
        self.close_code: int | None = None
        if start is not None:
            self.ws.send(json.dumps(start))
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            for message in self.ws:
                self.events.append(json.loads(message))
        except ConnectionClosed:
            pass
        self.close_code = self.ws.close_code

    def finish(self, timeout: float = 60) -> int:
        self.reader.join(timeout)
        assert not self.reader.is_alive(), "the server did not close the stream"
        self._opened.close()
        return self.close_code

    def of(self, kind: str) -> list[dict]:
        return [e for e in self.events if e["type"] == kind]


def play(client: LiveClient, data: np.ndarray, rate: int, seed: int, realtime: bool = True, stop: bool = True,
         until: float | None = None) -> float:
    """Send `data` in blocks of random sizes (up to 0.25 s), each when its last sample would have been
    recorded; returns the monotonic time at which the stream started."""
    rng = np.random.default_rng(seed)
    started, position = time.monotonic(), 0
    end = len(data) if until is None else int(until * rate)
    while position < end:
        size = int(rng.integers(1, rate // 4))
        block = data[position:min(end, position + size)]
        position += len(block)
        if realtime:
            time.sleep(max(0.0, started + position / rate - time.monotonic()))
        client.ws.send(block.tobytes())
    if stop:
        client.ws.send(json.dumps({"type": "stop"}))
    return started


def vanish(client: LiveClient) -> None:
    """The client's connection breaks: no closing handshake, no more bytes either way."""
    client.ws.socket.shutdown(socket.SHUT_RDWR)


def encode(audio: np.ndarray, rate: int, encoding: str) -> tuple[np.ndarray, np.ndarray]:
    """(what the client sends at `rate` in `encoding`, what the server hears at 16 kHz), the latter
    resampled in one go, as the oracle."""
    signal_ = soxr.resample(audio, RATE, rate) if rate != RATE else audio
    if encoding == "pcm16":
        sent = np.round(np.clip(signal_, -1, 32767 / 32768) * 32768).astype("<i2")
        as_float = sent.astype(np.float32) / 32768
    else:
        sent = signal_.astype("<f4")
        as_float = sent
    heard = soxr.resample(as_float, rate, RATE, quality="HQ") if rate != RATE else as_float
    return sent, heard.astype(np.float32)


@pytest.mark.slow
def test_a_live_stream_in_real_time_gets_the_offline_transcription_of_each_phrase(server, talker, speech):
    sent, heard = encode(speech.audio, 44100, "pcm16")
    client = LiveClient(server.ws, {"type": "start", "sample_rate": 44100, "encoding": "pcm16"})
    play(client, sent, 44100, seed=0)
    assert client.finish() == 1000
    assert client.events[0] == {"type": "ready", "sample_rate": 44100, "encoding": "pcm16", "model": str(talker)}
    finals = client.of("final")
    assert len(finals) == len(speech.spans) and all(f["text"] for f in finals)
    check_finals(finals, wav2vec2.load_model(talker), heard, speech)
    for final in finals:  # the fields of `wav2vec2 listen --json`, and partials before each final
        assert set(final) == {"type", "text", "start", "end", "words", "continued"}
        assert any(p["start"] == final["start"] and p["end"] < final["end"] for p in client.of("partial"))


@pytest.mark.slow
def test_eight_streams_at_once_a_garbage_one_a_vanishing_one_and_a_silent_one(server, talker, speech):
    model = wav2vec2.load_model(talker)
    good = [(16000, "pcm16"), (48000, "float32"), (44100, "pcm16"), (22050, "float32"), (16000, "float32")]
    clients, threads, sent = [], [], []
    for index, (rate, encoding) in enumerate(good):
        data, heard = encode(speech.audio, rate, encoding)
        client = LiveClient(server.ws, {"type": "start", "sample_rate": rate, "encoding": encoding})
        clients.append((client, heard))
        sent.append(data)
    garbage = LiveClient(server.ws, {"type": "start", "sample_rate": 16000, "encoding": "pcm16"})
    vanishing = LiveClient(server.ws, {"type": "start", "sample_rate": 16000, "encoding": "pcm16"})
    silent = LiveClient(server.ws, {"type": "start", "sample_rate": 16000, "encoding": "float32"})

    def misbehave() -> None:
        play(garbage, encode(speech.audio, RATE, "pcm16")[0], RATE, seed=9, stop=False, until=1.0)
        garbage.ws.send(b"\x01\x02\x03")  # half a sample
        a, b = speech.seconds(0)
        play(vanishing, encode(speech.audio, RATE, "pcm16")[0], RATE, seed=10, stop=False, until=(a + b) / 2)
        vanish(vanishing)  # gone mid-phrase

    for index, ((client, _), data) in enumerate(zip(clients, sent)):
        threads.append(threading.Thread(target=play, args=(client, data, good[index][0], index)))
    threads.append(threading.Thread(target=misbehave))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for client, heard in clients:
        assert client.finish() == 1000
        finals = client.of("final")
        assert len(finals) == len(speech.spans) and not client.of("error")
        check_finals(finals, model, heard, speech)
    assert garbage.finish() == 1007 and "whole samples" in garbage.of("error")[0]["message"]
    assert silent.finish() == 1008 and "nothing received for 3 s" in silent.of("error")[0]["message"]
    vanishing.finish()
    deadline = time.monotonic() + 10
    while server.health()["streams"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert server.health()["streams"] == 0


def test_what_a_live_stream_refuses(strict):
    from websockets.exceptions import InvalidStatus

    start = {"type": "start", "sample_rate": 16000, "encoding": "pcm16", "api_key": KEY}
    cases = [
        ('{"type": "start", "sample_rate": 16000', 1007, "malformed JSON"),
        ({**start, "encoding": "mulaw"}, 1007, "encoding must be pcm16 or float32"),
        ({**start, "sample_rate": 0}, 1007, "sample_rate must be"),
        ({**start, "sample_rate": "16000"}, 1007, "sample_rate must be"),
        ({**start, "pause": 0.05}, 1007, "padding"),
        ({**start, "language": "en"}, 1007, "unknown field 'language'"),
        ({**start, "decoder": "viterbi"}, 1007, "decoder must be greedy or beam"),
        ({"type": "stop"}, 1008, '"type": "start"'),
        ({**start, "api_key": "wrong"}, 1008, "missing or wrong API key"),
        ({key: value for key, value in start.items() if key != "api_key"}, 1008, "missing or wrong API key"),
    ]
    for message, code, text in cases:
        client = LiveClient(strict.ws, None)
        client.ws.send(message if isinstance(message, str) else json.dumps(message))
        assert client.finish() == code, (message, client.events)
        assert [e["type"] for e in client.events] == ["error"] and text in client.events[0]["message"], client.events

    def refused(send, code: int, text: str) -> None:
        client = LiveClient(strict.ws, start)
        send(client)
        assert client.finish() == code
        assert client.events[0]["type"] == "ready" and text in client.events[-1]["message"], client.events

    refused(lambda c: c.ws.send(b"\x00" * 3), 1007, "whole samples")
    refused(lambda c: c.ws.send("not json"), 1007, "malformed JSON")
    refused(lambda c: c.ws.send(json.dumps({"type": "pause"})), 1008, "unexpected message of type 'pause'")
    refused(lambda c: None, 1008, "nothing received for 1.5 s")
    float_start = {**start, "encoding": "float32"}
    client = LiveClient(strict.ws, float_start)
    client.ws.send(np.array([0.1, np.nan], "<f4").tobytes())
    assert client.finish() == 1007 and "NaN" in client.events[-1]["message"]
    client = LiveClient(strict.ws, start)
    client.ws.send(bytes(65 * 1024))  # over --max-message-kb: uvicorn closes the connection
    assert client.finish() == 1009

    # the key in the handshake's header: a wrong one is refused before the WebSocket opens
    with pytest.raises(InvalidStatus, match="403"):
        with ws_connect(strict.ws, additional_headers={"Authorization": "Bearer wrong"}):
            pass
    first = LiveClient(strict.ws, {**start, "api_key": "not looked at: the header has the key"},
                       additional_headers={"Authorization": f"Bearer {KEY}"})

    # two streams at most: the third is told to come back later; a place frees when one ends
    second = LiveClient(strict.ws, start)
    deadline = time.monotonic() + 10
    while not (first.events and second.events) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [first.events[0]["type"], second.events[0]["type"]] == ["ready", "ready"]
    third = LiveClient(strict.ws, start)
    assert third.finish() == 1013 and "all 2 live streams are in use" in third.events[0]["message"]
    first.ws.send(json.dumps({"type": "stop"}))
    assert first.finish() == 1000
    deadline = time.monotonic() + 10
    while strict.health()["streams"] > 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    fourth = LiveClient(strict.ws, start)
    fourth.ws.send(json.dumps({"type": "stop"}))
    assert fourth.finish() == 1000 and fourth.events[0]["type"] == "ready"
    second.ws.send(json.dumps({"type": "stop"}))
    assert second.finish() == 1000
    assert strict.health()["streams"] == 0


@pytest.mark.slow
def test_streams_that_come_and_go_leave_nothing_behind(server, speech):
    repeats = 3
    data = encode(np.tile(speech.audio, repeats), 48000, "float32")[0]  # 6 MB of audio per stream
    a, b = speech.seconds(1)
    vanish_at = (repeats - 1) * len(speech.audio) / RATE + (a + b) / 2  # the middle of a phrase

    def session(seed: int) -> None:
        client = LiveClient(server.ws, {"type": "start", "sample_rate": 48000, "encoding": "float32"})
        play(client, data, 48000, seed, realtime=False, stop=False, until=vanish_at)
        vanish(client)  # with audio still queued on the server
        client.finish()
        # one stream at a time: streams piling up would measure the allocator's peak, not a leak
        deadline = time.monotonic() + 10
        while server.health()["streams"] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert server.health()["streams"] == 0

    for seed in range(5):  # warm up: allocator pools, thread pools, first passes
        session(seed)
    before = server.rss()
    for seed in range(5, 25):
        session(seed)
    assert server.rss() - before < 30 * 2**20  # keeping a quarter of each stream's audio fails this


# ---------------------------------------------------------------------- batching across streams

class Recorded:
    """A model that records the batch size of every pass; the first pass waits for `gate`."""

    def __init__(self, model):
        self.model, self.sizes, self.gate, self.entered = model, [], threading.Event(), threading.Event()
        self.config, self.vocab = model.config, model.vocab

    def __call__(self, waveform, attention_mask=None):
        if not self.sizes:
            self.entered.set()
            self.gate.wait(30)
        self.sizes.append(len(waveform))
        if waveform.shape[1] == 1234:
            raise RuntimeError("this length is cursed")
        return self.model(waveform, attention_mask)


def test_windows_of_equal_length_share_one_pass_and_each_gets_its_own_logits(talker):
    model = wav2vec2.load_model(talker)
    recorded = Recorded(model)
    shared = SharedModel(recorded, max_batch=3)
    live, files = shared.proxy(live=True), shared.proxy(live=False)
    assert live.config is model.config and live.vocab is model.vocab  # the model's attributes
    rng = np.random.default_rng(0)
    windows = [torch.from_numpy(rng.standard_normal((1, n)).astype(np.float32)) for n in
               (8000, 23680, 23680, 16000, 23680, 23680, 16000, 23680)]
    results: dict[int, torch.Tensor] = {}
    threads = [threading.Thread(target=lambda: results.update(first=live(windows[0])))]
    threads[0].start()
    assert recorded.entered.wait(30)  # the first pass runs, and waits: the others queue meanwhile
    threads += [threading.Thread(target=lambda i=i: results.update({i: live(windows[i])})) for i in range(1, 8)]
    threads.append(threading.Thread(target=lambda: results.update(file=files(windows[1]))))
    for thread in threads[1:]:
        thread.start()
    deadline = time.monotonic() + 10
    while len(shared._live) + len(shared._files) < 8 and time.monotonic() < deadline:
        time.sleep(0.01)
    recorded.gate.set()
    for thread in threads:
        thread.join(30)
    # one pass for the first, then the five 1.48 s windows in passes of 3 and 2, the two 1 s ones
    # together (these three in the order their lengths arrived), and the file chunk after the live round
    assert recorded.sizes[0] == 1 and sorted(recorded.sizes[1:4]) == [2, 2, 3] and recorded.sizes[4:] == [1]
    assert shared.stats.largest_batch == 3 and shared.stats.live_windows == 8
    with torch.inference_mode():
        for i in range(1, 8):
            alone = model(windows[i])
            assert results[i].shape == alone.shape
            assert torch.allclose(results[i], alone, atol=1e-4)
            assert torch.equal(results[i].argmax(-1), alone.argmax(-1))
        assert torch.equal(results["file"], model(windows[1]))
    with pytest.raises(RuntimeError, match="cursed"):  # a failed pass fails its callers only
        live(torch.zeros(1, 1234))
    assert live(windows[0]).shape == results["first"].shape
    shared.close()
    with pytest.raises(RuntimeError, match="shut down"):
        live(windows[0])

    unbatched = SharedModel(Recorded(model), max_batch=1)
    unbatched.model.gate.set()
    outputs = []
    threads = [threading.Thread(target=lambda: outputs.append(unbatched.proxy(True)(windows[1]))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert unbatched.model.sizes == [1, 1, 1, 1] and len(outputs) == 4
    unbatched.close()


class Overlapping:
    """A model that counts the passes running at once (each pass lasts at least 0.2 s)."""

    def __init__(self, model):
        self.model, self.config, self.vocab = model, model.config, model.vocab
        self.running, self.most, self.lock = 0, 0, threading.Lock()
        self.threads: set[int] = set()

    def __call__(self, waveform, attention_mask=None):
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
            self.threads.add(torch.get_num_threads())
        time.sleep(0.2)
        try:
            return self.model(waveform, attention_mask)
        finally:
            with self.lock:
                self.running -= 1


@pytest.mark.parametrize("live", [True, False])
def test_parallel_passes_overlap_but_file_chunks_run_one_at_a_time(talker, live):
    model = wav2vec2.load_model(talker)
    counted = Overlapping(model)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    shared = SharedModel(counted, max_batch=1, parallel=2)
    torch.set_num_threads(before)
    call = shared.proxy(live)
    rng = np.random.default_rng(1)
    windows = [torch.from_numpy(rng.standard_normal((1, 16000)).astype(np.float32)) for _ in range(4)]
    results: dict[int, torch.Tensor] = {}
    threads = [threading.Thread(target=lambda i=i: results.update({i: call(windows[i])})) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert counted.most == (2 if live else 1)  # two live passes at once; file chunks one at a time
    assert counted.threads == {1}  # the two threads shared out between the passes
    with torch.inference_mode():
        for i in range(4):
            assert torch.equal(results[i], model(windows[i]))
    shared.close()
    with pytest.raises(RuntimeError, match="shut down"):
        call(windows[0])


def test_serve_fails_in_one_line(talker, tmp_path):
    def one_line(*args) -> str:
        result = subprocess.run([COMMAND, "serve", *map(str, args)], capture_output=True, text=True, timeout=120,
                                env={**os.environ, "HF_HUB_OFFLINE": "1"})
        assert result.returncode != 0 and result.stdout == ""
        assert len(result.stderr.splitlines()) == 1, result.stderr
        return result.stderr

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    assert f"cannot listen on 127.0.0.1:{port}" in one_line("--model", talker, "--port", port)
    taken.close()
    assert "no-such-model" in one_line("--model", tmp_path / "no-such-model", "--port", 0)
