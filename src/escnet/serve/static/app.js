// The escnet page: send a file (or a microphone recording, converted to WAV here) to
// POST /v1/classify and draw what comes back. No build step, no libraries.
"use strict";

const $ = (id) => document.getElementById(id);
const TIMELINE_ROWS = 300; // rows listed in the table; the strip shows every window

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

async function loadModelInfo() {
  try {
    const response = await fetch("/v1/model");
    const info = await response.json();
    if (!response.ok) throw new Error(info.error || response.statusText);
    const accuracy = info.held_out_accuracy === null ? "" :
      `, ${(100 * info.held_out_accuracy).toFixed(1)} % on held-out clips`;
    const unknown = info.unknown_threshold === null ?
      " Uncalibrated: it always answers one of its classes." :
      ` Answers "unknown" for sounds unlike all of them${info.tag_names.length ?
        ", with what AudioSet hears in them" : ""}.`;
    $("model-info").textContent = `Model ${info.model} (${info.precision}): ${info.classes.length} ` +
      `classes, ${info.sample_rate} Hz, ${info.clip_seconds} s clips${accuracy}.${unknown}`;
    $("limits").textContent = `up to ${info.limits.max_upload_mb} MB and ` +
      `${info.limits.max_seconds / 60} minutes`;
  } catch (err) {
    $("model-info").textContent = `The model is not available: ${err.message}`;
  }
}

async function classify(blob, name) {
  setStatus(`Classifying ${name}…`);
  $("result").hidden = true;
  let response, body;
  try {
    response = await fetch("/v1/classify?timeline=true&logmel=true&top_k=5", {
      method: "POST",
      headers: { "Content-Type": blob.type || "application/octet-stream" },
      body: blob,
    });
    body = await response.json();
  } catch (err) {
    setStatus(`Could not reach the server: ${err.message}`, true);
    return;
  }
  if (!response.ok) {
    setStatus(`${response.status}: ${body.error || response.statusText}`, true);
    return;
  }
  setStatus(`Done in ${body.elapsed_ms} ms.`);
  show(body, name);
}

function show(result, name) {
  $("result").hidden = false;
  $("result-title").textContent = name;
  const answer = $("answer");
  answer.className = result.label === "unknown" ? "unknown" : "";
  if (result.label === "unknown") {
    const heard = (result.sounds_like || []).map(
      ({ label, probability }) => `“${label}” ${probability.toFixed(2)}`).join(", ");
    answer.textContent = `Unknown: none of the model's classes${heard ? ` — sounds like ${heard}` : ""}. ` +
      "Its best guesses:";
  } else {
    answer.textContent = result.label === null ? "" : `Answer: ${result.label}`;
  }
  $("summary").textContent = `${result.duration.toFixed(2)} s at ${result.sample_rate} Hz, ` +
    `${result.channels} channel(s); ${result.windows} window(s) scored, loudest ` +
    `${result.level_db.toFixed(1)} dBFS.`;
  const notes = $("notes");
  notes.replaceChildren(...result.notes.map((text) => {
    const li = document.createElement("li");
    li.textContent = text;
    return li;
  }));
  const bars = $("bars");
  bars.replaceChildren(...result.top.map(({ label, probability }) => {
    const li = document.createElement("li");
    li.className = "bar";
    li.dataset.label = label;
    const fill = document.createElement("div");
    fill.className = "fill";
    fill.style.width = `${(100 * probability).toFixed(1)}%`;
    const text = document.createElement("span");
    text.className = "label";
    text.textContent = label;
    const prob = document.createElement("span");
    prob.className = "prob";
    prob.textContent = `${(100 * probability).toFixed(1)} %`;
    li.append(fill, text, prob);
    return li;
  }));
  if (result.silent) {
    const li = document.createElement("li");
    li.textContent = "Silence: no class.";
    bars.append(li);
  }
  drawLogmel(result.logmel);
  drawTimeline(result.timeline || [], result.duration);
}

function drawLogmel(image) {
  const canvas = $("logmel");
  if (!image) {
    canvas.width = canvas.height = 1;
    $("logmel-caption").textContent = "(not in this model file)";
    return;
  }
  paintLogmel(canvas, image);
  $("logmel-caption").textContent =
    `(first window, ${image.n_mels} mel bands, ${image.db_min.toFixed(0)} to ${image.db_max.toFixed(0)} dB)`;
}

function labelColour(label) {
  let h = 0;
  for (const c of label) h = (h * 31 + c.charCodeAt(0)) % 360;
  return `hsl(${h}, 60%, 75%)`;
}

function drawTimeline(rows, duration) {
  $("timeline-section").hidden = rows.length < 2;
  const strip = $("timeline-strip");
  const body = $("timeline-table").tBodies[0];
  strip.replaceChildren();
  body.replaceChildren();
  if (rows.length < 2) return;
  // each window drawn from its start to the next window's start (the last to its end)
  rows.forEach((row, i) => {
    const end = i + 1 < rows.length ? rows[i + 1].start : row.end;
    const div = document.createElement("div");
    div.style.left = `${(100 * row.start) / duration}%`;
    div.style.width = `${(100 * (end - row.start)) / duration}%`;
    div.style.background = row.label === "unknown" ? "repeating-linear-gradient(45deg, #ddd 0 6px, #f4f4f4 6px 12px)"
      : row.label ? labelColour(row.label) : "#ccc";
    div.title = row.label === "unknown" ? `${row.start}–${row.end} s: unknown (best guess ${row.guess})`
      : row.label ? `${row.start}–${row.end} s: ${row.label} ` +
      `${(100 * row.probability).toFixed(0)} %` : `${row.start}–${row.end} s: silence`;
    div.textContent = row.label || "";
    strip.append(div);
  });
  for (const row of rows.slice(0, TIMELINE_ROWS)) {
    const tr = document.createElement("tr");
    const label = row.label === "unknown" ? `unknown (best guess ${row.guess})` : row.label;
    for (const value of [row.start.toFixed(2), row.end.toFixed(2), label || "(silence)",
                         row.label ? `${(100 * row.probability).toFixed(1)} %` : ""]) {
      const td = document.createElement("td");
      td.textContent = value;
      tr.append(td);
    }
    body.append(tr);
  }
}

// Live mode: the microphone through an AudioWorklet to ws /v1/stream (float32 PCM at the
// AudioContext's rate); per-hop scores scroll in a strip, events are listed as they start and end.
const live = { socket: null, context: null, stream: null, scores: [], rows: new Map(), frames: false, rate: 0 };
const STRIP_SECONDS = 20;
const COLORS = ["#2f6fdf", "#d9822b", "#2a8a3e", "#b03a8a", "#7a5cc7", "#c23b22", "#1a8a8a"];

function colorOf(label) {
  let h = 0;
  for (const c of label) h = (h * 31 + c.charCodeAt(0)) >>> 0;
  return COLORS[h % COLORS.length];
}

function drawStrip() {
  const canvas = $("live-strip");
  const g = canvas.getContext("2d");
  g.clearRect(0, 0, canvas.width, canvas.height);
  const last = live.scores.length ? live.scores[live.scores.length - 1].time : 0;
  const x = (t) => canvas.width * (1 - (last - t) / STRIP_SECONDS);
  const top = canvas.height - 14;
  const bar = (time, offset, p, color) => {
    g.fillStyle = color;
    g.fillRect(x(time) - 3 + offset, top - p * (top - 4), 3, p * (top - 4));
  };
  for (const s of live.scores) {
    if (live.frames) {  // a frame model: a bar for each class its frames hear, side by side
      s.heard.forEach((h, k) => bar(s.time, 3 * k, h.probability, colorOf(h.label)));
    } else if (s.top.length) {  // a clip model: the best class's probability
      bar(s.time, 0, s.top[0].probability, s.label === "unknown" ? "#bbb" : colorOf(s.top[0].label));
    }
  }
  g.fillStyle = "#666";
  g.font = "11px system-ui";
  for (let t = Math.ceil(last - STRIP_SECONDS); t <= last; t += 5) {
    if (t >= 0) g.fillText(`${t} s`, x(t) + 2, canvas.height - 2);
  }
}

function onLiveMessage(message) {
  if (message.type === "ready") {
    live.frames = message.frame_model;
    $("live-caption").textContent = `(microphone at ${live.rate} Hz; bars: ${live.frames ?
      "each class the frames hear, per hop" : "best class per hop, grey: unknown"})`;
  } else if (message.type === "scores") {
    live.scores.push(message);
    while (live.scores.length && live.scores[0].time < message.time - STRIP_SECONDS) live.scores.shift();
    const heard = message.heard.map((h) => `${h.label} ${h.probability.toFixed(2)}`).join(" + ");
    const now = live.frames ? heard || "nothing" : message.label === null ? "silence" :
      message.label === "unknown" ? `unknown (best guess ${message.top[0].label})` :
      `${message.label} ${message.top[0].probability.toFixed(2)}`;
    $("live-now").textContent = `${message.time.toFixed(2)} s: ${now}`;
    drawStrip();
  } else if (message.type === "event") {
    const key = `${message.label}@${message.start}`;
    let row = live.rows.get(key);
    if (!row) {
      row = document.createElement("tr");
      row.dataset.label = message.label;
      $("events-table").tBodies[0].prepend(row);
      live.rows.set(key, row);
    }
    row.className = message.state === "start" ? "open" : "ended";
    row.dataset.state = message.state;
    const cells = [message.label, message.start.toFixed(2),
                   message.state === "end" ? message.time.toFixed(2) : "…", message.confidence.toFixed(2)];
    row.replaceChildren(...cells.map((text) => {
      const td = document.createElement("td");
      td.textContent = text;
      return td;
    }));
  } else if (message.type === "error") {
    setStatus(`Live stream closed (${message.code}): ${message.error}`, true);
  }
}

async function stopLive() {
  const { socket, context, stream } = live;
  live.socket = live.context = live.stream = null;
  if (stream) stream.getTracks().forEach((track) => track.stop());
  if (context) await context.close();
  if (socket && socket.readyState === WebSocket.OPEN) socket.send("end"); // the server ends open events
  $("live").classList.remove("live");
  $("live").textContent = "◉ Live: follow the microphone";
}

async function startLive() {
  try {
    // the sound as it is: no echo cancelling, noise suppression or gain riding before the model
    live.stream = await navigator.mediaDevices.getUserMedia({ audio: {
      echoCancellation: false, noiseSuppression: false, autoGainControl: false } });
  } catch (err) {
    setStatus(`No microphone: ${err.message}`, true);
    return;
  }
  live.context = new AudioContext();
  await live.context.audioWorklet.addModule("/static/live-worklet.js");
  const rate = live.rate = live.context.sampleRate;
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const socket = new WebSocket(`${scheme}://${location.host}/v1/stream?sample_rate=${rate}&format=f32`);
  socket.binaryType = "arraybuffer";
  socket.onmessage = (event) => onLiveMessage(JSON.parse(event.data));
  socket.onclose = (event) => {
    if (live.socket === socket) stopLive();
    if (event.code !== 1000 && event.code !== 1005) setStatus(`Live stream closed: ${event.reason || event.code}`, true);
  };
  live.socket = socket;
  live.scores = [];
  live.rows.clear();
  $("events-table").tBodies[0].replaceChildren();
  $("live-section").hidden = false;
  const node = new AudioWorkletNode(live.context, "escnet-capture");
  node.port.onmessage = (event) => {
    if (socket.readyState === WebSocket.OPEN) socket.send(event.data.buffer);
  };
  live.context.createMediaStreamSource(live.stream).connect(node);
  $("live").classList.add("live");
  $("live").textContent = "■ Stop live";
  setStatus("Live: listening…");
}

function setUp() {
  const drop = $("drop");
  $("file").addEventListener("change", () => {
    const file = $("file").files[0];
    if (file) classify(file, file.name);
    $("file").value = "";
  });
  drop.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") $("file").click();
  });
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (event) => { event.preventDefault(); drop.classList.add("over"); });
  }
  for (const type of ["dragleave", "drop"]) {
    drop.addEventListener(type, () => drop.classList.remove("over"));
  }
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    const file = event.dataTransfer.files[0];
    if (file) classify(file, file.name);
  });
  recordingButton($("record"), "● Record from the microphone",
                  (wav) => classify(wav, "microphone recording"), setStatus);
  $("live").addEventListener("click", () => (live.socket ? stopLive() : startLive()));
  loadModelInfo();
}

setUp();
