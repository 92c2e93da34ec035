// The web page: upload a photo and a video to POST /animate and follow the job, or animate the
// photo live from the webcam over WebSocket /live. Plain JavaScript, no build step.
"use strict";

const $ = (id) => document.getElementById(id);
const POLL_MS = 500;
const MAX_IN_FLIGHT = 2; // frames sent and not yet answered; the server drops older ones anyway
const SEND_INTERVAL_MS = 1000 / 30;

function apiKey() {
  return $("api-key").value.trim();
}

function authHeaders() {
  const key = apiKey();
  return key ? { "X-API-Key": key } : {};
}

async function errorMessage(response) {
  try {
    const body = await response.json();
    return `${body.error.message} (${body.error.code})`;
  } catch {
    return `the server answered ${response.status}`;
  }
}

function show(element, text) {
  element.textContent = text;
  element.hidden = !text;
}

// Tabs

function selectTab(name) {
  for (const tab of ["upload", "live"]) {
    $(`tab-${tab}`).setAttribute("aria-selected", String(tab === name));
    $(`panel-${tab}`).hidden = tab !== name;
  }
}

// Models

const MODE_NAMES = { relative: "follow the motion", absolute: "copy the pose", avd: "motion only (AVD)" };
let models = [];

async function loadModels() {
  const select = $("model");
  try {
    const response = await fetch("/models", { headers: authHeaders() });
    if (!response.ok) throw new Error(await errorMessage(response));
    const list = await response.json();
    models = list.models;
    select.replaceChildren(
      ...models.map((model) => new Option(`${model.name} (${model.family}, ${model.frame_size.join("×")})`, model.name))
    );
    if (models.some((model) => model.name === list.default)) select.value = list.default;
  } catch (error) {
    models = [];
    select.replaceChildren(new Option("default", ""));
  }
  showModelOptions();
}

// What the chosen model can do: its modes (the default first), background motion and motion options.
function showModelOptions() {
  const model = chosenModel();
  const modes = model ? model.modes : ["relative", "absolute"];
  $("upload-mode").replaceChildren(...modes.map((mode) => new Option(MODE_NAMES[mode] || mode, mode)));
  $("upload-background-label").hidden = !(model && model.background_motion);
  if ($("upload-background-label").hidden) $("upload-background").checked = false;
  for (const label of motionOptionLabels()) {
    label.hidden = !(model && model.options.includes(label.dataset.option));
  }
  suggestPasteBack();
}

// The motion options some models offer (GET /models lists them per model): one labelled control each.
function motionOptionLabels() {
  return document.querySelectorAll("label[data-option]");
}

function appendMotionOptions(form) {
  for (const label of motionOptionLabels()) {
    if (label.hidden) continue;
    const control = label.querySelector("input, select");
    form.append(label.dataset.option, control.type === "checkbox" ? String(control.checked) : control.value);
  }
}

function chosenModel() {
  return models.find((m) => m.name === $("model").value);
}

// Paste-back: on by default when the photo is larger than the model's frame (else the result is
// that small frame), until the user sets it; never with the whole photo as the frame (nothing to
// paste back into).
const framing = { photo: null, pasteBackSet: false }; // the photo's [width, height]

async function readPhotoSize() {
  const file = $("upload-source").files[0];
  framing.photo = null;
  if (file) {
    try {
      const bitmap = await createImageBitmap(file);
      framing.photo = [bitmap.width, bitmap.height];
      bitmap.close();
    } catch {
      framing.photo = null; // the server says what is wrong with it on submit
    }
  }
  suggestPasteBack();
}

function suggestPasteBack() {
  const box = $("upload-paste-back");
  const wholePhoto = $("upload-crop").value === "none";
  box.disabled = wholePhoto;
  const model = chosenModel();
  const [height, width] = model ? model.frame_size : [0, 0];
  const larger = Boolean(model && framing.photo && (framing.photo[0] > width || framing.photo[1] > height));
  if (wholePhoto) box.checked = false;
  else if (!framing.pasteBackSet) box.checked = larger;
  const hint = larger ? `the photo (${framing.photo.join("×")}) is larger than the model's ${width}×${height}` : "";
  show($("upload-paste-hint"), wholePhoto ? "" : hint);
}

// Upload tab

async function submitJob(event) {
  event.preventDefault();
  const error = $("upload-error");
  show(error, "");
  $("result").hidden = true;
  const form = new FormData();
  form.append("source", $("upload-source").files[0]);
  form.append("driving", $("upload-driving").files[0]);
  if ($("model").value) form.append("model", $("model").value);
  form.append("mode", $("upload-mode").value || "relative");
  if ($("upload-background").checked) form.append("background_motion", "true");
  appendMotionOptions(form);
  form.append("crop", $("upload-crop").value);
  form.append("paste_back", String($("upload-paste-back").checked));
  form.append("format", $("upload-format").value);
  if ($("upload-loop").checked) form.append("loop", "true");
  $("upload-submit").disabled = true;
  try {
    const response = await fetch("/animate", { method: "POST", body: form, headers: authHeaders() });
    if (!response.ok) throw new Error(await errorMessage(response));
    const job = await response.json();
    $("job").hidden = false;
    await followJob(job.id);
  } catch (failure) {
    show(error, failure.message);
  } finally {
    $("upload-submit").disabled = false;
  }
}

// One line for every stage: queued, analysing, rendering, encoding; the bar shows the overall percent.
function describeJob(job) {
  const progress = job.progress || {};
  if (job.status === "started" && progress.stage) {
    const frames = progress.frames_total ? `: ${progress.frames_done} of ${progress.frames_total}` : "";
    const eta = job.eta_seconds != null ? `, about ${Math.ceil(job.eta_seconds)} s left` : "";
    return `${progress.stage}${frames} (${Math.floor(progress.percent)} %)${eta}`;
  }
  return job.status;
}

async function followJob(id) {
  const bar = $("job-progress");
  bar.value = 0;
  for (;;) {
    const response = await fetch(`/jobs/${id}`, { headers: authHeaders() });
    if (!response.ok) throw new Error(await errorMessage(response));
    const job = await response.json();
    const progress = job.progress || {};
    if (progress.percent != null) bar.value = progress.percent;
    $("job-status").textContent = describeJob(job);
    if (job.status === "succeeded") {
      bar.value = 100;
      return showResult(id);
    }
    if (job.status === "failed" || job.status === "canceled") {
      const reason = job.error ? `: ${job.error.message}` : "";
      throw new Error(`the job ${job.status}${reason}`);
    }
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
}

const EXTENSIONS = { "video/mp4": "mp4", "video/webm": "webm", "image/gif": "gif", "image/webp": "webp" };

async function showResult(id) {
  const response = await fetch(`/jobs/${id}/result`, { headers: authHeaders() });
  if (!response.ok) throw new Error(await errorMessage(response));
  const type = (response.headers.get("content-type") || "video/mp4").split(";")[0];
  const url = URL.createObjectURL(await response.blob());
  const isVideo = type.startsWith("video/");
  $("result-video").hidden = !isVideo;
  $("result-image").hidden = isVideo;
  if (isVideo) {
    $("result-video").loop = $("upload-loop").checked;
    $("result-video").src = url;
  } else {
    $("result-image").src = url;
  }
  $("result-download").href = url;
  $("result-download").download = `${id}.${EXTENSIONS[type] || "bin"}`;
  $("result").hidden = false;
}

// Live tab

const live = {
  socket: null,
  stream: null,
  timer: null,
  size: null, // the model's [width, height] once the server is ready
  nextIndex: 0, // the index the next frame sent gets
  encoding: 0, // frames being encoded, not yet sent
  lastAnswered: -1,
  sentAt: new Map(),
  latencies: [],
  answeredTimes: [],
  sentTimes: [],
  frames: 0,
  closing: false,
};

// The index the server wrote in the answer's JPEG comment (COM segment right after SOI).
function frameIndex(bytes) {
  if (bytes[0] !== 0xff || bytes[1] !== 0xd8 || bytes[2] !== 0xff || bytes[3] !== 0xfe) return null;
  const length = (bytes[4] << 8) | bytes[5];
  const text = new TextDecoder().decode(bytes.subarray(6, 4 + length));
  const match = /^frame=(\d+)$/.exec(text);
  return match ? Number(match[1]) : null;
}

function perSecond(times, now) {
  while (times.length && now - times[0] > 1000) times.shift();
  return times.length;
}

function updateLiveStats() {
  const now = performance.now();
  $("live-fps-in").textContent = perSecond(live.sentTimes, now);
  $("live-fps-out").textContent = perSecond(live.answeredTimes, now);
  const recent = live.latencies.slice(-30).sort((a, b) => a - b);
  if (recent.length) {
    const p95 = recent[Math.min(recent.length - 1, Math.floor(recent.length * 0.95))];
    $("live-latency").textContent = `${Math.round(recent[recent.length >> 1])} (p95 ${Math.round(p95)})`;
  }
  $("live-frames").textContent = live.frames;
}

function captureFrame(canvas, context) {
  const video = $("live-camera");
  const side = Math.min(video.videoWidth, video.videoHeight);
  if (!side) return;
  const x = (video.videoWidth - side) / 2;
  const y = (video.videoHeight - side) / 2;
  context.drawImage(video, x, y, side, side, 0, 0, canvas.width, canvas.height);
  live.encoding += 1;
  canvas.toBlob(async (blob) => {
    const bytes = blob && (await blob.arrayBuffer());
    live.encoding -= 1;
    if (!bytes || !live.socket || live.socket.readyState !== WebSocket.OPEN) return;
    live.sentAt.set(live.nextIndex, performance.now()); // the server numbers frames as they arrive
    live.nextIndex += 1;
    live.sentTimes.push(performance.now());
    live.socket.send(bytes);
  }, "image/jpeg", 0.85);
}

function startSending() {
  const canvas = document.createElement("canvas");
  [canvas.width, canvas.height] = live.size;
  const context = canvas.getContext("2d");
  live.timer = setInterval(() => {
    const inFlight = live.nextIndex + live.encoding - 1 - live.lastAnswered;
    if (inFlight < MAX_IN_FLIGHT) captureFrame(canvas, context);
    updateLiveStats();
  }, SEND_INTERVAL_MS);
}

async function drawAnswer(data) {
  const bytes = new Uint8Array(data);
  const index = frameIndex(bytes);
  if (index != null) {
    live.lastAnswered = index;
    const sent = live.sentAt.get(index);
    if (sent != null) live.latencies.push(performance.now() - sent);
    for (const key of live.sentAt.keys()) if (key <= index) live.sentAt.delete(key);
  }
  live.answeredTimes.push(performance.now());
  live.frames += 1;
  const image = await createImageBitmap(new Blob([bytes], { type: "image/jpeg" }));
  const output = $("live-output");
  output.getContext("2d").drawImage(image, 0, 0, output.width, output.height);
  image.close();
}

function onLiveMessage(event) {
  if (typeof event.data !== "string") {
    drawAnswer(event.data);
    return;
  }
  const message = JSON.parse(event.data);
  if (message.type === "ready") {
    live.size = [message.width, message.height];
    $("live-reset").disabled = false;
    startSending();
  } else if (message.type === "stats") {
    $("live-dropped").textContent = message.dropped;
  } else if (message.type === "error") {
    show($("live-error"), `${message.error.message} (${message.error.code})`);
  }
}

async function startLive() {
  const source = $("live-source").files[0] || $("upload-source").files[0];
  if (!source) {
    show($("live-error"), "choose a photo first");
    return;
  }
  show($("live-error"), "");
  $("live-start").disabled = true;
  try {
    live.stream = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 }, audio: false });
  } catch (error) {
    show($("live-error"), `the camera is not available: ${error.message}`);
    $("live-start").disabled = false;
    return;
  }
  $("live-camera").srcObject = live.stream;
  Object.assign(live, { nextIndex: 0, encoding: 0, lastAnswered: -1, frames: 0, closing: false, latencies: [] });
  live.sentAt.clear();
  const params = new URLSearchParams();
  if ($("model").value) params.set("model", $("model").value);
  if (apiKey()) params.set("api_key", apiKey());
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const socket = new WebSocket(`${scheme}//${location.host}/live?${params}`);
  socket.binaryType = "arraybuffer";
  live.socket = socket;
  socket.onopen = async () => socket.send(await source.arrayBuffer());
  socket.onmessage = onLiveMessage;
  socket.onclose = (event) => {
    if (!live.closing && !$("live-error").textContent) {
      const why = event.reason || "the server refused or lost the session (busy, unknown model or a bad key)";
      show($("live-error"), `live session closed: ${why}`);
    }
    stopLive();
  };
  $("live-stop").disabled = false;
}

function stopLive() {
  live.closing = true;
  clearInterval(live.timer);
  live.timer = null;
  if (live.socket && live.socket.readyState <= WebSocket.OPEN) live.socket.close(1000, "stopped");
  live.socket = null;
  if (live.stream) live.stream.getTracks().forEach((track) => track.stop());
  live.stream = null;
  $("live-start").disabled = false;
  $("live-reset").disabled = true;
  $("live-stop").disabled = true;
}

document.addEventListener("DOMContentLoaded", () => {
  $("tab-upload").addEventListener("click", () => selectTab("upload"));
  $("tab-live").addEventListener("click", () => selectTab("live"));
  $("upload-form").addEventListener("submit", submitJob);
  $("model").addEventListener("change", showModelOptions);
  $("upload-source").addEventListener("change", readPhotoSize);
  $("upload-crop").addEventListener("change", suggestPasteBack);
  $("upload-paste-back").addEventListener("change", () => (framing.pasteBackSet = true));
  $("live-start").addEventListener("click", startLive);
  $("live-stop").addEventListener("click", stopLive);
  $("live-reset").addEventListener("click", () => live.socket && live.socket.send(JSON.stringify({ type: "reset" })));
  $("api-key").value = localStorage.getItem("animate-api-key") || "";
  $("api-key").addEventListener("change", () => {
    localStorage.setItem("animate-api-key", apiKey());
    loadModels();
  });
  loadModels();
});
