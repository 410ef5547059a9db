// Page start-up: tabs, loading trace files, and the chat when a model is behind the page.
import { Chat } from "./chat.js";
import { renderTrace, renderCompare, question, LABEL_TITLES } from "./trace.js";
import { el, toast, apiHeaders } from "./util.js";

const KEY_STORE = "qthink.apiKey";

let current = null; // the trace shown in the Trace tab
let chat = null;

function show(view) {
  for (const tab of document.querySelectorAll(".tab")) tab.classList.toggle("active", tab.dataset.view === view);
  for (const section of document.querySelectorAll(".view")) section.classList.toggle("active", section.id === `view-${view}`);
}

async function openTrace(trace) {
  current = trace;
  show("trace");
  const compareButton = el("button", { class: "button", type: "button", onclick: () => pickFiles((files) => compareWith(files[0])) }, "Compare with file…");
  await renderTrace(document.getElementById("trace-root"), trace, { actions: [...siblingButtons(trace), compareButton] });
}

// Other answers to the same question in this page, ready to compare with one click.
function siblingButtons(trace) {
  const answers = chat ? chat.traces : [];
  return answers.map((other, i) => [other, i])
    .filter(([other]) => other !== trace && question(other) === question(trace))
    .map(([other, i]) => el("button", { class: "button", type: "button", dataset: { compare: i }, onclick: () => openCompare(trace, other) }, `Compare with answer ${i + 1}`));
}

async function openCompare(a, b) {
  show("compare");
  await renderCompare(document.getElementById("compare-root"), a, b);
}

async function compareWith(file) {
  const other = await readTrace(file);
  if (other) await openCompare(current, other);
}

async function readTrace(file) {
  try {
    const trace = JSON.parse(await file.text());
    if (trace.format !== "qthink-trace") throw new Error('it has no "format": "qthink-trace"');
    return trace;
  } catch (e) {
    toast(`${file.name} is not a qthink trace: ${e.message}`, true);
    return null;
  }
}

function pickFiles(onFiles) {
  const input = el("input", { type: "file", accept: ".json,application/json", multiple: true });
  input.addEventListener("change", () => onFiles([...input.files]));
  input.click();
}

async function loadFiles(files) {
  const traces = (await Promise.all(files.slice(0, 2).map(readTrace))).filter(Boolean);
  if (traces.length === 2) await openCompare(traces[0], traces[1]);
  else if (traces.length === 1) await openTrace(traces[0]);
}

// The served model's name; asks for the API key when the server wants one.
async function findModel() {
  const notice = document.getElementById("notice");
  const response = await fetch("/v1/models", { headers: apiHeaders() }).catch(() => null);
  if (response?.status === 401) {
    notice.textContent = "This server needs an API key: enter it under Server in the settings.";
    notice.hidden = false;
    return null;
  }
  notice.hidden = true;
  const card = response?.ok ? (await response.json()).data?.[0] ?? null : null;
  const model = card?.id ?? null;
  document.getElementById("model-name").textContent = model || "";
  if (card?.max_model_len) showContext(card.max_model_len);
  if (chat) chat.model = model || undefined;
  return model;
}

// Max tokens defaults to the server's own default (the context minus the prompt): left empty,
// it is not sent; the field is capped at the context.
function showContext(contextLength) {
  const field = document.getElementById("max_tokens");
  field.max = String(contextLength);
  field.placeholder = `up to ${contextLength} minus the prompt`;
  document.getElementById("context-hint").textContent =
    `The context holds ${contextLength} tokens, prompt included. Empty: all the prompt leaves.`;
}

function rememberKey() {
  const input = document.getElementById("api_key");
  input.value = localStorage.getItem(KEY_STORE) || "";
  input.addEventListener("change", () => {
    localStorage.setItem(KEY_STORE, input.value.trim());
    findModel();
  });
}

function disableChat(message) {
  const notice = document.getElementById("notice");
  notice.textContent = message;
  notice.hidden = false;
  for (const id of ["prompt", "send"]) document.getElementById(id).disabled = true;
}

async function start() {
  for (const tab of document.querySelectorAll(".tab")) tab.addEventListener("click", () => show(tab.dataset.view));
  const input = document.getElementById("load-input");
  input.addEventListener("change", async () => { await loadFiles([...input.files]); input.value = ""; });
  const config = await (await fetch("/viewer/config")).json();
  Object.assign(LABEL_TITLES, config.labels);
  if (config.chat) {
    rememberKey();
    chat = new Chat({ model: (await findModel()) || undefined, onOpenTrace: openTrace });
  } else {
    disableChat("No model behind this page (qthink view): load traces to inspect them, or start `qthink serve` to chat.");
  }
  if (config.traces.length === 2) await openCompare(config.traces[0], config.traces[1]);
  else if (config.traces.length === 1) await openTrace(config.traces[0]);
  document.body.dataset.ready = "true";
}

start();
