"""`wav2vec2 serve`: one model in memory behind HTTP and WebSocket, for programs and for a browser.

    POST /v1/audio/transcriptions   a file in, its transcription out (OpenAI's transcription API)
    WS   /v1/listen                 live audio in, `partial` and `final` events out (protocol below)
    GET  /health                    status: model, live streams in use (no key needed)
    GET  /                          the page (static/): microphone, live captions, files by drag-and-drop

Built on Starlette, served by uvicorn: Starlette is the small ASGI toolkit that FastAPI is made of
(routing, multipart forms, WebSockets, static files) without FastAPI's pydantic layer, which
four routes do not need; uvicorn is the usual server for it. Both are maintained and typed.

The event loop only moves bytes. The model runs on threads of its own (batching.SharedModel, two by default):
each live stream feeds its StreamingRecognizer on a worker thread, whose model windows are
batched with those of other streams; a file is transcribed by `transcribe_many` on another
worker thread, its 20 s chunks taking turns with the live windows. So the server keeps answering
while the model works, and a slow or silent client only ever waits for itself.

Live protocol (WS /v1/listen). The client sends, in order:

1. A text message `{"type": "start", "sample_rate": 48000, "encoding": "pcm16"}`: `encoding` is
   `pcm16` (signed 16-bit little-endian) or `float32` (little-endian); optional fields are the
   phrase settings of `wav2vec2 listen` (`pause`, `min_speech`, `max_phrase`, `interval`,
   `context`, in seconds), `decoder` (`greedy`, or `beam`: the server's beam search, set by
   `wav2vec2 serve --decoder/--lm/...`, for this stream's finals; default: the server's) and
   `api_key` (when the server has one and the handshake carried no `Authorization: Bearer`
   header, as browsers cannot send one). The server answers
   `{"type": "ready", "sample_rate": ..., "encoding": ..., "model": ...}`.
2. Binary messages of mono audio at that rate, of any size up to the message limit.
3. Optionally `{"type": "stop"}`: the phrase in progress is finished, its final sent, and the
   server closes the connection (code 1000).

The server sends `{"type": "partial" | "final", "text", "start", "end", ...}` events, the objects
of `wav2vec2 listen --json` (finals add `words` and `continued`), times in seconds of the stream;
and for what it refuses `{"type": "error", "message": ...}`, after which it closes: 1007 for
malformed JSON or audio (an odd number of bytes of pcm16, non-finite floats), 1008 for a wrong
key, messages out of order or a stream idle longer than the timeout, 1009 for a message over
the size limit (closed by uvicorn, without an error event), 1013 when all live streams are
taken, 1011 for an error of the server itself.
"""

from __future__ import annotations

import asyncio
import copy
import hmac
import json
import logging
import math
import os
import shutil
import socket
import tempfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import uvicorn
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocketDisconnect

from .batching import SharedModel
from .errors import AudioError, Wav2Vec2Error
from .streaming import SileroVAD, StreamingConfig, StreamingRecognizer
from .transcribe import Transcription, transcribe_many
from .writers import cues, render

STATIC = Path(__file__).parent / "static"
RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
ENCODINGS = {"pcm16": np.dtype("<i2"), "float32": np.dtype("<f4")}
PHRASE_FIELDS = ("pause", "min_speech", "max_phrase", "interval", "context")  # StreamingConfig, as `listen`
START_FIELDS = {"type", "sample_rate", "encoding", "api_key", "decoder", *PHRASE_FIELDS}
MAX_SAMPLE_RATE = 384_000
QUEUED_MESSAGES = 16  # audio messages a stream holds while its recogniser is busy; then TCP waits
log = logging.getLogger("wav2vec2.server")


@dataclass
class ServerSettings:
    """Limits and settings of one server; sizes in bytes, times in seconds."""

    model_name: str = "model"  # shown by /health and the page
    max_streams: int = 8  # live streams at once; the next one is refused
    api_key: str | None = None  # bearer token for every route but / and /health
    max_upload: int = 512 * 2**20  # request body of a file upload
    max_message: int = 2**20  # WebSocket message (audio or JSON)
    idle_timeout: float = 30.0  # a live stream that sends nothing this long is closed
    max_batch: int = 8  # live model windows in one forward pass (1: no cross-stream batching)
    parallel: int = 2  # forward passes at once, PyTorch's threads shared out among them
    file_workers: int = 2  # files transcribed at once (their chunks share the model in turns)
    chunk_length: float = 20.0  # file chunks, as `wav2vec2 transcribe`
    stride: float = 2.0

    def validate(self) -> None:
        for name in ("max_streams", "max_upload", "max_message", "max_batch", "parallel", "file_workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")
        if not self.idle_timeout > 0:
            raise ValueError(f"idle_timeout must be positive, not {self.idle_timeout}")
        if self.api_key is not None and not self.api_key:
            raise ValueError("the API key must not be empty")


class _Refused(Exception):
    """A live stream ends with an error event and this close code."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


class _TooLarge(Exception):
    pass


class SpeechServer:
    """The application: routes, the shared model, the worker threads. `app` is the ASGI app.

    `decoder` (a beam.BeamDecoder; None: greedy) decodes files and the finals of live streams; it
    is shared by all of them, as it only holds what does not change (vocabulary, LM, lexicon)."""

    def __init__(self, model, settings: ServerSettings | None = None, decoder=None):
        self.settings = settings or ServerSettings()
        self.settings.validate()
        self.model = model
        self.decoder = decoder
        self.shared = SharedModel(model, self.settings.max_batch, self.settings.parallel)
        self._live_model, self._file_model = self.shared.proxy(live=True), self.shared.proxy(live=False)
        self._vad = SileroVAD()  # one ONNX session; each stream gets a copy with its own state
        self._stream_pool = ThreadPoolExecutor(self.settings.max_streams + 2, thread_name_prefix="wav2vec2-stream")
        self._file_pool = ThreadPoolExecutor(self.settings.file_workers, thread_name_prefix="wav2vec2-file")
        self.streams = 0  # live streams in use (changed on the event loop only)
        self._beam = None  # see _plain_beam
        self.app = Starlette(routes=[
            Route("/v1/audio/transcriptions", self.transcriptions, methods=["POST"]),
            WebSocketRoute("/v1/listen", self.listen),
            Route("/health", self.health),
            Mount("/", StaticFiles(directory=STATIC, html=True)),
        ])

    def close(self) -> None:
        self._stream_pool.shutdown(wait=False, cancel_futures=True)
        self._file_pool.shutdown(wait=False, cancel_futures=True)
        self.shared.close()

    # ------------------------------------------------------------------ keys

    def _authorized(self, given: str | None) -> bool:
        """Constant-time comparison, so that response times say nothing about the key."""
        if self.settings.api_key is None:
            return True
        return given is not None and hmac.compare_digest(given.encode(), self.settings.api_key.encode())

    # ------------------------------------------------------------------ HTTP

    async def health(self, request):
        stats = self.shared.stats
        return JSONResponse({"status": "ok", "model": self.settings.model_name,
                             "precision": getattr(self.model, "precision", "fp32"),
                             "streams": self.streams, "max_streams": self.settings.max_streams,
                             "auth_required": self.settings.api_key is not None,
                             "max_upload": self.settings.max_upload, "max_message": self.settings.max_message,
                             "batching": {"max_batch": self.settings.max_batch, "parallel": self.settings.parallel,
                                          "live_passes": stats.live_passes,
                                          "live_windows": stats.live_windows, "largest_batch": stats.largest_batch}})

    async def transcriptions(self, request):
        """OpenAI's POST /v1/audio/transcriptions: multipart `file`; `response_format` json, text, srt,
        vtt or verbose_json; `timestamp_granularities[]` word and/or segment. `model`, `prompt` and
        `temperature` are accepted and ignored: one server, one model, greedy decoding."""
        if not self._authorized(_bearer(request.headers)):
            return _error(401, "missing or wrong API key (send the header Authorization: Bearer KEY)",
                          code="invalid_api_key")
        limit = self.settings.max_upload
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            return _error(413, f"the upload is larger than the server's limit of {_size(limit)}")
        request = Request(request.scope, _limited(request.receive, limit))
        try:
            form = await request.form(max_files=1, max_fields=32)
        except _TooLarge:
            return _error(413, f"the upload is larger than the server's limit of {_size(limit)}")
        except Exception as error:  # starlette's MultiPartException, a broken body
            return _error(400, f"malformed form data: {error}")
        try:
            return await self._transcribe_form(form)
        finally:
            await form.close()

    async def _transcribe_form(self, form):
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            return _error(400, "send the audio as multipart/form-data with a `file` field", param="file")
        fmt = str(form.get("response_format") or "json")
        if fmt not in RESPONSE_FORMATS:
            return _error(400, f"response_format must be one of {', '.join(RESPONSE_FORMATS)}, not {fmt!r}",
                          param="response_format")
        granularities = [str(g) for g in form.getlist("timestamp_granularities[]") +
                         form.getlist("timestamp_granularities")]
        wrong = [g for g in granularities if g not in ("word", "segment")]
        if wrong:
            return _error(400, f"timestamp_granularities must be word or segment, not {wrong[0]!r}",
                          param="timestamp_granularities")
        if str(form.get("stream") or "false").lower() not in ("false", "0"):
            return _error(400, "stream=true is not supported: use the WebSocket /v1/listen for live text",
                          param="stream")
        name = Path(upload.filename or "upload").name
        loop = asyncio.get_running_loop()
        try:
            result = await loop.run_in_executor(self._file_pool, self._transcribe_upload, upload, name)
        except Wav2Vec2Error as error:
            return _error(400, str(error), param="file")
        if fmt == "json":
            return JSONResponse({"text": result.text})
        if fmt == "verbose_json":
            return JSONResponse(verbose_json(result, str(form.get("language") or "english"), granularities))
        if fmt == "vtt":
            return Response(render(result, "vtt"), media_type="text/vtt")
        return PlainTextResponse(render(result, "txt" if fmt == "text" else fmt))

    def _transcribe_upload(self, upload, name: str) -> Transcription:
        """Worker thread: copy the upload to a named file (the decoder wants a path), transcribe it
        in chunks as `wav2vec2 transcribe` does, remove the copy."""
        suffix = "".join(c for c in Path(name).suffix if c.isalnum() or c == ".")[:12]
        handle, path = tempfile.mkstemp(prefix="wav2vec2-upload-", suffix=suffix)
        try:
            with os.fdopen(handle, "wb") as copy_:
                upload.file.seek(0)
                shutil.copyfileobj(upload.file, copy_, 2**20)
            (_, result), = transcribe_many(self._file_model, [path], chunk_length=self.settings.chunk_length,
                                           stride=self.settings.stride, decoder=self.decoder)
        finally:
            os.unlink(path)
        if isinstance(result, Exception):
            raise AudioError(str(result).replace(path, name))
        return result

    # ------------------------------------------------------------------ WebSocket

    async def listen(self, websocket):
        header = _bearer(websocket.headers)
        if header is not None and not self._authorized(header):
            await websocket.close(code=1008)  # before accept(): the handshake is refused (HTTP 403)
            return
        await websocket.accept()
        counted = False
        try:
            recognizer, dtype = await self._start(websocket, authorized=header is not None)
            if self.streams >= self.settings.max_streams:
                raise _Refused(f"the server is busy: all {self.settings.max_streams} live streams are in use "
                               "(its --max-streams); try again later", 1013)
            self.streams += 1
            counted = True
            await websocket.send_json({"type": "ready", "sample_rate": recognizer.sample_rate,
                                       "encoding": "pcm16" if dtype.kind == "i" else "float32",
                                       "model": self.settings.model_name})
            await self._stream(websocket, recognizer, dtype)
        except _Refused as refused:
            await _close_with_error(websocket, str(refused), refused.code)
        except (WebSocketDisconnect, OSError):
            pass  # the client went away: nothing to tell it
        except Exception as error:  # a bug: tell this client, keep serving the others
            log.exception("live stream failed")
            await _close_with_error(websocket, f"internal error: {type(error).__name__}: {error}", 1011)
        finally:
            if counted:
                self.streams -= 1

    async def _receive(self, websocket) -> dict:
        try:
            message = await asyncio.wait_for(websocket.receive(), self.settings.idle_timeout)
        except asyncio.TimeoutError:
            raise _Refused(f"nothing received for {self.settings.idle_timeout:g} s: closing the idle stream",
                           1008) from None
        if message["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(message.get("code", 1000))
        return message

    async def _start(self, websocket, authorized: bool) -> tuple[StreamingRecognizer, np.dtype]:
        """Read and check the start message; a recogniser for the stream it describes."""
        message = await self._receive(websocket)
        if message.get("text") is None:
            raise _Refused('the first message must be JSON text: {"type": "start", "sample_rate": ..., '
                           '"encoding": "pcm16" | "float32"}', 1008)
        values = _json_object(message["text"])
        if values.get("type") != "start":
            raise _Refused(f'the first message must have "type": "start", not {values.get("type")!r}', 1008)
        if not authorized and not self._authorized(_text(values.get("api_key"))):
            raise _Refused("missing or wrong API key (an Authorization: Bearer header, or \"api_key\" in the "
                           "start message)", 1008)
        unknown = sorted(set(values) - START_FIELDS)
        if unknown:
            raise _Refused(f"unknown field {unknown[0]!r} in the start message (known: "
                           f"{', '.join(sorted(START_FIELDS))})", 1007)
        rate = values.get("sample_rate")
        if type(rate) is not int or not 0 < rate <= MAX_SAMPLE_RATE:
            raise _Refused(f"sample_rate must be a whole number of Hz from 1 to {MAX_SAMPLE_RATE}, not {rate!r}", 1007)
        encoding = values.get("encoding", "pcm16")
        if encoding not in ENCODINGS:
            raise _Refused(f"encoding must be pcm16 or float32, not {encoding!r}", 1007)
        phrase = {}
        for name in PHRASE_FIELDS:
            if name in values:
                if type(values[name]) not in (int, float) or not math.isfinite(values[name]):
                    raise _Refused(f"{name} must be a number of seconds, not {values[name]!r}", 1007)
                phrase[name] = float(values[name])
        config = StreamingConfig(**phrase)
        try:
            config.validate()
        except ValueError as error:
            raise _Refused(str(error), 1007) from None
        decoder = self.decoder
        if "decoder" in values:
            if values["decoder"] not in ("greedy", "beam"):
                raise _Refused(f"decoder must be greedy or beam, not {values['decoder']!r}", 1007)
            if values["decoder"] == "greedy":
                decoder = None
            elif decoder is None:
                decoder = self._plain_beam()
        vad = copy.copy(self._vad)  # shares the ONNX session (thread-safe), not the recurrent state
        vad.reset()
        return StreamingRecognizer(self._live_model, config, rate, vad=vad, decoder=decoder), ENCODINGS[encoding]

    def _plain_beam(self):
        """A beam search without LM, lexicon or hotwords, for a stream that asks for one from a server
        that has none (as `wav2vec2 listen --decoder beam`); made once."""
        from .beam import BeamDecoder

        if self._beam is None:
            self._beam = BeamDecoder(self.model.vocab)
        return self._beam

    async def _stream(self, websocket, recognizer: StreamingRecognizer, dtype: np.dtype) -> None:
        """Two tasks: one reads messages (and notices a stop, bad data or an idle client at once),
        the other feeds the recogniser on a worker thread with all the audio that arrived meanwhile."""
        queue: asyncio.Queue[np.ndarray | None] = asyncio.Queue(QUEUED_MESSAGES)
        loop = asyncio.get_running_loop()

        async def read() -> None:
            while True:
                message = await self._receive(websocket)
                if message.get("bytes") is not None:
                    audio = _decode(message["bytes"], dtype)
                    if len(audio):
                        await queue.put(audio)
                    continue
                kind = _json_object(message.get("text") or "").get("type")
                if kind == "stop":
                    await queue.put(None)
                    return
                raise _Refused(f'unexpected message of type {kind!r}: send binary audio, or {{"type": "stop"}}',
                               1008)

        async def work() -> None:
            while True:
                items = [await queue.get()]
                while items[-1] is not None and not queue.empty():
                    items.append(queue.get_nowait())
                audio = [item for item in items if item is not None]
                if audio:
                    block = audio[0] if len(audio) == 1 else np.concatenate(audio)
                    await self._send(websocket, await loop.run_in_executor(self._stream_pool, recognizer.feed, block))
                if items[-1] is None:
                    await self._send(websocket, await loop.run_in_executor(self._stream_pool, recognizer.flush))
                    await websocket.close(1000)
                    return

        tasks = [asyncio.create_task(read()), asyncio.create_task(work())]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                if task.exception() is not None:
                    raise task.exception()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _send(self, websocket, events) -> None:
        for event in events:
            try:
                await asyncio.wait_for(websocket.send_text(json.dumps(event.to_dict(), ensure_ascii=False)),
                                       self.settings.idle_timeout)
            except asyncio.TimeoutError:
                raise _Refused("the client does not read its events: closing", 1008) from None


# ---------------------------------------------------------------------- helpers

def verbose_json(result: Transcription, language: str, granularities: list[str]) -> dict:
    """OpenAI's verbose_json: segments (the subtitle cues of `wav2vec2 transcribe --format srt`)
    unless only words are asked for, and words when asked for. Segment fields that describe
    Whisper's decoder get what is true here: no tokens, temperature 0, no no-speech estimate;
    `avg_logprob` is the mean log confidence of the segment's words."""
    body: dict = {"task": "transcribe", "language": language, "duration": round(result.duration, 3),
                  "text": result.text}
    if not granularities or "segment" in granularities:
        body["segments"] = []
        for number, cue in enumerate(cues(result.words)):
            text = " ".join(word.text for word in cue)
            data = text.encode()
            body["segments"].append({
                "id": number, "seek": 0, "start": cue[0].start, "end": cue[-1].end, "text": text, "tokens": [],
                "temperature": 0.0,
                "avg_logprob": round(sum(math.log(max(w.confidence, 1e-6)) for w in cue) / len(cue), 4),
                "compression_ratio": round(len(data) / len(zlib.compress(data)), 3), "no_speech_prob": 0.0})
    if "word" in granularities:
        body["words"] = [{"word": w.text, "start": w.start, "end": w.end, "probability": w.confidence}
                         for w in result.words]
    return body


def _error(status: int, message: str, param: str | None = None, code: str | None = None):
    """An error as OpenAI's API words it, so that its clients raise their usual exceptions."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}}, status)


def _bearer(headers) -> str | None:
    scheme, _, token = headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def _text(value) -> str | None:
    return value if isinstance(value, str) else None


def _limited(receive, limit: int):
    """The ASGI receive of a request, raising _TooLarge once the body passes `limit` bytes (for
    bodies sent without a Content-Length, or with a false one)."""
    received = 0

    async def wrapped() -> dict:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise _TooLarge
        return message

    return wrapped


def _size(count: int) -> str:
    return f"{count / 2**20:g} MiB"


def _json_object(text: str) -> dict:
    try:
        values = json.loads(text)
    except ValueError:
        raise _Refused(f"malformed JSON: {text[:80]!r}", 1007) from None
    if not isinstance(values, dict):
        raise _Refused(f"expected a JSON object, not {text[:80]!r}", 1007)
    return values


def _decode(data: bytes, dtype: np.dtype) -> np.ndarray:
    if len(data) % dtype.itemsize:
        name = "pcm16" if dtype.kind == "i" else "float32"
        raise _Refused(f"a {name} message must hold whole samples ({dtype.itemsize} bytes each), not "
                       f"{len(data)} bytes", 1007)
    audio = np.frombuffer(data, dtype)
    if dtype.kind == "f" and not np.isfinite(audio).all():
        raise _Refused("float32 audio contains NaN or infinite samples", 1007)
    return audio


async def _close_with_error(websocket, message: str, code: int) -> None:
    try:
        await websocket.send_json({"type": "error", "message": message})
        await websocket.close(code)
    except Exception:  # noqa: BLE001 (the client may be gone already: nothing left to do)
        pass


def bind(host: str, port: int) -> socket.socket:
    """A listening socket, bound before the model loads so that a taken port fails at once."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError as error:
        sock.close()
        raise Wav2Vec2Error(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
    return sock


def run(server: SpeechServer, sock: socket.socket) -> None:
    """Serve until Ctrl-C (or SIGTERM), then close the connections and stop the model thread."""
    config = uvicorn.Config(server.app, ws_max_size=server.settings.max_message, log_level="warning",
                            access_log=False, lifespan="off", timeout_graceful_shutdown=5)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:
        pass  # uvicorn raises Ctrl-C again once it has shut down gracefully: a normal end here
    finally:
        server.close()
        sock.close()
