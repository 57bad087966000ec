// omniserve console: drives the public API from the browser with the key the user pastes.
// Everything a model or the server returns is shown through textContent or as a URL
// attribute, never parsed as HTML.
"use strict";

const KEY_STORAGE = "omniserve.console.key";
const TASKS_STORAGE = "omniserve.console.tasks";
const TASK_POLL_MS = 1000;
const MODELS_REFRESH_MS = 10000;
const MAX_TRACKED_TASKS = 20;
const FINAL_TASK_STATES = new Set(["TASK_STATUS_SUCCEED", "TASK_STATUS_FAILED"]);
// The pickers, by the catalog kind (the model card's `kind`) each one lists.
const PICKERS = {
  "chat-model": "chat",
  "image-model": "image",
  "speech-model": "speech",
  "transcribe-model": "transcription",
};

const $ = (id) => document.getElementById(id);

function element(tag, attributes, text) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) node.setAttribute(name, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

function setStatus(id, text, isError) {
  const node = $(id);
  // Rewriting the same words would have a screen reader announce them again.
  if (node.textContent !== text) node.textContent = text;
  node.classList.toggle("error", Boolean(isError));
}

function formatBytes(bytes) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(unit === 0 ? 0 : 1)} ${units[unit]}`;
}

// ---- API calls -------------------------------------------------------------------------

class ApiFailure extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function apiKey() {
  return localStorage.getItem(KEY_STORAGE) || "";
}

function withKey(headers) {
  const all = Object.assign({}, headers);
  const key = apiKey();
  if (key) all.Authorization = `Bearer ${key}`;
  return all;
}

// The message of any of the server's error envelopes (OpenAI's `error.message`, /v3's `message`).
async function failureOf(response) {
  let message = `${response.status} ${response.statusText}`.trim();
  try {
    const body = await response.json();
    const detail = (body && body.error && body.error.message) || (body && body.message);
    if (detail) message = `${response.status}: ${detail}`;
  } catch (_) {
    // Not JSON: the status line says enough.
  }
  return new ApiFailure(response.status, message);
}

async function call(path, options) {
  const init = Object.assign({ cache: "no-store" }, options || {});
  init.headers = withKey(init.headers);
  const response = await fetch(path, init);
  if (!response.ok) throw await failureOf(response);
  return response;
}

function postJson(path, body, signal) {
  return call(path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
    signal,
  });
}

// Server-sent events from a fetch response: each `data:` payload parsed as JSON, until [DONE].
async function* sseEvents(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  const boundary = /\r?\n\r?\n/;
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, { stream: true });
      let match;
      while ((match = boundary.exec(buffer)) !== null) {
        const block = buffer.slice(0, match.index);
        buffer = buffer.slice(match.index + match[0].length);
        const data = block
          .split(/\r?\n/)
          .filter((line) => line.startsWith("data:"))
          .map((line) => line.slice(5).replace(/^ /, ""))
          .join("\n");
        if (!data) continue;
        if (data === "[DONE]") return;
        yield JSON.parse(data);
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

// ---- Key -------------------------------------------------------------------------------

function showKeyState() {
  setStatus("key-status", apiKey() ? "Key kept in this browser." : "No key: works only on an open server.");
}

function useKey(event) {
  event.preventDefault();
  const key = $("key-input").value.trim();
  if (key) localStorage.setItem(KEY_STORAGE, key);
  else localStorage.removeItem(KEY_STORAGE);
  showKeyState();
  loadModels();
  for (const view of taskViews.values()) {
    if (view.gaveUp) view.finished = view.gaveUp = false;
  }
  pollTasks();
}

function forgetKey() {
  localStorage.removeItem(KEY_STORAGE);
  $("key-input").value = "";
  showKeyState();
  loadModels();
}

// ---- Models ----------------------------------------------------------------------------

let models = [];

function fillPickers() {
  for (const [id, kind] of Object.entries(PICKERS)) {
    const picker = $(id);
    const chosen = picker.value;
    // A card without a kind (an older server) may serve anything: offer it everywhere.
    const names = models.filter((card) => !card.kind || card.kind === kind).map((card) => card.id);
    const shown = Array.from(picker.options, (option) => option.value);
    // Unchanged lists are left alone, so a refresh does not close a picker the user has open.
    if (names.length > 0 && names.join("\n") === shown.join("\n")) continue;
    picker.replaceChildren(...names.map((name) => element("option", { value: name }, name)));
    if (names.includes(chosen)) picker.value = chosen;
    picker.disabled = names.length === 0;
    if (names.length === 0) picker.append(element("option", { value: "" }, `no ${kind} model`));
  }
}

function renderDevices(report) {
  const holder = $("devices");
  holder.replaceChildren();
  if (!report) return;
  for (const device of report.devices) {
    const line = element("div", { class: "device" });
    const label = `${device.name}: ${formatBytes(device.used_bytes)} of ${formatBytes(device.budget_bytes)} budget`;
    const meter = element("meter", {
      min: "0",
      max: String(device.budget_bytes || 1),
      value: String(device.used_bytes),
      "aria-label": label,
    });
    line.append(element("span", {}, label), meter);
    holder.append(line);
  }
}

function renderModels(report) {
  const rows = models.map((card) => {
    const residency = report ? report.models[card.id] : undefined;
    const row = element("tr", { "data-model": card.id });
    const state = residency ? residency.state : report ? "alias" : "needs an admin key";
    let memory = "—";
    if (residency && residency.footprint_source === "unknown") memory = "not measured yet";
    else if (residency) memory = `${formatBytes(residency.footprint_bytes)} (${residency.footprint_source})`;
    row.append(
      element("th", { scope: "row" }, card.id),
      element("td", {}, card.kind || "—"),
      element("td", {}, card.max_model_len ? String(card.max_model_len) : "—"),
      element("td", { class: `state state-${residency ? residency.state : "none"}` }, state),
      element("td", {}, residency ? residency.device : "—"),
      element("td", {}, memory),
    );
    return row;
  });
  $("models-table").tBodies[0].replaceChildren(...rows);
  renderDevices(report);
}

async function loadModels() {
  try {
    models = (await (await call("/v1/models")).json()).data;
  } catch (failure) {
    models = [];
    renderModels(null);
    fillPickers();
    setStatus("models-note", failure.message, true);
    return;
  }
  let report = null;
  let note = `${models.length} models.`;
  try {
    report = await (await call("/admin/scheduler")).json();
  } catch (failure) {
    note +=
      failure.status === 401 || failure.status === 403
        ? " Residency and memory need an admin key."
        : ` Residency unavailable: ${failure.message}`;
  }
  renderModels(report);
  fillPickers();
  setStatus("models-note", note);
}

// ---- Chat ------------------------------------------------------------------------------

let conversation = [];
let chatAbort = null;

function appendMessage(role, text) {
  const message = element("div", { class: `message ${role}` });
  message.append(element("span", { class: "role" }, role === "user" ? "You" : "Model"));
  const body = element("p", { class: "content" }, text);
  message.append(body);
  $("chat-log").append(message);
  return message;
}

function chatBusy(busy) {
  $("chat-send").disabled = busy;
  $("chat-stop").disabled = !busy;
}

async function sendChat(event) {
  event.preventDefault();
  const text = $("chat-input").value.trim();
  const model = $("chat-model").value;
  if (!text || !model || chatAbort) return;
  conversation.push({ role: "user", content: text });
  appendMessage("user", text);
  $("chat-input").value = "";
  const reply = appendMessage("assistant", "");
  const body = reply.querySelector(".content");
  reply.dataset.chunks = "0";
  reply.setAttribute("aria-busy", "true");
  chatAbort = new AbortController();
  chatBusy(true);
  setStatus("chat-status", "Waiting for the model…");
  let content = "";
  try {
    const request = {
      model,
      messages: conversation,
      stream: true,
      stream_options: { include_usage: true },
      max_tokens: Number($("chat-max-tokens").value) || undefined,
    };
    const response = await postJson("/v1/chat/completions", request, chatAbort.signal);
    setStatus("chat-status", "Streaming…");
    let usage = null;
    let finish = null;
    for await (const chunk of sseEvents(response)) {
      if (chunk.error) throw new ApiFailure(0, chunk.error.message || "The stream failed.");
      if (chunk.usage) usage = chunk.usage;
      for (const choice of chunk.choices || []) {
        const piece = choice.delta && choice.delta.content;
        if (piece) {
          content += piece;
          body.textContent = content;
          reply.dataset.chunks = String(Number(reply.dataset.chunks) + 1);
          $("chat-log").scrollTop = $("chat-log").scrollHeight;
        }
        if (choice.finish_reason) finish = choice.finish_reason;
      }
    }
    conversation.push({ role: "assistant", content });
    const tokens = usage ? `, ${usage.completion_tokens} tokens` : "";
    setStatus("chat-status", `Done${finish ? ` (${finish})` : ""}${tokens}.`);
    reply.dataset.state = "done";
  } catch (failure) {
    const stopped = failure.name === "AbortError";
    if (content) conversation.push({ role: "assistant", content });
    else {
      conversation.pop(); // the turn left no answer: it is not part of the conversation
      body.textContent = stopped ? "(stopped)" : "(no answer)";
      body.classList.add("muted");
    }
    setStatus("chat-status", stopped ? "Stopped." : failure.message, !stopped);
    reply.dataset.state = stopped ? "stopped" : "failed";
  } finally {
    reply.removeAttribute("aria-busy");
    chatAbort = null;
    chatBusy(false);
  }
}

function stopChat() {
  if (chatAbort) chatAbort.abort();
}

function clearChat() {
  stopChat();
  conversation = [];
  $("chat-log").replaceChildren();
  setStatus("chat-status", "");
}

// ---- Image -----------------------------------------------------------------------------

async function generateImage(event) {
  event.preventDefault();
  const model = $("image-model").value;
  const prompt = $("image-prompt").value.trim();
  const side = Number($("image-size").value);
  const steps = Number($("image-steps").value) || undefined;
  if (!model || !prompt) return;
  $("image-go").disabled = true;
  try {
    if ($("image-as-task").checked) {
      const request = { model_name: model, prompt, width: side, height: side, steps, image_num: 1 };
      const submitted = await (await postJson("/v3/async/txt2img", { request })).json();
      trackTask(submitted.task_id, "txt2img", prompt);
      setStatus("image-status", "Submitted as a /v3 task.");
    } else {
      setStatus("image-status", "Generating…");
      const body = { model, prompt, size: `${side}x${side}`, steps, n: 1, response_format: "b64_json" };
      const result = await (await postJson("/v1/images/generations", body)).json();
      const pictures = result.data.map((item) => {
        const picture = element("img", { alt: `Generated from: ${prompt}`, width: String(side), height: String(side) });
        picture.src = `data:image/png;base64,${item.b64_json}`;
        return picture;
      });
      $("image-output").replaceChildren(...pictures);
      setStatus("image-status", "Done.");
    }
  } catch (failure) {
    setStatus("image-status", failure.message, true);
  } finally {
    $("image-go").disabled = false;
  }
}

// ---- Speech ----------------------------------------------------------------------------

let speechUrl = null;

async function speak(event) {
  event.preventDefault();
  const model = $("speech-model").value;
  const input = $("speech-input").value.trim();
  const voice = $("speech-voice").value.trim();
  if (!model || !input || !voice) return;
  $("speech-go").disabled = true;
  setStatus("speech-status", "Speaking…");
  try {
    const response = await postJson("/v1/audio/speech", { model, input, voice, response_format: "wav" });
    const audio = await response.blob();
    if (speechUrl) URL.revokeObjectURL(speechUrl);
    speechUrl = URL.createObjectURL(audio);
    const player = $("speech-audio");
    player.src = speechUrl;
    player.hidden = false;
    setStatus("speech-status", `Done (${formatBytes(audio.size)}).`);
    // Browsers may refuse to start sound on their own; the controls remain.
    player.play().catch(() => {});
  } catch (failure) {
    setStatus("speech-status", failure.message, true);
  } finally {
    $("speech-go").disabled = false;
  }
}

// ---- Transcription ---------------------------------------------------------------------

async function transcribe(event) {
  event.preventDefault();
  const model = $("transcribe-model").value;
  const file = $("transcribe-file").files[0];
  if (!model || !file) return;
  $("transcribe-go").disabled = true;
  setStatus("transcribe-status", "Transcribing…");
  $("transcribe-output").textContent = "";
  try {
    const form = new FormData();
    form.append("file", file);
    form.append("model", model);
    form.append("response_format", "json");
    // No Content-Type of our own: the browser writes the multipart boundary.
    const result = await (await call("/v1/audio/transcriptions", { method: "POST", body: form })).json();
    $("transcribe-output").textContent = result.text;
    setStatus("transcribe-status", "Done.");
  } catch (failure) {
    setStatus("transcribe-status", failure.message, true);
  } finally {
    $("transcribe-go").disabled = false;
  }
}

// ---- /v3 tasks -------------------------------------------------------------------------

let tasks = [];
const taskViews = new Map(); // task id -> { item, finished, outputsShown }
let pollTimer = null;

function loadTasks() {
  try {
    const stored = JSON.parse(localStorage.getItem(TASKS_STORAGE) || "[]");
    tasks = Array.isArray(stored) ? stored.filter((task) => typeof task.id === "string") : [];
  } catch (_) {
    tasks = [];
  }
}

function saveTasks() {
  localStorage.setItem(TASKS_STORAGE, JSON.stringify(tasks));
}

function taskView(task) {
  let view = taskViews.get(task.id);
  if (view) return view;
  const item = element("li", { class: "task", "data-task-id": task.id });
  const head = element("div", { class: "task-head" });
  head.append(
    element("strong", {}, task.kind),
    element("span", { class: "task-label" }, task.label),
    element("code", {}, task.id),
  );
  const progress = element("progress", { max: "100", "aria-label": `Progress of task ${task.id}` });
  const state = element("span", { class: "task-state", role: "status" }, "Submitted");
  const outputs = element("div", { class: "gallery task-outputs" });
  item.append(head, progress, state, outputs);
  view = { item, progress, state, outputs, finished: false, gaveUp: false, outputsShown: false };
  taskViews.set(task.id, view);
  return view;
}

function renderTasks() {
  $("task-list").replaceChildren(...tasks.map((task) => taskView(task).item));
}

function showResult(task, view, result) {
  const info = result.task;
  view.item.dataset.status = info.status;
  view.progress.value = info.status === "TASK_STATUS_SUCCEED" ? 100 : info.progress_percent;
  const parts = [info.status.replace("TASK_STATUS_", "").toLowerCase()];
  if (info.status === "TASK_STATUS_PROCESSING" || info.status === "TASK_STATUS_QUEUED") {
    parts.push(`${info.progress_percent}%`);
    if (info.eta) parts.push(`about ${info.eta} s left`);
  }
  if (info.reason) parts.push(info.reason);
  view.state.textContent = parts.join(" · ");
  view.state.classList.toggle("error", info.status === "TASK_STATUS_FAILED");
  view.finished = FINAL_TASK_STATES.has(info.status);
  if (info.status !== "TASK_STATUS_SUCCEED" || view.outputsShown) return;
  view.outputsShown = true;
  const outputs = [];
  for (const image of result.images || []) {
    const picture = element("img", { alt: `Task output: ${task.label}` });
    picture.src = image.image_url;
    outputs.push(picture);
  }
  for (const audio of result.audios || []) {
    const player = element("audio", { controls: "" });
    player.src = audio.audio_url;
    outputs.push(player);
  }
  for (const video of result.videos || []) {
    const player = element("video", { controls: "", muted: "" });
    player.src = video.video_url;
    outputs.push(player);
  }
  view.outputs.replaceChildren(...outputs);
}

async function pollTasks() {
  clearTimeout(pollTimer);
  pollTimer = null;
  for (const task of tasks) {
    const view = taskView(task);
    if (view.finished) continue;
    try {
      const path = `/v3/async/task-result?task_id=${encodeURIComponent(task.id)}`;
      showResult(task, view, await (await call(path)).json());
    } catch (failure) {
      view.state.textContent = failure.message;
      view.state.classList.add("error");
      // A task that is gone, or not this key's, will not come back by asking again.
      // (Another key may see it: using a key asks again.)
      if (failure.status >= 400 && failure.status < 500 && failure.status !== 429) {
        view.finished = true;
        view.gaveUp = true;
      }
    }
  }
  if (tasks.some((task) => !taskView(task).finished)) pollTimer = setTimeout(pollTasks, TASK_POLL_MS);
}

function trackTask(id, kind, label) {
  tasks = [{ id, kind, label }, ...tasks.filter((task) => task.id !== id)].slice(0, MAX_TRACKED_TASKS);
  saveTasks();
  renderTasks();
  pollTasks();
}

function clearTasks() {
  tasks = [];
  taskViews.clear();
  saveTasks();
  renderTasks();
}

// ---- Start -----------------------------------------------------------------------------

function start() {
  $("key-input").value = apiKey();
  showKeyState();
  $("key-form").addEventListener("submit", useKey);
  $("key-forget").addEventListener("click", forgetKey);
  $("models-refresh").addEventListener("click", loadModels);
  $("chat-form").addEventListener("submit", sendChat);
  $("chat-stop").addEventListener("click", stopChat);
  $("chat-clear").addEventListener("click", clearChat);
  $("image-form").addEventListener("submit", generateImage);
  $("speech-form").addEventListener("submit", speak);
  $("transcribe-form").addEventListener("submit", transcribe);
  $("tasks-clear").addEventListener("click", clearTasks);
  // Enter sends, Shift+Enter starts a new line.
  $("chat-input").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      $("chat-form").requestSubmit();
    }
  });
  loadTasks();
  renderTasks();
  loadModels();
  pollTasks();
  setInterval(() => {
    if (document.visibilityState === "visible") loadModels();
  }, MODELS_REFRESH_MS);
}

start();
