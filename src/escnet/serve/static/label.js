// The labelling page: search an archive by example, listen, label with the keyboard, learn a
// classifier and label what it ranks next. Talks to /v1/archive (escnet serve --db ARCHIVE).
"use strict";

const $ = (id) => document.getElementById(id);
const state = { rows: [], focus: 0 };

function say(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

async function call(path, options = {}) {
  const response = await fetch(path, options);
  const type = response.headers.get("content-type") || "";
  const body = type.includes("json") ? await response.json() : await response.blob();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

const post = (path, data) => call(path, { method: "POST", headers: { "Content-Type": "application/json" },
                                          body: JSON.stringify(data) });

function label() { return $("label").value.trim(); }

function showSummary(s) {
  $("archive-info").textContent = `${s.files} recordings (${s.hours.toFixed(2)} h, ${s.windows} windows of ` +
    `${s.window} s) indexed with ${s.model}.`;
  const mine = s.labels[label()];
  $("counts").textContent = mine ? `${label()}: ${mine.positive} yes · ${mine.negative} no · ` +
    `${mine.uncertain} unsure` : "no labels of this sound yet";
  const estimate = s.estimates && s.estimates[label()];
  $("estimate").textContent = estimate ? `Estimated precision ${estimate.precision === null ? "–" :
    (100 * estimate.precision).toFixed(0) + " %"}, recall ${(100 * estimate.recall).toFixed(0)} % ` +
    "(cross-validated by recording; the random unlabelled windows learned from count as not the sound)." : "";
}

async function refresh() {
  try { showSummary(await call("/v1/archive")); } catch (err) { say(err.message, true); }
}

function row(hit, index) {
  const li = document.createElement("li");
  li.className = "result";
  li.tabIndex = 0;
  li.dataset.id = hit.id;
  li.dataset.file = hit.file;
  li.dataset.start = hit.start;
  const canvas = document.createElement("canvas");
  canvas.className = "thumb";
  const play = document.createElement("button");
  play.type = "button";
  play.textContent = "▶";
  play.title = "play the window with a second either side";
  const audio = document.createElement("audio");
  audio.preload = "none";
  audio.src = `/v1/archive/windows/${hit.id}/audio`;
  play.addEventListener("click", () => { audio.currentTime = 0; audio.play(); });
  const text = document.createElement("span");
  text.className = "what";
  text.textContent = `${hit.file} · ${hit.start.toFixed(1)}–${hit.end.toFixed(1)} s · ` +
    (hit.score === undefined ? "" : `score ${hit.score.toFixed(3)}`);
  const like = document.createElement("button");
  like.type = "button";
  like.textContent = "like this";
  like.addEventListener("click", () => searchLike(hit.id));
  const verdict = document.createElement("span");
  verdict.className = "verdict";
  li.append(canvas, play, audio, text, like, verdict);
  li.addEventListener("focus", () => { state.focus = index; });
  call(`/v1/archive/windows/${hit.id}/spectrogram`).then((image) => paintLogmel(canvas, image))
    .catch(() => canvas.classList.add("missing"));
  return li;
}

function show(hits, title) {
  $("results-section").hidden = false;
  $("results-title").textContent = title;
  state.rows = hits.map(row);
  state.focus = 0;
  $("results").replaceChildren(...state.rows);
  if (state.rows.length) state.rows[0].focus();
  say(hits.length ? `${hits.length} windows.` : "Nothing found.");
}

async function searchUpload(blob, name) {
  say(`Searching for ${name}…`);
  try {
    show(await call("/v1/archive/search?top=10", { method: "POST",
      headers: { "Content-Type": blob.type || "application/octet-stream" }, body: blob }),
         `Nearest to ${name}`);
  } catch (err) { say(err.message, true); }
}

async function searchLike(id) {
  say(`Searching like window ${id}…`);
  try { show(await call(`/v1/archive/search?like=${id}&top=10`), `Nearest to window ${id}`); }
  catch (err) { say(err.message, true); }
}

function move(step) {
  const next = Math.max(0, Math.min(state.rows.length - 1, state.focus + step));
  if (state.rows[next]) state.rows[next].focus();
}

async function mark(kind) {
  const li = state.rows[state.focus];
  if (!li) return;
  if (!label()) { say("Name the sound first (the box at the top).", true); $("label").focus(); return; }
  try {
    const done = await post("/v1/archive/labels", { ids: [Number(li.dataset.id)], label: label(), kind });
    li.dataset.verdict = kind;
    li.querySelector(".verdict").textContent = { positive: "✓ yes", negative: "✗ no", uncertain: "? unsure" }[kind];
    showSummary(done.summary);
    move(1);
  } catch (err) { say(err.message, true); }
}

async function undo() {
  try {
    const done = await post("/v1/archive/undo", {});
    for (const u of done.undone) {  // a label made here spans its window exactly
      const li = state.rows.find((r) => r.dataset.file === u.file && Math.abs(r.dataset.start - u.start) < 1e-3);
      if (li) { delete li.dataset.verdict; li.querySelector(".verdict").textContent = ""; li.focus(); }
    }
    showSummary(done.summary);
    say(`Undid ${done.undone.length} label(s).`);
  } catch (err) { say(err.message, true); }
}

async function learnAndRank() {
  if (!label()) { say("Name the sound first.", true); return; }
  say(`Learning ${label()}…`);
  try {
    const done = await post("/v1/archive/learn", { label: label(), top: 10 });
    showSummary(done.summary);
    show(done.rank, `Next to label for ${label()} (the classifier's best and least sure)`);
  } catch (err) { say(err.message, true); }
}

function setUp() {
  $("file").addEventListener("change", () => {
    const file = $("file").files[0];
    if (file) searchUpload(file, file.name);
    $("file").value = "";
  });
  const drop = $("drop");
  drop.addEventListener("keydown", (event) => { if (event.key === "Enter") $("file").click(); });
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (event) => { event.preventDefault(); drop.classList.add("over"); });
  }
  for (const type of ["dragleave", "drop"]) drop.addEventListener(type, () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    const file = event.dataTransfer.files[0];
    if (file) searchUpload(file, file.name);
  });
  recordingButton($("record"), "● Record an example", (wav) => searchUpload(wav, "the recording"), say);
  $("learn").addEventListener("click", learnAndRank);
  $("label").addEventListener("change", refresh);
  document.addEventListener("keydown", (event) => {
    if (event.target.tagName === "INPUT" || event.ctrlKey || event.metaKey || event.altKey) return;
    const keys = { y: () => mark("positive"), n: () => mark("negative"), u: () => mark("uncertain"),
                   s: () => move(1), z: undo, ArrowDown: () => move(1), ArrowUp: () => move(-1),
                   " ": () => state.rows[state.focus]?.querySelector("button").click() };
    if (keys[event.key]) { event.preventDefault(); keys[event.key](); }
  });
  refresh();
}

setUp();
