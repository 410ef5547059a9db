// Shared by the chat and the trace view: DOM building, numbers, token maths, trace files.

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function seconds(value) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  return value < 10 ? `${value.toFixed(2)} s` : `${value.toFixed(1)} s`;
}

export function number(value, digits = 0) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  return value.toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: digits });
}

// Top-1 probability of the sampled token.
export function confidence(token) {
  return token.logprob === null || token.logprob === undefined ? null : Math.exp(token.logprob);
}

// Entropy (nats) over the top alternatives, with the unlisted rest counted as one outcome:
// a lower bound of the full distribution's entropy, exact when the top covers it all.
export function entropy(token) {
  if (!token.top || token.top.length === 0) return null;
  const probs = token.top.map((t) => Math.exp(t.logprob));
  const rest = Math.max(0, 1 - probs.reduce((a, b) => a + b, 0));
  return [...probs, rest].filter((p) => p > 0).reduce((h, p) => h - p * Math.log(p), 0);
}

export function mean(values) {
  const known = values.filter((v) => v !== null && v !== undefined);
  return known.length ? known.reduce((a, b) => a + b, 0) / known.length : null;
}

export const SPECIAL_TOKEN = /^<\|?\/?[a-z_]+\|?>$/;

// Thinking tokens counted as servers count reasoning tokens: the closing </think> is not one.
export function thinkingTokenCount(tokens) {
  return tokens.filter((t) => t.part === "thinking" && t.text !== "</think>").length;
}

export function download(filename, text) {
  const url = URL.createObjectURL(new Blob([text], { type: "application/json" }));
  const link = el("a", { href: url, download: filename });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

export function toast(message, isError = false) {
  const box = document.getElementById("toast");
  box.textContent = message;
  box.className = isError ? "toast error" : "toast";
  box.hidden = false;
  clearTimeout(box._timer);
  box._timer = setTimeout(() => { box.hidden = true; }, 5000);
}

// Minimal, safe rendering of the answer: code fences, inline code and bold; everything
// else stays text, so nothing the model writes becomes HTML.
export function renderMarkdown(text) {
  const root = el("div", { class: "md" });
  const parts = text.split(/```[^\n]*\n?/);
  parts.forEach((part, i) => {
    if (i % 2 === 1) { root.append(el("pre", { class: "code" }, part.replace(/\n$/, ""))); return; }
    const para = el("div", { class: "md-text" });
    for (const piece of part.split(/(`[^`\n]+`|\*\*[^*\n]+\*\*)/)) {
      if (piece.startsWith("`") && piece.endsWith("`") && piece.length > 1) para.append(el("code", {}, piece.slice(1, -1)));
      else if (piece.startsWith("**") && piece.endsWith("**") && piece.length > 3) para.append(el("b", {}, piece.slice(2, -2)));
      else para.append(piece);
    }
    root.append(para);
  });
  return root;
}

export function traceFilename(trace) {
  const stamp = (trace.created || new Date().toISOString()).replace(/[:T]/g, "-").slice(0, 19);
  return `qthink-trace-${stamp}.json`;
}

export async function segment(thinkingTokens, thinkingText, answer) {
  const body = thinkingTokens.length ? { tokens: thinkingTokens.map((t) => t.text), answer }
    : { text: thinkingText || "", answer };
  const response = await fetch("/viewer/segment", { method: "POST", headers: apiHeaders(), body: JSON.stringify(body) });
  if (!response.ok) throw new Error(`segmentation failed: HTTP ${response.status}`);
  return response.json();
}

// Headers for the server's API: the key from the settings when the server asks for one.
export function apiHeaders() {
  const key = document.getElementById("api_key")?.value.trim();
  return { "Content-Type": "application/json", ...(key ? { Authorization: `Bearer ${key}` } : {}) };
}
