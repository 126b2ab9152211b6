// The page of `wav2vec2 serve`: live captions from the microphone over the WebSocket /v1/listen,
// and files dropped on it through POST /v1/audio/transcriptions. Plain JavaScript, no build step.
//
// The microphone is captured by an AudioWorklet (worklet.js) at the audio context's rate and sent
// as pcm16; the server resamples it to 16 kHz. The context runs at the microphone's own rate where
// the browser says it, so that the browser does not resample either.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  socket: null, media: null, context: null, node: null,
  pending: [],       // pcm16 blocks captured before the socket opened
  entries: [],       // the transcript: {start, end, text, source}, times in seconds of the session
  offset: 0,         // where the current session starts on the transcript's clock
  clock: 0,          // the end of the transcript's clock so far
};

function setStatus(text, error = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", error);
}

function apiKey() {
  return $("key").hidden ? "" : $("key").value.trim();
}

function clock(seconds, separator = ".") {
  const ms = Math.round(seconds * 1000);
  const pad = (n, width = 2) => String(n).padStart(width, "0");
  return `${pad(Math.floor(ms / 3600000))}:${pad(Math.floor(ms / 60000) % 60)}:${pad(Math.floor(ms / 1000) % 60)}` +
         `${separator}${pad(ms % 1000, 3)}`;
}

function short(seconds) {  // m:ss.s for the page
  return `${Math.floor(seconds / 60)}:${(seconds % 60).toFixed(1).padStart(4, "0")}`;
}

// ---------------------------------------------------------------- the transcript

function addSource(name) {
  const item = document.createElement("li");
  item.className = "source";
  item.textContent = name;
  $("finals").append(item);
}

function addFinal(start, end, text, source) {
  if (!text) return;
  const entry = {start: state.offset + start, end: state.offset + end, text, source};
  state.entries.push(entry);
  state.clock = Math.max(state.clock, entry.end);
  const item = document.createElement("li");
  item.className = "final";
  item.dataset.start = start;
  item.dataset.end = end;
  item.dataset.source = source;
  const time = document.createElement("span");
  time.className = "time";
  time.textContent = `${short(start)}–${short(end)}`;
  const words = document.createElement("span");
  words.className = "text";
  words.textContent = text;
  item.append(time, words);
  $("finals").append(item);
  $("transcript").scrollTop = $("transcript").scrollHeight;
}

function asText() {
  return state.entries.map((e) => e.text).join("\n") + (state.entries.length ? "\n" : "");
}

function asSrt() {
  return state.entries.map((e, i) =>
    `${i + 1}\n${clock(e.start, ",")} --> ${clock(e.end, ",")}\n${e.text}\n`).join("\n");
}

function download(text, name, type) {
  const link = document.createElement("a");
  link.href = URL.createObjectURL(new Blob([text], {type}));
  link.download = name;
  link.click();
  setTimeout(() => URL.revokeObjectURL(link.href), 1000);
}

async function copyTranscript() {
  const text = asText();
  try {
    await navigator.clipboard.writeText(text);  // secure contexts only (https, localhost)
  } catch {
    const area = Object.assign(document.createElement("textarea"), {value: text});
    document.body.append(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }
  setStatus("Transcript copied");
}

// ---------------------------------------------------------------- microphones

async function listMicrophones() {
  if (!navigator.mediaDevices?.enumerateDevices) return;
  const select = $("microphone");
  const chosen = select.value;
  const devices = (await navigator.mediaDevices.enumerateDevices())
    .filter((d) => d.kind === "audioinput" && d.deviceId && d.deviceId !== "default");
  select.replaceChildren(new Option("Default microphone", ""));
  devices.forEach((d, i) => select.add(new Option(d.label || `Microphone ${i + 1}`, d.deviceId)));
  select.value = devices.some((d) => d.deviceId === chosen) ? chosen : "";
}

// pcm16 exactly as browsers turn int16 into float (x / 32768 below zero, x / 32767 above), so
// 16-bit audio passes through unchanged.
function toPcm16(samples) {
  const out = new Int16Array(samples.length);
  for (let i = 0; i < samples.length; i++) {
    const s = Math.max(-1, Math.min(1, samples[i]));
    out[i] = Math.round(s < 0 ? s * 32768 : s * 32767);
  }
  return out.buffer;
}

function showLevel(peak) {
  const db = 20 * Math.log10(Math.max(peak, 1e-6));
  $("level").style.width = `${Math.max(0, Math.min(100, (db + 60) / 60 * 100))}%`;
}

// ---------------------------------------------------------------- live

async function start() {
  if (!navigator.mediaDevices?.getUserMedia) {
    setStatus("This browser gives no microphone here (pages on other hosts need https)", true);
    return;
  }
  $("start").disabled = true;
  try {
    const device = $("microphone").value;
    state.media = await navigator.mediaDevices.getUserMedia({audio: {
      deviceId: device ? {exact: device} : undefined, channelCount: 1,
      echoCancellation: false, noiseSuppression: false, autoGainControl: false}});
    const rate = state.media.getAudioTracks()[0].getSettings().sampleRate;
    state.context = rate ? new AudioContext({sampleRate: rate}) : new AudioContext();
    await state.context.audioWorklet.addModule("worklet.js");
    state.node = new AudioWorkletNode(state.context, "capture",
      {processorOptions: {blockSize: Math.round(state.context.sampleRate / 10)}});
  } catch (error) {
    stopCapture();
    setStatus(`No microphone: ${error.message || error.name}`, true);
    $("start").disabled = false;
    return;
  }
  await listMicrophones();  // the labels are known once access is granted
  const sampleRate = state.context.sampleRate;
  state.offset = state.clock;
  state.pending = [];
  const url = new URL("v1/listen", location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  const socket = state.socket = new WebSocket(url);
  socket.binaryType = "arraybuffer";
  socket.onopen = () => {
    const start = {type: "start", sample_rate: sampleRate, encoding: "pcm16"};
    if (apiKey()) start.api_key = apiKey();
    socket.send(JSON.stringify(start));
    state.pending.forEach((block) => socket.send(block));
    state.pending = [];
  };
  socket.onmessage = (message) => receive(JSON.parse(message.data));
  socket.onclose = (event) => {
    if (state.socket === socket) stopCapture();
    $("partial").textContent = "";
    if (!$("status").classList.contains("error")) {
      setStatus(event.code === 1000 ? "Stopped" : `Disconnected (${event.code})`, event.code !== 1000);
    }
    state.socket = null;
    setButton(false);
  };
  state.node.port.onmessage = ({data}) => {
    showLevel(data.peak);
    const block = toPcm16(data.samples);
    if (socket.readyState === WebSocket.OPEN) socket.send(block);
    else if (socket.readyState === WebSocket.CONNECTING) state.pending.push(block);
  };
  state.context.createMediaStreamSource(state.media).connect(state.node);
  $("status").dataset.sampleRate = sampleRate;
  setStatus(`Connecting (${sampleRate} Hz)…`);
  addSource(`Microphone, ${new Date().toLocaleTimeString()}`);
  setButton(true);
}

function receive(event) {
  if (event.type === "ready") {
    setStatus(`Listening (${event.sample_rate} Hz)`);
  } else if (event.type === "partial") {
    $("partial").textContent = event.text;
  } else if (event.type === "final") {
    $("partial").textContent = "";
    addFinal(event.start, event.end, event.text, "microphone");
  } else if (event.type === "error") {
    setStatus(event.message, true);
  }
}

function stop() {
  // the server finishes the phrase in progress, sends its final and closes the socket
  if (state.socket?.readyState === WebSocket.OPEN) state.socket.send(JSON.stringify({type: "stop"}));
  else state.socket?.close();
  stopCapture();
  setStatus("Finishing…");
  $("start").disabled = true;
}

function stopCapture() {
  state.media?.getTracks().forEach((track) => track.stop());
  state.node?.disconnect();
  state.context?.close();
  state.media = state.context = state.node = null;
  showLevel(0);
}

function setButton(recording) {
  $("start").textContent = recording ? "Stop" : "Start";
  $("start").classList.toggle("recording", recording);
  $("start").disabled = false;
}

// ---------------------------------------------------------------- files

async function upload(file) {
  setStatus(`Transcribing ${file.name}…`);
  const form = new FormData();
  form.append("file", file);
  form.append("model", "wav2vec2");
  form.append("response_format", "verbose_json");
  const headers = apiKey() ? {Authorization: `Bearer ${apiKey()}`} : {};
  try {
    const response = await fetch("v1/audio/transcriptions", {method: "POST", headers, body: form});
    const body = await response.json();
    if (!response.ok) throw new Error(body.error?.message || response.statusText);
    state.offset = state.clock;
    addSource(file.name);
    body.segments.forEach((s) => addFinal(s.start, s.end, s.text, file.name));
    setStatus(`Transcribed ${file.name} (${body.duration.toFixed(1)} s)`);
  } catch (error) {
    setStatus(`${file.name}: ${error.message}`, true);
  }
}

// ---------------------------------------------------------------- wiring

async function init() {
  $("start").onclick = () => (state.socket ? stop() : start());
  $("copy").onclick = copyTranscript;
  $("download-txt").onclick = () => download(asText(), "transcript.txt", "text/plain");
  $("download-srt").onclick = () => download(asSrt(), "transcript.srt", "application/x-subrip");
  $("clear").onclick = () => {
    state.entries = [];
    state.clock = state.offset = 0;
    $("finals").replaceChildren();
  };
  const drop = $("drop");
  drop.ondragover = (event) => { event.preventDefault(); drop.classList.add("over"); };
  drop.ondragleave = () => drop.classList.remove("over");
  drop.ondrop = (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    [...event.dataTransfer.files].forEach(upload);
  };
  $("file").onchange = () => { [...$("file").files].forEach(upload); $("file").value = ""; };
  navigator.mediaDevices?.addEventListener?.("devicechange", listMicrophones);
  try {
    const health = await (await fetch("health")).json();
    $("model").textContent = health.model;
    $("key").hidden = !health.auth_required;
    await listMicrophones();
    setStatus("Ready");
    $("start").disabled = false;
  } catch (error) {
    setStatus(`The server does not answer: ${error.message}`, true);
  }
}

init();
