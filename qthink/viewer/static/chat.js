// The streaming chat: sends the conversation to /v1/chat/completions and records a trace of
// every answer (thinking, answer, tool calls, per-token logprobs, timings).
import { sseEvents, errorMessage } from "./stream.js";
import {
  el, seconds, number, download, segment, renderMarkdown, traceFilename, toast, apiHeaders, thinkingTokenCount,
} from "./util.js";
import { renderSteps, toolCallCard } from "./trace.js";

const SETTINGS = ["temperature", "top_p", "top_k", "max_tokens", "max_thinking_tokens"];

export class Chat {
  constructor({ model, onOpenTrace }) {
    this.model = model;
    this.onOpenTrace = onOpenTrace;
    this.history = []; // what is sent back: answers without their old thinking, as the template does
    this.traces = []; // every finished answer of this page, kept across new chats to compare
    this.controller = null;
    this.list = document.getElementById("messages");
    this.prompt = document.getElementById("prompt");
    document.getElementById("composer").addEventListener("submit", (e) => { e.preventDefault(); this.send(); });
    this.prompt.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); this.send(); }
    });
    document.getElementById("stop").addEventListener("click", () => this.controller?.abort());
    document.getElementById("answer-now").addEventListener("click", () => this.answerNow());
    document.getElementById("new-chat").addEventListener("click", () => this.reset());
  }

  reset() {
    this.controller?.abort();
    this.history = [];
    this.list.replaceChildren();
  }

  send() {
    const text = this.prompt.value.trim();
    if (!text || this.controller) return;
    this.prompt.value = "";
    document.getElementById("empty-note")?.remove();
    // A new question ends the tool loop: earlier answers go back without their thinking.
    this.history = this.history.map(({ reasoning_content: _, ...message }) => message);
    this.history.push({ role: "user", content: text });
    this.list.append(el("div", { class: "turn user" }, el("div", { class: "bubble" }, text)));
    this.generate();
  }

  settings() {
    const values = {};
    for (const name of SETTINGS) {
      const raw = document.getElementById(name).value.trim();
      if (raw !== "") values[name] = Number(raw);
    }
    return values;
  }

  tools() {
    const raw = document.getElementById("tools").value.trim();
    if (!raw) return null;
    try {
      return JSON.parse(raw);
    } catch (e) {
      throw new Error(`Tools are not valid JSON: ${e.message}`);
    }
  }

  requestMessages() {
    const system = document.getElementById("system").value.trim();
    return [...(system ? [{ role: "system", content: system }] : []), ...this.history];
  }

  async generate() {
    let tools;
    try { tools = this.tools(); } catch (e) { toast(e.message, true); return; }
    const settings = this.settings();
    const messages = this.requestMessages();
    const trace = {
      format: "qthink-trace", version: 1, created: new Date().toISOString().slice(0, 19) + "Z",
      model: this.model, settings, messages: structuredClone(messages),
      answer: { reasoning_content: "", content: "", tool_calls: [], finish_reason: null, tokens: [] },
      timings: {},
    };
    if (tools) trace.tools = tools;
    const turn = new AssistantTurn(this.list, trace, this);
    this.setBusy(true);
    try {
      await this.stream(trace, turn, { model: this.model, messages, ...settings, ...(tools ? { tools } : {}) });
    } catch (e) {
      if (e.name === "AbortError") trace.answer.finish_reason = "abort";
      else turn.fail(e.message);
    } finally {
      this.setBusy(false);
    }
    const answer = trace.answer;
    const message = { role: "assistant", content: answer.content || "" };
    if (answer.tool_calls.length) {
      // The current tool loop keeps its thinking: the model continues from it once the results come.
      message.tool_calls = answer.tool_calls;
      if (answer.reasoning_content) message.reasoning_content = answer.reasoning_content;
    }
    if (!turn.failed) {
      this.history.push(message);
      this.traces.push(trace);
    }
    await turn.finish();
  }

  async stream(trace, turn, request) {
    this.controller = new AbortController();
    const started = performance.now();
    const response = await fetch("/v1/chat/completions", {
      method: "POST", signal: this.controller.signal, headers: apiHeaders(),
      body: JSON.stringify({ ...request, stream: true, stream_options: { include_usage: true }, logprobs: true, top_logprobs: 5 }),
    });
    if (!response.ok) throw new Error(await errorMessage(response));
    this.requestId = response.headers.get("x-request-id");
    document.getElementById("answer-now").hidden = !this.requestId;
    let phase = "thinking";
    for await (const chunk of sseEvents(response)) {
      const now = (performance.now() - started) / 1000;
      if (chunk.error) throw new Error(chunk.error.message || JSON.stringify(chunk.error));
      if (chunk.usage) trace.usage = chunk.usage;
      const choice = chunk.choices?.[0];
      if (!choice) continue;
      phase = record(trace, choice, now, phase);
      if (phase !== "thinking") document.getElementById("answer-now").hidden = true;
      turn.update();
    }
    trace.timings.end = (performance.now() - started) / 1000;
  }

  setBusy(busy) {
    document.getElementById("send").hidden = busy;
    document.getElementById("stop").hidden = !busy;
    if (!busy) document.getElementById("answer-now").hidden = true;
    if (!busy) this.controller = this.requestId = null;
  }

  // "Answer now": the server closes the running request's thinking at its next step.
  async answerNow() {
    document.getElementById("answer-now").hidden = true;
    if (!this.requestId) return;
    const url = `/v1/requests/${encodeURIComponent(this.requestId)}/end_thinking`;
    const response = await fetch(url, { method: "POST", headers: apiHeaders() });
    if (!response.ok && response.status !== 404) toast(await errorMessage(response), true); // 404: it just finished
  }

  // Tool results typed into the cards go back as `tool` messages; the model then continues.
  answerTools(results) {
    for (const { id, content } of results) this.history.push({ role: "tool", tool_call_id: id, content });
    for (const { name, content } of results) {
      this.list.append(el("div", { class: "turn tool" }, el("div", { class: "card tool-result" },
        el("div", { class: "card-head" }, el("span", { class: "card-kind" }, "tool result"), el("b", {}, name)),
        el("pre", { class: "card-body" }, content))));
    }
    this.generate();
  }
}

// Fold one streamed choice into the trace; returns the part the next empty delta belongs to.
function record(trace, choice, now, phase) {
  const delta = { ...choice.delta };
  // Newer vLLM names the field `reasoning`; ours sends both, with the same text.
  delta.reasoning_content ??= delta.reasoning;
  const answer = trace.answer;
  const timings = trace.timings;
  let part = delta.content && !delta.reasoning_content && phase === "thinking" ? "answer" : phase;
  if (delta.reasoning_content || delta.content || delta.tool_calls?.length) timings.first_token ??= now;
  if (delta.reasoning_content) {
    answer.reasoning_content += delta.reasoning_content;
    timings.first_thinking_token ??= now;
  }
  if (delta.content) {
    answer.content += delta.content;
    timings.first_answer_token ??= now;
  }
  for (const call of delta.tool_calls || []) {
    const slot = answer.tool_calls[call.index ?? answer.tool_calls.length] ??= { id: "", type: "function", function: { name: "", arguments: "" } };
    if (call.id) slot.id = call.id;
    if (call.function?.name) slot.function.name += call.function.name;
    if (call.function?.arguments) slot.function.arguments += call.function.arguments;
    timings.first_answer_token ??= now;
    part = "tool";
  }
  // A chunk may carry several tokens (text held back until it is certain): the ones after
  // </think> belong to the answer even when the chunk's text is all thinking.
  for (const lp of choice.logprobs?.content || []) {
    answer.tokens.push({
      text: lp.token, logprob: lp.logprob, part, t: now,
      top: (lp.top_logprobs || []).map((alt) => ({ text: alt.token, logprob: alt.logprob })),
    });
    if (lp.token === "</think>" && part === "thinking") part = "answer";
  }
  if (choice.finish_reason) answer.finish_reason = choice.finish_reason;
  return part;
}

let turnCount = 0;

// One assistant answer on the page: a live thinking panel, tool call cards, the answer.
class AssistantTurn {
  constructor(list, trace, chat) {
    this.trace = trace;
    this.chat = chat;
    this.failed = false;
    this.userToggled = false;
    this.summaryText = el("span", { class: "thinking-status" }, "Thinking…");
    this.liveSteps = el("div", { class: "live-steps" });
    this.thinkingText = el("div", { class: "live-text" });
    this.thinkingBody = el("div", { class: "thinking-body live" }, this.liveSteps, this.thinkingText);
    this.panel = el("details", { class: "thinking", open: true },
      el("summary", { onclick: () => { this.userToggled = true; } }, el("span", { class: "thinking-icon" }), this.summaryText),
      this.thinkingBody);
    this.answerText = document.createTextNode("");
    this.answer = el("div", { class: "answer live" }, this.answerText);
    this.tools = el("div", { class: "tool-cards" });
    this.footer = el("div", { class: "turn-footer" });
    this.node = el("div", { class: "turn assistant streaming" }, this.panel, this.tools, this.answer, this.footer);
    list.append(this.node);
    this.shown = { answer: 0, tools: "" };
    this.idPrefix = `turn${++turnCount}`;
    this.labelled = 0; // the thinking before this offset is drawn as labelled steps
    this.labelling = false;
    this.done = false;
    this.pending = false;
  }

  // Repaint at most once a frame: a fast stream must not re-layout the page per token.
  update() {
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => { this.pending = false; this.paint(); });
  }

  paint() {
    const { answer, timings } = this.trace;
    this.paintThinking();
    this.answerText.appendData(answer.content.slice(this.shown.answer));
    this.shown.answer = answer.content.length;
    const thinkingTokens = thinkingTokenCount(answer.tokens);
    if (timings.first_answer_token === undefined) {
      this.summaryText.textContent = `Thinking… ${thinkingTokens ? `${number(thinkingTokens)} tokens` : ""}`;
    } else if (!this.userToggled && this.panel.open) {
      this.panel.open = false; // the answer has started: fold the thinking away
    }
    const toolsKey = JSON.stringify(answer.tool_calls);
    if (toolsKey !== this.shown.tools) {
      this.shown.tools = toolsKey;
      this.tools.replaceChildren(...answer.tool_calls.map((call) => toolCallCard(call)));
    }
    this.chat.list.scrollTop = this.chat.list.scrollHeight;
  }

  // Finished paragraphs of the thinking get their step labels while the rest streams in.
  paintThinking() {
    const text = this.trace.answer.reasoning_content;
    this.thinkingText.textContent = text.slice(this.labelled).replace(/^\s+/, "");
    const cut = text.lastIndexOf("\n\n");
    if (cut > this.labelled && !this.labelling) this.labelLive(text.slice(0, cut));
    if (this.panel.open) this.thinkingBody.scrollTop = this.thinkingBody.scrollHeight;
  }

  async labelLive(text) {
    this.labelling = true;
    try {
      const analysis = await segment([], text, "");
      if (this.done) return;
      this.liveSteps.replaceChildren(renderSteps(analysis, [], text, this.idPrefix));
      this.labelled = text.length;
      this.paintThinking();
    } catch {
      // Labels are a help, not the stream: the text keeps streaming without them.
    } finally {
      this.labelling = false;
    }
  }

  fail(message) {
    this.failed = true;
    this.node.append(el("div", { class: "error-card" }, message));
  }

  async finish() {
    this.paint();
    this.done = true;
    const { answer, timings } = this.trace;
    this.node.classList.remove("streaming");
    const thinking = answer.tokens.filter((t) => t.part === "thinking");
    const thoughtFor = timings.first_answer_token ?? timings.end;
    this.summaryText.textContent = answer.reasoning_content
      ? `Thought for ${seconds(thoughtFor)} · ${number(thinkingTokenCount(thinking) || answer.reasoning_content.split(/\s+/).length)} ${thinking.length ? "tokens" : "words"}`
      : "No thinking";
    if (answer.content) this.answer.replaceChildren(renderMarkdown(answer.content));
    this.answer.classList.remove("live");
    if (!answer.content && !answer.tool_calls.length && !this.failed) {
      this.answer.replaceChildren(el("div", { class: "muted" }, answer.finish_reason === "length"
        ? "No answer: max tokens ran out first." : "No answer."));
    }
    if (answer.tool_calls.length && !this.failed) this.askToolResults();
    if (this.failed) return;
    this.footer.append(
      el("span", { class: "turn-stats" }, turnStats(this.trace)),
      el("button", { class: "button small", type: "button", dataset: { action: "trace" }, onclick: () => this.chat.onOpenTrace(this.trace) }, "Trace"),
      el("button", { class: "button small", type: "button", dataset: { action: "save" }, onclick: () => download(traceFilename(this.trace), JSON.stringify(this.trace, null, 1)) }, "Save trace"));
    await this.labelSteps(thinking);
  }

  // The finished thinking, re-drawn as labelled steps.
  async labelSteps(thinking) {
    const { answer } = this.trace;
    if (!answer.reasoning_content) return;
    try {
      const analysis = await segment(thinking, answer.reasoning_content, answer.content);
      this.thinkingBody.replaceChildren(renderSteps(analysis, thinking, answer.reasoning_content, this.idPrefix));
      this.thinkingBody.classList.remove("live");
    } catch (e) {
      toast(e.message, true);
    }
  }

  askToolResults() {
    const inputs = this.trace.answer.tool_calls.map((call) => ({ call, box: el("textarea", { rows: 2, class: "tool-input", placeholder: `Result of ${call.function.name}` }) }));
    const send = el("button", {
      class: "button primary small", type: "button",
      onclick: () => {
        send.disabled = true;
        this.chat.answerTools(inputs.map(({ call, box }) => ({ id: call.id, name: call.function.name, content: box.value })));
      },
    }, "Send results");
    this.tools.replaceChildren(...inputs.map(({ call, box }) => toolCallCard(call, box)), send);
  }
}

function turnStats(trace) {
  const tokens = trace.answer.tokens;
  const thinking = thinkingTokenCount(tokens);
  const reply = tokens.filter((t) => t.part !== "thinking").length;
  const span = (trace.timings.end ?? 0) - (trace.timings.first_token ?? 0);
  const rate = span > 0 && tokens.length ? ` · ${number(tokens.length / span, 1)} tok/s` : "";
  return tokens.length ? `${number(thinking)} thinking + ${number(reply)} answer tokens${rate}` : "";
}
