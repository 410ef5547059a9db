// The trace view: labelled steps, confidence heat-map, minimap and counts of one answer,
// and two traces side by side.
import {
  el, seconds, number, confidence, entropy, mean, SPECIAL_TOKEN, download, segment, traceFilename,
  renderMarkdown, thinkingTokenCount,
} from "./util.js";

// Step label -> its title, in legend order; filled from the server's /viewer/config.
export const LABEL_TITLES = {};

// Everything the view shows, derived once from a trace and its segmentation.
export async function analyseTrace(trace) {
  const answer = trace.answer || {};
  const tokens = answer.tokens || [];
  const thinking = tokens.filter((t) => t.part === "thinking");
  const replyTokens = tokens.filter((t) => t.part !== "thinking");
  const analysis = await segment(thinking, answer.reasoning_content, answer.content || "");
  const timings = trace.timings || {};
  const usage = trace.usage || {};
  const reasoningUsage = usage.completion_tokens_details?.reasoning_tokens;
  const thinkingCount = thinkingTokenCount(thinking) || reasoningUsage || 0;
  const answerCount = replyTokens.length
    || (usage.completion_tokens ? usage.completion_tokens - (reasoningUsage || 0) : 0);
  const generating = (timings.end ?? 0) - (timings.first_token ?? 0);
  return {
    trace, tokens, thinking, replyTokens, analysis,
    stats: {
      thinkingCount, answerCount,
      steps: analysis.steps.length,
      firstThinking: timings.first_thinking_token ?? null,
      firstAnswer: timings.first_answer_token ?? null,
      total: timings.end ?? null,
      tokensPerSecond: generating > 0 ? (thinkingCount + answerCount) / generating : null,
      meanConfidence: mean(tokens.map(confidence)),
      finish: answer.finish_reason || "–",
    },
  };
}

export function question(trace) {
  const users = (trace.messages || []).filter((m) => m.role === "user");
  const content = users.length ? users[users.length - 1].content : "";
  return typeof content === "string" ? content : JSON.stringify(content);
}

// Each token's text as shown: the blank lines between steps are drawn by the step cards.
function displayTexts(tokens) {
  const texts = tokens.map((t) => t.text);
  for (let i = 0; i < texts.length; i++) {
    texts[i] = texts[i].replace(/^\s+/, "");
    if (texts[i]) break;
  }
  for (let i = texts.length - 1; i >= 0; i--) {
    texts[i] = texts[i].replace(/\s+$/, "");
    if (texts[i]) break;
  }
  return texts;
}

// Token spans of one part of the answer, carrying what the heat-map and tooltip need.
function tokenSpans(tokens, offset, answerToken) {
  const texts = displayTexts(tokens);
  return tokens.map((token, i) => {
    const p = confidence(token);
    const h = entropy(token);
    const classes = ["tok"];
    if (SPECIAL_TOKEN.test(token.text)) classes.push("special");
    if (offset + i === answerToken) classes.push("answer-mark");
    const span = el("span", { class: classes.join(" "), dataset: { i: offset + i } }, texts[i]);
    if (p !== null) span.style.setProperty("--conf", (1 - p).toFixed(3));
    if (h !== null) span.style.setProperty("--ent", Math.min(1, h / 1.6).toFixed(3));
    return span;
  });
}

// The thinking as labelled step cards; tokens give the heat-map, plain text works without.
export function renderSteps(analysis, tokens, text, idPrefix) {
  const { steps, answer_step: answerStep, answer_token: answerToken } = analysis;
  return el("div", { class: "steps" }, steps.map((step) => {
    const own = tokens.length ? tokens.slice(step.token_start, step.token_end) : [];
    const body = own.length ? tokenSpans(own, step.token_start, answerToken) : [step.text];
    const p = mean(own.map(confidence));
    const meta = [own.length ? `${number(own.length)} tokens` : null,
      p !== null ? `mean p ${p.toFixed(2)}` : null].filter(Boolean).join(" · ");
    return el("div", { class: `step label-${step.label}`, id: `${idPrefix}-step-${step.index}`, dataset: { label: step.label } },
      el("div", { class: "step-head" },
        el("span", { class: `chip label-${step.label}` }, LABEL_TITLES[step.label] || step.label),
        el("span", { class: "step-no" }, `step ${step.index + 1}`),
        step.cue ? el("span", { class: "cue" }, `“${step.cue}”`) : null,
        step.index === answerStep ? el("span", { class: "answer-badge" }, "answer first appears") : null,
        el("span", { class: "step-meta" }, meta)),
      el("div", { class: "step-text" }, body));
  }));
}

function statCard(label, value, name) {
  return el("div", { class: "stat", dataset: { stat: name } },
    el("div", { class: "stat-value" }, value), el("div", { class: "stat-label" }, label));
}

function statsGrid(stats) {
  return el("div", { class: "stats" },
    statCard("thinking tokens", number(stats.thinkingCount), "thinking-tokens"),
    statCard("answer tokens", number(stats.answerCount), "answer-tokens"),
    statCard("steps", number(stats.steps), "steps"),
    statCard("first thinking token", seconds(stats.firstThinking), "first-thinking"),
    statCard("time to answer", seconds(stats.firstAnswer), "time-to-answer"),
    statCard("tokens / s", number(stats.tokensPerSecond, 1), "tokens-per-second"),
    statCard("mean top-1 p", stats.meanConfidence === null ? "–" : stats.meanConfidence.toFixed(2), "mean-confidence"),
    statCard("finish", stats.finish, "finish"));
}

// The whole chain at a glance: steps by label, a confidence strip, and where the answer shows.
function minimap(view, idPrefix) {
  const { analysis, tokens, thinking, replyTokens } = view;
  const byTokens = tokens.length > 0;
  const total = byTokens ? tokens.length
    : analysis.steps.reduce((n, s) => n + s.end - s.start, 0) + (view.trace.answer?.content?.length || 0);
  const size = (step) => (byTokens ? step.token_end - step.token_start : step.end - step.start);
  const bar = el("div", { class: analysis.steps.length > 120 ? "minimap-bar dense" : "minimap-bar" });
  for (const step of analysis.steps) {
    bar.append(el("div", {
      class: `mm-step label-${step.label}`, style: `flex-grow: ${Math.max(size(step), 1)}`,
      title: `step ${step.index + 1}: ${LABEL_TITLES[step.label]}`,
      onclick: () => document.getElementById(`${idPrefix}-step-${step.index}`)?.scrollIntoView({ behavior: "smooth", block: "center" }),
    }));
  }
  const answerSize = byTokens ? replyTokens.length : (view.trace.answer?.content?.length || 0);
  if (answerSize) bar.append(el("div", { class: "mm-step mm-answer", style: `flex-grow: ${answerSize}`, title: "answer" }));
  const markers = el("div", { class: "minimap-markers" });
  const thinkingSize = byTokens ? thinking.length : total - answerSize;
  if (answerSize && total) {
    markers.append(el("div", { class: "mm-marker mm-end-think", style: `left: ${(100 * thinkingSize) / total}%`, title: "end of thinking" }));
  }
  const firstAt = byTokens ? analysis.answer_token : analysis.answer_at;
  if (firstAt !== null && firstAt !== undefined && total) {
    markers.append(el("div", { class: "mm-marker mm-answer-first", style: `left: ${(100 * firstAt) / total}%` },
      el("span", { class: "mm-flag" }, "answer first appears")));
  }
  const strip = byTokens ? confidenceStrip(tokens) : null;
  return el("div", { class: "minimap" }, el("div", { class: "minimap-title" }, "Timeline of the chain"), markers, bar, strip, legend(analysis));
}

// Mean top-1 probability along the chain, one column per pixel-wide bin of tokens.
function confidenceStrip(tokens) {
  const columns = Math.min(tokens.length, 1000);
  const canvas = el("canvas", { class: "minimap-strip", width: columns, height: 14, title: "top-1 probability along the chain (red = unsure)" });
  const ctx = canvas.getContext("2d");
  for (let c = 0; c < columns; c++) {
    const bin = tokens.slice(Math.floor((c * tokens.length) / columns), Math.floor(((c + 1) * tokens.length) / columns));
    const p = mean(bin.map(confidence));
    ctx.fillStyle = p === null ? "#e5e7eb" : `rgba(220, 38, 38, ${(1 - p).toFixed(3)})`;
    ctx.fillRect(c, 0, 1, canvas.height);
  }
  return canvas;
}

function legend(analysis) {
  const counts = {};
  for (const step of analysis.steps) counts[step.label] = (counts[step.label] || 0) + 1;
  return el("div", { class: "legend" }, Object.entries(LABEL_TITLES)
    .filter(([label]) => counts[label])
    .map(([label, title]) => el("span", { class: "legend-item" }, el("span", { class: `swatch label-${label}` }), `${title} ${counts[label]}`)),
  el("span", { class: "legend-item" }, el("span", { class: "swatch mm-answer" }), "answer"));
}

function modeSwitch(root) {
  const modes = [["steps", "Steps"], ["confidence", "Confidence"], ["entropy", "Entropy"]];
  const group = el("div", { class: "mode-switch", role: "radiogroup" });
  for (const [mode, title] of modes) {
    group.append(el("button", {
      class: mode === "confidence" ? "mode active" : "mode", type: "button", dataset: { mode },
      onclick: (event) => {
        root.classList.remove("mode-steps", "mode-confidence", "mode-entropy");
        root.classList.add(`mode-${mode}`);
        group.querySelectorAll(".mode").forEach((b) => b.classList.toggle("active", b === event.currentTarget));
      },
    }, title));
  }
  return group;
}

function conversation(trace) {
  const earlier = (trace.messages || []).filter((m) => m.role !== "system");
  return el("div", { class: "trace-question" },
    el("div", { class: "q-label" }, "Question"),
    el("div", { class: "q-text" }, question(trace)),
    earlier.length > 1 ? el("div", { class: "q-more" }, `${earlier.length} messages in the conversation`) : null);
}

const CLOSED_BY = {
  loop_guard: "The loop guard ended this thinking: it kept repeating one passage.",
  thinking_budget: "The thinking budget ran out: the engine ended the thinking.",
  end_thinking: "The thinking was ended on request.",
};

function closedNote(closedBy) {
  return closedBy ? el("div", { class: "trace-settings trace-closed" }, CLOSED_BY[closedBy] || `Thinking closed by ${closedBy}.`) : null;
}

// Render one trace into `root`; `actions` adds buttons to its header.
export async function renderTrace(root, trace, { idPrefix = "t", compact = false, actions = [] } = {}) {
  root.replaceChildren(el("div", { class: "empty" }, "Analysing…"));
  const view = await analyseTrace(trace);
  const settings = Object.entries(trace.settings || {}).filter(([, v]) => v !== null && v !== "")
    .map(([k, v]) => `${k} ${v}`).join(" · ");
  const header = el("div", { class: "trace-header" },
    el("div", { class: "trace-title" }, trace.title || "Trace",
      el("span", { class: "trace-sub" }, [trace.model, trace.created].filter(Boolean).join(" · "))),
    el("div", { class: "trace-actions" },
      el("button", { class: "button", type: "button", onclick: () => download(traceFilename(trace), JSON.stringify(trace, null, 1)) }, "Save trace"),
      actions));
  const body = el("div", { class: "trace mode-confidence" + (compact ? " compact" : "") });
  const thinkingText = trace.answer?.reasoning_content || "";
  const parts = [
    header,
    conversation(trace),
    settings ? el("div", { class: "trace-settings" }, settings) : null,
    statsGrid(view.stats),
    minimap(view, idPrefix),
    closedNote(trace.answer?.thinking_closed_by),
    el("div", { class: "section-head" }, el("h3", {}, "Thinking"),
      view.tokens.length ? el("span", { class: "heat-hint" }, "shaded where the model was unsure · hover a token for its alternatives") : null,
      view.tokens.length ? modeSwitch(body) : null),
    view.analysis.steps.length ? renderSteps(view.analysis, view.thinking, thinkingText, idPrefix)
      : el("div", { class: "empty" }, "This answer has no thinking."),
    el("div", { class: "section-head" }, el("h3", {}, "Answer")),
    el("div", { class: "trace-answer" }, view.replyTokens.length
      ? el("div", { class: "step-text" }, tokenSpans(view.replyTokens, view.thinking.length, null))
      : renderMarkdown(trace.answer?.content || "")),
    toolCalls(trace)];
  body.append(...parts.filter(Boolean));
  attachTooltip(body, view.tokens);
  root.replaceChildren(body);
  return view;
}

function toolCalls(trace) {
  const calls = trace.answer?.tool_calls || [];
  if (!calls.length) return null;
  return el("div", { class: "tool-cards" }, calls.map((call) => toolCallCard(call)));
}

export function toolCallCard(call, extra = null) {
  let args = call.function?.arguments ?? "";
  try { args = JSON.stringify(JSON.parse(args), null, 2); } catch { /* shown as streamed */ }
  return el("div", { class: "card tool-call" },
    el("div", { class: "card-head" }, el("span", { class: "card-kind" }, "tool call"),
      el("b", {}, call.function?.name || "…"), call.id ? el("code", { class: "card-id" }, call.id) : null),
    el("pre", { class: "card-body" }, args), extra);
}

function attachTooltip(root, tokens) {
  const tip = document.getElementById("tooltip");
  root.addEventListener("mouseover", (event) => {
    const span = event.target.closest(".tok");
    if (!span) return;
    const token = tokens[Number(span.dataset.i)];
    if (!token) return;
    const p = confidence(token);
    const h = entropy(token);
    tip.replaceChildren(
      el("div", { class: "tip-token" }, JSON.stringify(token.text)),
      el("div", { class: "tip-meta" }, `#${span.dataset.i} · p ${p === null ? "–" : p.toFixed(3)} · entropy ${h === null ? "–" : h.toFixed(2)}`),
      el("table", { class: "tip-top" }, (token.top || []).map((alt) => el("tr", {},
        el("td", {}, JSON.stringify(alt.text)), el("td", {}, Math.exp(alt.logprob).toFixed(3))))));
    const box = span.getBoundingClientRect();
    tip.style.left = `${Math.min(box.left, window.innerWidth - 260)}px`;
    tip.style.top = `${box.bottom + 6}px`;
    tip.hidden = false;
  });
  root.addEventListener("mouseout", (event) => {
    if (event.target.closest(".tok")) tip.hidden = true;
  });
}

function compareTable(a, b) {
  const rows = [
    ["thinking tokens", (s) => number(s.thinkingCount)],
    ["answer tokens", (s) => number(s.answerCount)],
    ["steps", (s) => number(s.steps)],
    ["time to answer", (s) => seconds(s.firstAnswer)],
    ["tokens / s", (s) => number(s.tokensPerSecond, 1)],
    ["mean top-1 p", (s) => (s.meanConfidence === null ? "–" : s.meanConfidence.toFixed(2))],
  ];
  const labelCounts = (v) => Object.fromEntries(Object.keys(LABEL_TITLES).map((l) => [l, v.analysis.steps.filter((s) => s.label === l).length]));
  const ca = labelCounts(a);
  const cb = labelCounts(b);
  for (const [label, title] of Object.entries(LABEL_TITLES)) {
    if (ca[label] || cb[label]) rows.push([`${title} steps`, (_, side) => String(side === "a" ? ca[label] : cb[label])]);
  }
  const sameAnswer = (a.trace.answer?.content || "").trim() === (b.trace.answer?.content || "").trim();
  const row = (name, stats, side) => el("tr", {}, el("th", {}, name), rows.map(([, fn]) => el("td", {}, fn(stats, side))));
  return el("div", { class: "compare-table-wrap" },
    el("table", { class: "compare-table" },
      el("tr", {}, el("th", {}, ""), rows.map(([title]) => el("th", {}, title))),
      row("A", a.stats, "a"), row("B", b.stats, "b")),
    el("div", { class: `same-answer ${sameAnswer ? "yes" : "no"}` }, sameAnswer ? "Same final answer" : "Different final answers"));
}

export async function renderCompare(root, traceA, traceB) {
  const left = el("div", { class: "compare-col" });
  const right = el("div", { class: "compare-col" });
  const summary = el("div", { class: "compare-summary" });
  const warning = question(traceA) === question(traceB) ? null
    : el("div", { class: "notice" }, "These traces answer different questions.");
  root.replaceChildren(el("div", { class: "compare" }, warning, summary, el("div", { class: "compare-cols" }, left, right)));
  const [a, b] = await Promise.all([
    renderTrace(left, { title: "A", ...traceA }, { idPrefix: "a", compact: true }),
    renderTrace(right, { title: "B", ...traceB }, { idPrefix: "b", compact: true }),
  ]);
  summary.append(el("h3", {}, "A vs B"), compareTable(a, b));
}
