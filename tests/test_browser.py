"""The page of `wav2vec2 serve` in headless Chromium, whose fake microphone plays a speech file.

Chromium is driven through chromedriver's W3C endpoint with plain urllib (no selenium). The test
presses Start, waits for the finals, presses Stop, and drops the file on the page. The oracle is
the offline transcription: of the file, for the dropped file; for the microphone, of the stretch
that each final covers in the audio the page sent. The test records that audio and checks that it
is the file's own samples (at 44.1 kHz, Chromium's rate, nothing is resampled on the way) from
wherever Chromium's fake microphone started in it, but for the 10 ms buffers that Chromium drops
or repeats when the machine is busy.

The model is the shipped demo model when the package has it, else the random "talker" model of
test_listen. A screenshot of the page is kept (its path is printed; WAV2VEC2_PAGE_SCREENSHOT=PATH
puts it there instead, as docs/server-page.png for the README).
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import soundfile
import soxr

import wav2vec2
from wav2vec2.streaming import Event, StreamingConfig
from wav2vec2.transcribe import transcribe

from .test_listen import talker  # noqa: F401 (fixture)
from .test_server import Server
from .test_streaming import RATE, need, offline, one_thread, speech  # noqa: F401 (fixtures)

BROWSER_RATE = 44100  # the rate of Chromium's fake microphone
DEMO = Path(wav2vec2.__file__).parent / "demo" / "config.json"

# Records every binary message the page sends, before the page's own code runs.
RECORD_SENT = """
window.sentAudio = [];
const send = WebSocket.prototype.send;
WebSocket.prototype.send = function (data) {
  if (data instanceof ArrayBuffer) window.sentAudio.push(new Uint8Array(data.slice(0)));
  return send.call(this, data);
};
"""
SENT_AS_BASE64 = """
let binary = "";
for (const block of window.sentAudio) for (let i = 0; i < block.length; i += 8192)
  binary += String.fromCharCode.apply(null, block.subarray(i, i + 8192));
return btoa(binary);
"""
FINALS = """
return [...document.querySelectorAll("#finals li.final")].map((item) => ({
  start: Number(item.dataset.start), end: Number(item.dataset.end), source: item.dataset.source,
  text: item.querySelector(".text").textContent}));
"""


def unchanged_fraction(sent: np.ndarray, played: np.ndarray, offset: int, buffer: int = BROWSER_RATE // 100) -> float:
    """The fraction of the sent 10 ms blocks that hold sound and are found, sample for sample, in the
    file played, where `sent[0]` is `played[offset]`. On a busy machine Chromium's fake microphone
    drops or repeats a whole 10 ms buffer now and then, which shifts what follows by one buffer:
    so each block is looked for a few buffers either side as well."""
    shift, found, total = 0, 0, 0
    candidates = sorted(range(-5, 6), key=abs)
    for start in range(0, len(sent) - buffer + 1, buffer):
        block = sent[start:start + buffer]
        if not block.any():
            continue
        total += 1
        for step in candidates:
            at = offset + start + shift + step * buffer
            if 0 <= at and np.array_equal(played[at:at + buffer], block):
                shift += step * buffer
                found += 1
                break
    return found / max(total, 1)


class Browser:
    """Headless Chromium under chromedriver, spoken to in the W3C WebDriver protocol."""

    def __init__(self, microphone: Path, profile: Path):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.base = f"http://127.0.0.1:{port}"
        self.driver = subprocess.Popen(["chromedriver", f"--port={port}"], stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            try:
                self.call("GET", "/status")
                break
            except OSError:
                assert time.monotonic() < deadline, "chromedriver did not start"
                time.sleep(0.1)
        arguments = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     f"--user-data-dir={profile}", "--window-size=1000,760", "--use-fake-ui-for-media-stream",
                     "--use-fake-device-for-media-stream", f"--use-file-for-fake-audio-capture={microphone}%noloop",
                     "--autoplay-policy=no-user-gesture-required"]
        options = {"args": arguments}
        for name in ("chromium", "chromium-browser"):
            if Path(f"/usr/bin/{name}").exists():
                options["binary"] = f"/usr/bin/{name}"
        capabilities = {"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": options}}}
        self.session = f"/session/{self.call('POST', '/session', capabilities)['sessionId']}"

    def call(self, method: str, path: str, body: dict | None = None):
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as response:
            return json.loads(response.read())["value"]

    def run(self, script: str, *args):
        return self.call("POST", f"{self.session}/execute/sync", {"script": script, "args": list(args)})

    def open(self, url: str) -> None:
        self.call("POST", f"{self.session}/url", {"url": url})

    def before_page_scripts(self, script: str) -> None:
        """Run `script` in every new document before its own (Chrome DevTools, through chromedriver)."""
        self.call("POST", f"{self.session}/goog/cdp/execute",
                  {"cmd": "Page.addScriptToEvaluateOnNewDocument", "params": {"source": script}})

    def choose_file(self, css: str, path: Path) -> None:
        element = self.call("POST", f"{self.session}/element", {"using": "css selector", "value": css})
        element_id = next(iter(element.values()))
        self.call("POST", f"{self.session}/element/{element_id}/value", {"text": str(path)})

    def screenshot(self, path: Path) -> None:
        path.write_bytes(base64.b64decode(self.call("GET", f"{self.session}/screenshot")))

    def wait(self, script: str, timeout: float = 60.0, message: str = ""):
        deadline = time.monotonic() + timeout
        while not (value := self.run(script)):
            assert time.monotonic() < deadline, f"timed out waiting for {message or script}"
            time.sleep(0.2)
        return value

    def quit(self) -> None:
        try:
            self.call("DELETE", self.session)
        finally:
            self.driver.terminate()
            self.driver.wait(30)


@pytest.fixture(scope="module")
def browser_model(request) -> str:
    """The demo model when it ships, else the talker model."""
    return "demo" if DEMO.exists() else str(request.getfixturevalue("talker"))


@pytest.mark.slow
def test_the_page_transcribes_the_microphone_and_a_dropped_file(browser_model, speech, tmp_path):
    need("chromium")
    need("chromedriver")
    model = wav2vec2.load_model(browser_model)
    # the speech, then enough silence for the last pause, at the fake microphone's own rate in 16 bits
    path = tmp_path / "speech.wav"
    samples = soxr.resample(np.concatenate([speech.audio, np.zeros(2 * RATE, np.float32)]), RATE, BROWSER_RATE)
    soundfile.write(str(path), samples, BROWSER_RATE, subtype="PCM_16")
    played = soundfile.read(str(path), dtype="int16")[0]

    server = Server(browser_model)
    browser = Browser(path, Path(tempfile.mkdtemp(dir=tmp_path)))
    try:
        browser.before_page_scripts(RECORD_SENT)
        browser.open(f"{server.url}/")
        browser.wait("return !document.getElementById('start').disabled", message="the page to be ready")
        assert browser.run("return document.getElementById('model').textContent") == browser_model
        browser.run("document.getElementById('start').click()")
        browser.wait("return document.getElementById('status').textContent.startsWith('Listening')")
        assert browser.run("return Number(document.getElementById('status').dataset.sampleRate)") == BROWSER_RATE
        count = len(speech.spans)
        browser.wait(f"return document.querySelectorAll('#finals li.final').length >= {count}",
                     timeout=len(samples) / BROWSER_RATE + 60, message=f"{count} finals")
        browser.run("document.getElementById('start').click()")  # Stop
        browser.wait("return document.getElementById('status').textContent === 'Stopped'")
        finals = browser.run(FINALS)
        sent = np.frombuffer(base64.b64decode(browser.run(SENT_AS_BASE64)), "<i2")
        page_text = browser.run("return asText()")
        page_srt = browser.run("return asSrt()")

        browser.choose_file("#file", path)  # the file, through POST /v1/audio/transcriptions
        browser.wait("return document.getElementById('status').textContent.startsWith('Transcribed')")
        dropped = [f["text"] for f in browser.run(FINALS) if f["source"] == path.name]
        screenshot = Path(os.environ.get("WAV2VEC2_PAGE_SCREENSHOT") or tmp_path / "page.png")  # docs: the README's
        browser.screenshot(screenshot)
        print(f"screenshot of the page: {screenshot}")
    finally:
        browser.quit()
        server.stop()

    # what the page sent is the file's samples from some offset, untouched (a negative offset: the
    # fake microphone gave some silence before the file began)
    probe = sent[BROWSER_RATE:2 * BROWSER_RATE].astype(np.float64)  # one second, in the first phrase
    scores = np.correlate(played[:3 * BROWSER_RATE].astype(np.float64), probe, mode="valid")
    offset = int(np.argmax(scores)) - BROWSER_RATE
    assert abs(offset) < BROWSER_RATE // 2
    assert unchanged_fraction(sent, played, offset) > 0.9
    assert len(sent) + offset > speech.spans[-1][1] * BROWSER_RATE / RATE  # up to the end of the speech

    # each final is the offline transcription of its stretch of the file
    heard = soxr.resample(sent.astype(np.float32) / 32768, BROWSER_RATE, RATE, quality="HQ").astype(np.float32)
    assert len(finals) == len(speech.spans) and all(f["source"] == "microphone" for f in finals)
    for final in finals:
        expected = offline(model, heard, Event("final", final["text"], final["start"], final["end"]),
                           StreamingConfig())
        assert final["text"] == expected.text
    assert page_text == "".join(f"{f['text']}\n" for f in finals)
    assert page_srt.count(" --> ") == len(finals) and all(f["text"] in page_srt for f in finals)

    # the dropped file: the text of `wav2vec2 transcribe`, in segments
    assert " ".join(dropped) == transcribe(model, path).text
