// What the pages share: a spectrogram image painted on a canvas, a recording from the
// microphone converted to WAV in the browser (the server needs no decoder for the browser's
// own format, WebM/Opus in Chromium). No build step, no libraries.
"use strict";

// viridis at 5 stops, interpolated
const STOPS = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
function colour(v) {
  const x = (v / 255) * (STOPS.length - 1);
  const i = Math.min(Math.floor(x), STOPS.length - 2);
  const t = x - i;
  return STOPS[i].map((c, k) => Math.round(c + t * (STOPS[i + 1][k] - c)));
}

// An 8-bit image {n_mels, frames, pixels (base64, row 0 the lowest band)} painted on a canvas.
function paintLogmel(canvas, image) {
  const bytes = Uint8Array.from(atob(image.pixels), (c) => c.charCodeAt(0));
  canvas.width = image.frames;
  canvas.height = image.n_mels;
  const context = canvas.getContext("2d");
  const data = context.createImageData(image.frames, image.n_mels);
  for (let m = 0; m < image.n_mels; m++) {
    const row = image.n_mels - 1 - m; // low frequencies at the bottom
    for (let f = 0; f < image.frames; f++) {
      const [r, g, b] = colour(bytes[m * image.frames + f]);
      const o = 4 * (row * image.frames + f);
      data.data[o] = r; data.data[o + 1] = g; data.data[o + 2] = b; data.data[o + 3] = 255;
    }
  }
  context.putImageData(data, 0, 0);
}

function encodeWav(samples, rate) {
  const buffer = new ArrayBuffer(44 + 2 * samples.length);
  const view = new DataView(buffer);
  const text = (offset, s) => { for (let i = 0; i < s.length; i++) view.setUint8(offset + i, s.charCodeAt(i)); };
  text(0, "RIFF"); view.setUint32(4, 36 + 2 * samples.length, true); text(8, "WAVE");
  text(12, "fmt "); view.setUint32(16, 16, true); view.setUint16(20, 1, true);
  view.setUint16(22, 1, true); view.setUint32(24, rate, true); view.setUint32(28, 2 * rate, true);
  view.setUint16(32, 2, true); view.setUint16(34, 16, true);
  text(36, "data"); view.setUint32(40, 2 * samples.length, true);
  for (let i = 0; i < samples.length; i++) {
    const s = Math.max(-1, Math.min(1, samples[i]));
    view.setInt16(44 + 2 * i, s < 0 ? s * 0x8000 : s * 0x7fff, true);
  }
  return new Blob([buffer], { type: "audio/wav" });
}

function mono(audio) {
  const out = new Float32Array(audio.length);
  for (let c = 0; c < audio.numberOfChannels; c++) {
    const data = audio.getChannelData(c);
    for (let i = 0; i < data.length; i++) out[i] += data[i] / audio.numberOfChannels;
  }
  return out;
}

// A button that records from the microphone while pressed on, then hands the recording over
// as a WAV blob: onWav(blob); say(text, isError) tells the user what happens.
function recordingButton(button, idleText, onWav, say) {
  let recorder = null;
  button.addEventListener("click", async () => {
    if (recorder) { recorder.stop(); return; }
    if (!navigator.mediaDevices || !window.MediaRecorder) {
      say("This browser cannot record (it needs a secure page: https or localhost).", true);
      return;
    }
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    } catch (err) {
      say(`No microphone: ${err.message}`, true);
      return;
    }
    const chunks = [];
    recorder = new MediaRecorder(stream);
    recorder.ondataavailable = (event) => chunks.push(event.data);
    recorder.onstop = async () => {
      stream.getTracks().forEach((track) => track.stop());
      recorder = null;
      button.classList.remove("recording");
      button.textContent = idleText;
      try {
        const context = new AudioContext();
        const audio = await context.decodeAudioData(await new Blob(chunks).arrayBuffer());
        await context.close();
        await onWav(encodeWav(mono(audio), audio.sampleRate));
      } catch (err) {
        say(`Could not convert the recording: ${err.message}`, true);
      }
    };
    recorder.start();
    button.classList.add("recording");
    button.textContent = "■ Stop";
    say("Recording…");
  });
}
