// cogql playground: the editor, one websocket to run queries, and the views of a run.
"use strict";

const initial = JSON.parse(document.getElementById("initial").textContent);
const TOKEN = initial.token;
const $ = (id) => document.getElementById(id);

// ---------------------------------------------------------------- small helpers

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key === "style") Object.assign(node.style, value);  // CSSOM: allowed by the CSP
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child !== null && child !== undefined) {
      node.append(child instanceof Node ? child : String(child));
    }
  }
  return node;
}

function escapeHtml(text) {
  return text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
}

// a token's text with its whitespace visible
function shown(text) {
  if (text === "") return "⏹ end";
  return text.replace(/ /g, "␣").replace(/\n/g, "⏎").replace(/\t/g, "⇥");
}

function percent(logprob) {
  if (logprob === null || logprob === undefined) return "–";
  const p = Math.exp(logprob) * 100;
  return p >= 10 ? p.toFixed(0) + "%" : p >= 0.1 ? p.toFixed(1) + "%" : p.toExponential(0) + "%";
}

function fixed(x, digits) {
  return x === null || x === undefined ? "–" : Number(x).toFixed(digits);
}

// ---------------------------------------------------------------- highlighting the query

const DECODERS = new Set(["argmax", "sample", "beam", "beam_search", "beam_sample", "best_k"]);
const KEYWORDS = new Set(["where", "distribution", "from", "in", "and", "or", "not", "for",
  "if", "elif", "else", "return", "def", "import", "as", "while", "with", "is", "None",
  "True", "False", "async", "await", "lambda", "pass", "break", "continue"]);
const FUNCTIONS = new Set(["STOPS_AT", "STOPS_BEFORE", "TOKENS", "INT", "REGEX", "len",
  "ESCAPED", "ERASE", "range", "str", "int", "float", "list", "dict"]);

// [start, end, class] spans of a query's source
function lexQuery(source) {
  const spans = [];
  const n = source.length;
  let i = 0;
  let lineStart = true;
  while (i < n) {
    const c = source[i];
    if (c === "\n") { lineStart = true; i++; continue; }
    if (c === " " || c === "\t" || c === "\r") { i++; continue; }
    if (c === "#") {
      const end = source.indexOf("\n", i);
      const stop = end < 0 ? n : end;
      spans.push([i, stop, "k-com"]);
      i = stop;
      continue;
    }
    if (c === '"' || c === "'") {
      i = lexString(source, i, spans);
      lineStart = false;
      continue;
    }
    if (/[A-Za-z_]/.test(c)) {
      let j = i + 1;
      while (j < n && /[A-Za-z0-9_]/.test(source[j])) j++;
      const word = source.slice(i, j);
      if (source[j] === '"' || source[j] === "'") {  // a prefixed string: f"...", r"..."
        if (/^[rRbBfFuU]{1,2}$/.test(word)) { i = lexString(source, i, spans, j); continue; }
      }
      let kind = null;
      if (DECODERS.has(word) && lineStart) kind = "k-dec";
      else if (KEYWORDS.has(word)) kind = "k-kw";
      else if (FUNCTIONS.has(word)) kind = "k-fn";
      if (kind) spans.push([i, j, kind]);
      lineStart = false;
      i = j;
      continue;
    }
    if (/[0-9]/.test(c)) {
      let j = i + 1;
      while (j < n && /[0-9._eE]/.test(source[j])) j++;
      spans.push([i, j, "k-num"]);
      i = j;
      lineStart = false;
      continue;
    }
    lineStart = false;
    i++;
  }
  return spans;
}

// a string literal from `start` (its quote at `quote`, after any prefix): the string, and in
// it the holes [X] and interpolations {x}; returns where it ends
function lexString(source, start, spans, quote) {
  const q = quote === undefined ? start : quote;
  const mark = source[q];
  const triple = source.slice(q, q + 3) === mark.repeat(3);
  const closing = triple ? mark.repeat(3) : mark;
  let i = q + closing.length;
  const opened = i;
  const n = source.length;
  let end = -1;
  let chunk = opened;
  const inner = [];
  while (i < n) {
    if (source[i] === "\\") { i += 2; continue; }
    if (source.startsWith(closing, i)) { end = i + closing.length; break; }
    if (!triple && source[i] === "\n") { end = i; break; }
    if (source[i] === "[") {
      const close = source.indexOf("]", i);
      const nl = source.indexOf("\n", i);
      if (close > i && (nl < 0 || close < nl || triple)) {
        inner.push([chunk, i, "k-str"], [i, close + 1, "k-hole"]);
        i = close + 1;
        chunk = i;
        continue;
      }
    }
    if (source[i] === "{" && source[i + 1] !== "{") {
      const close = source.indexOf("}", i);
      if (close > i) {
        inner.push([chunk, i, "k-str"], [i, close + 1, "k-interp"]);
        i = close + 1;
        chunk = i;
        continue;
      }
    }
    i++;
  }
  if (end < 0) end = n;
  inner.push([chunk, end, "k-str"]);
  spans.push([start, opened, "k-str"]);
  for (const span of inner) if (span[1] > span[0]) spans.push(span);
  return end;
}

// the source as HTML, highlighted, with the error's span (line, col: 1-based) underlined
function highlighted(source, error) {
  const spans = lexQuery(source).filter((s) => s[1] > s[0]).sort((a, b) => a[0] - b[0]);
  let errStart = -1;
  let errEnd = -1;
  if (error && error.line) {
    const lines = source.split("\n");
    const line = Math.min(error.line, lines.length);
    let offset = 0;
    for (let k = 0; k < line - 1; k++) offset += lines[k].length + 1;
    const text = lines[line - 1] || "";
    const col = Math.max(0, Math.min((error.col || 1) - 1, text.length));
    errStart = offset + col;
    const word = /^[A-Za-z0-9_]+/.exec(text.slice(col));
    errEnd = offset + col + Math.max(1, word ? word[0].length : 1);
    if (col >= text.length) errStart = Math.max(offset + text.length - 1, offset);
  }
  // cut the text at every span and error boundary; each piece gets the classes covering it
  const cuts = new Set([0, source.length]);
  for (const [a, b] of spans) { cuts.add(a); cuts.add(b); }
  if (errStart >= 0) { cuts.add(errStart); cuts.add(Math.min(errEnd, source.length)); }
  const points = [...cuts].filter((p) => p >= 0 && p <= source.length).sort((a, b) => a - b);
  let html = "";
  let s = 0;
  for (let k = 0; k + 1 < points.length; k++) {
    const a = points[k];
    const b = points[k + 1];
    while (s < spans.length && spans[s][1] <= a) s++;
    const classes = [];
    for (let t = s; t < spans.length && spans[t][0] <= a; t++) {
      if (spans[t][1] >= b) classes.push(spans[t][2]);
    }
    const cls = classes.length ? classes[classes.length - 1] : "";
    const isErr = errStart >= 0 && a >= errStart && b <= errEnd;
    const names = [cls, isErr ? "k-err" : ""].filter(Boolean).join(" ");
    const text = escapeHtml(source.slice(a, b));
    html += names ? `<span class="${names}"${isErr ? ' id="error-mark"' : ""}>${text}</span>` : text;
  }
  if (errStart >= source.length) html += '<span class="k-err" id="error-mark"> </span>';
  return html + "\n";
}

// ---------------------------------------------------------------- the editor

const editor = $("editor");
const overlay = $("highlight");
const gutter = $("gutter");
let shownError = null;
let checkTimer = null;
let inputValues = {};

function paint() {
  overlay.innerHTML = highlighted(editor.value, shownError);
  paintGutter();
  followScroll();
}

function paintGutter() {
  const lines = editor.value.split("\n").length;
  const bad = shownError ? shownError.line : 0;
  gutter.replaceChildren(...Array.from({ length: lines }, (_, i) =>
    el("span", { class: i + 1 === bad ? "bad" : "", text: `${i + 1}\n` })));
}

function followScroll() {
  overlay.scrollTop = gutter.scrollTop = editor.scrollTop;
  overlay.scrollLeft = editor.scrollLeft;
}

function showError(error) {
  shownError = error && error.line ? error : null;
  const box = $("error");
  if (!error) { box.hidden = true; box.textContent = ""; }
  else { box.hidden = false; box.textContent = error.terminal || error.message; }
  paint();
}

async function checkSource() {
  const source = editor.value;
  let answer;
  try {
    const response = await fetch("/api/check", {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-Cogql-Token": TOKEN },
      body: JSON.stringify({ source }),
    });
    answer = await response.json();
  } catch (e) {
    return;
  }
  if (source !== editor.value) return;  // edited since: a newer check is on its way
  if (answer.ok) {
    showError(null);
    showInputs(answer.inputs);
    $("decoder").textContent = answer.decoder;
  } else {
    showError(answer.error);
  }
}

function scheduleCheck() {
  clearTimeout(checkTimer);
  checkTimer = setTimeout(checkSource, 250);
}

function showInputs(names) {
  const box = $("inputs");
  for (const input of box.querySelectorAll("input")) inputValues[input.name] = input.value;
  box.replaceChildren();
  if (!names.length) { box.append(el("p", { class: "hint", text: "the query reads no inputs" })); return; }
  for (const name of names) {
    const input = el("input", { name, spellcheck: "false", placeholder: "a Python literal, or text" });
    input.value = inputValues[name] || "";
    box.append(el("label", {}, el("span", { text: name }), input));
  }
}

function inputs() {
  const out = {};
  for (const input of $("inputs").querySelectorAll("input")) out[input.name] = input.value;
  return out;
}

editor.addEventListener("input", () => { paint(); scheduleCheck(); });
editor.addEventListener("scroll", followScroll);
editor.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); runQuery(); }
  else if (e.key === "Tab") {
    e.preventDefault();
    const { selectionStart: a, selectionEnd: b } = editor;
    editor.setRangeText("    ", a, b, "end");
    paint();
    scheduleCheck();
  }
});

// ---------------------------------------------------------------- the run's state and views

let run = null;  // the views' state of the current run

function newRun() {
  return {
    started: performance.now(),
    columns: new Map(),   // run index -> { el, pre, segments: [] }
    colours: new Map(),   // variable -> colour index
    calls: new Map(),     // call id -> ModelCall
    nodes: new Map(),     // hypothesis id -> node
    kept: new Set(),
    results: new Map(),   // hypothesis id -> rank
    dirty: new Set(),
    chosen: null,
  };
}

function column(index) {
  let col = run.columns.get(index);
  if (!col) {
    const pre = el("pre", { class: "prompt" });
    const box = el("div", { class: "run", "data-run": index }, el("h3", { text: `run ${index}` }), pre);
    col = { el: box, pre, segments: [] };
    run.columns.set(index, col);
    const after = [...run.columns.keys()].filter((k) => k > index).sort((a, b) => a - b)[0];
    const output = $("output");
    if (after === undefined) output.append(box);
    else output.insertBefore(box, run.columns.get(after).el);
    for (const c of run.columns.values()) c.el.querySelector("h3").hidden = run.columns.size < 2;
  }
  return col;
}

function colour(name) {
  if (!run.colours.has(name)) run.colours.set(name, run.colours.size % 6);
  return run.colours.get(name);
}

// the open segment of `variable` in a column (a hole being generated), made if needed
function openSegment(col, variable) {
  for (let k = col.segments.length - 1; k >= 0; k--) {
    const seg = col.segments[k];
    if (seg.variable === variable && seg.open) return seg;
  }
  const seg = { variable, text: "", tokens: [], open: variable !== null, node: null };
  seg.node = variable === null ? document.createTextNode("") : el("span", {
    class: `var v${colour(variable)} open`, "data-name": variable });
  col.segments.push(seg);
  col.pre.append(seg.node);
  return seg;
}

function onText(e) {
  const col = column(e.run);
  if (e.variable === null) {
    const last = col.segments[col.segments.length - 1];
    const seg = last && last.variable === null ? last : openSegment(col, null);
    seg.text += e.text;
    seg.node.textContent = seg.text;
    return;
  }
  const seg = openSegment(col, e.variable);
  seg.text += e.text;
  run.dirty.add(seg);
}

function onToken(e) {
  const seg = openSegment(column(e.run), e.variable);
  seg.tokens.push(e);
  run.dirty.add(seg);
}

function onFinished(e) {
  const col = column(e.run);
  for (let k = col.segments.length - 1; k >= 0; k--) {
    const seg = col.segments[k];
    if (seg.variable === e.name && seg.open) {
      seg.open = false;
      seg.node.classList.remove("open");
      break;
    }
  }
}

// a hole's text, cut at its tokens' boundaries into clickable spans
function renderSegment(seg) {
  const parts = [];
  let at = 0;
  seg.tokens.forEach((t, k) => {
    const start = Math.max(t.start, at);
    const end = Math.min(t.start + t.text.length, seg.text.length);
    if (start > at) parts.push(document.createTextNode(seg.text.slice(at, start)));
    if (end > start) {
      const span = el("span", { class: "tok", "data-tok": k, text: seg.text.slice(start, end) });
      if (t.logprob !== null && t.logprob < Math.log(0.05)) span.classList.add("unlikely");
      span.addEventListener("click", () => chooseToken(seg, k, span));
      if (run.chosen && run.chosen.seg === seg && run.chosen.k === k) span.classList.add("chosen");
      parts.push(span);
      at = end;
    }
  });
  if (at < seg.text.length) parts.push(document.createTextNode(seg.text.slice(at)));
  seg.node.replaceChildren(...parts);
}

function chooseToken(seg, k, span) {
  for (const old of document.querySelectorAll(".tok.chosen")) old.classList.remove("chosen");
  span.classList.add("chosen");
  run.chosen = { seg, k };
  const t = seg.tokens[k];
  const view = $("token-view");
  const call = run.calls.get(t.call);
  const allowed = t.allowed === null ? "not known" : `${t.allowed} token${t.allowed === 1 ? "" : "s"}`;
  view.replaceChildren(
    el("div", { class: "head" }, "token ", el("b", { text: shown(t.text) }), ` in ${t.variable}` +
      ` · log-prob ${fixed(t.logprob, 3)} (${percent(t.logprob)})`),
    el("div", { class: "hint", text: t.beam ? "the beam's candidates at this step (the search tree shows them all)"
      : `the constraints allowed ${allowed} here` + (call ? ` · model call #${call.number}` : "") }),
  );
  for (const a of t.alternatives) {
    const row = el("div", { class: "alt" + (a.token === t.token ? " taken" : "") +
      (a.allowed === false ? " banned" : "") },
      el("span", { text: shown(a.text) }),
      el("span", { class: "bar" }, el("i", { style: { width: `${Math.max(0.5, Math.exp(a.logprob ?? -1e9) * 100)}%` } })),
      el("span", { text: `${fixed(a.logprob, 2)}` }));
    row.title = `${percent(a.logprob)}${a.allowed === false ? " · not allowed by the constraints" : ""}`;
    view.append(row);
  }
}

// calls are numbered within the run (their ids count the process's calls)
function onCall(e) {
  run.calls.set(e.id, { ...e, number: run.calls.size + 1 });
  const tr = el("tr", { class: [e.ahead ? "ahead" : "", e.status === "cancelled" ? "cancelled" : ""].join(" ").trim(),
    "data-kind": e.kind, "data-status": e.status },
    el("td", { text: run.calls.get(e.id).number }), el("td", { text: e.kind }), el("td", { text: e.run }),
    el("td", { text: e.ahead ? "ahead" : "now" }), el("td", { text: e.status }),
    el("td", { text: e.prompt_tokens }), el("td", { text: e.tokens }),
    el("td", { text: fixed(e.seconds * 1000, 0) }),
    el("td", { text: e.prediction ? `${e.prediction} of ${e.predictions}` : "–" }));
  $("calls").tBodies[0].append(tr);
  summarizeCalls();
}

function summarizeCalls(predictions) {
  const calls = [...run.calls.values()].filter((c) => c.status !== "cancelled");
  const tokens = calls.reduce((sum, c) => sum + c.tokens, 0);
  let text = `${calls.length} call${calls.length === 1 ? "" : "s"}, ${tokens} tokens`;
  if (predictions) text += `, ${predictions} Replicate prediction${predictions === 1 ? "" : "s"}`;
  $("calls-summary").textContent = text;
}

// ---- the beam decoders' search tree

function onHypothesis(e) {
  run.nodes.set(e.id, { ...e, children: [] });
  const parent = run.nodes.get(e.parent);
  if (parent) parent.children.push(e.id);
  scheduleTree();
}

function onSearchStep(e) {
  for (const id of [...e.kept, ...e.finished]) run.kept.add(id);
  if (e.final) e.finished.forEach((id, rank) => run.results.set(id, rank));
  scheduleTree();
}

let treeTimer = null;
function scheduleTree() {
  $("tree-box").hidden = false;
  if (treeTimer === null) treeTimer = setTimeout(() => { treeTimer = null; drawTree(); }, 60);
}

// a beam result's tokens, from its path in the search tree: at each step the decoder's other
// candidates (the node's siblings) are the alternatives, log-probs the step's own
function attachBeamTokens() {
  for (const [id, rank] of run.results) {
    const col = run.columns.get(rank);
    if (!col) continue;
    const path = [];
    for (let n = run.nodes.get(id); n && n.parent !== null; n = run.nodes.get(n.parent)) path.unshift(n);
    const ends = new Map();
    for (const n of path) {
      const seg = n.variable && n.token ? col.segments.find((s) => s.variable === n.variable) : null;
      const parent = run.nodes.get(n.parent);
      if (!seg || !parent) continue;
      const step = (m) => m.logprob - parent.logprob;
      const candidates = parent.children.map((c) => run.nodes.get(c)).filter(Boolean)
        .sort((a, b) => b.logprob - a.logprob);
      const start = ends.get(seg) || 0;
      seg.tokens.push({ variable: n.variable, token: n.id, text: n.token, logprob: step(n), start,
        allowed: null, call: 0, beam: true,
        alternatives: candidates.map((c) => ({ token: c.id, text: c.token, logprob: step(c), allowed: null })) });
      ends.set(seg, start + n.token.length);
      run.dirty.add(seg);
    }
  }
  for (const seg of run.dirty) renderSegment(seg);
  run.dirty.clear();
}

// a run's end shows its whole tree at once, not a timer later
function flushTree() {
  if (treeTimer === null) return;
  clearTimeout(treeTimer);
  treeTimer = null;
  drawTree();
}

function drawTree() {
  if (!run) return;
  const roots = [...run.nodes.values()].filter((n) => !run.nodes.has(n.parent));
  const list = el("ul");
  for (const root of roots) list.append(treeNode(root));
  $("tree").replaceChildren(list);
}

function treeNode(node) {
  const label = node.parent === null ? "start" : shown(node.token);
  const classes = ["node"];
  if (run.kept.has(node.id) || node.parent === null) classes.push("kept");
  const rank = run.results.get(node.id);
  if (rank !== undefined) classes.push("result");
  const box = el("span", { class: classes.join(" "), "data-id": node.id,
    title: `hypothesis ${node.id}${node.variable ? " in " + node.variable : ""}${node.complete ? ", finished" : ""}` },
    label, el("small", { text: (rank !== undefined ? `#${rank + 1} ` : "") + fixed(node.logprob, 2) }));
  const item = el("li", {}, box);
  if (node.children.length) {
    const sub = el("ul");
    for (const id of node.children) sub.append(treeNode(run.nodes.get(id)));
    item.append(sub);
  }
  return item;
}

// ---- the result

function showResult(result) {
  const box = $("result");
  box.replaceChildren();
  const results = Array.isArray(result) ? result : [result];
  results.forEach((r, k) => {
    if (results.length > 1) box.append(el("h3", { text: `result ${k + 1}` + (r.logprob !== undefined ? ` · log-prob ${fixed(r.logprob, 2)}` : "") }));
    if (r.returned !== undefined) { box.append(el("div", { class: "vars", text: `returned ${r.returned}` })); return; }
    const vars = el("div", { class: "vars" });
    for (const [name, value] of Object.entries(r.variables)) {
      const tag = el("span", { class: `var v${run.colours.has(name) ? run.colours.get(name) : colour(name)}`, "data-name": "" }, name);
      vars.append(el("div", {}, tag, ` = ${JSON.stringify(value)}`));
    }
    box.append(vars);
    if (r.distribution) {
      box.append(el("h3", { text: `P(${r.distribution_variable})` }));
      const best = Math.max(...r.distribution.map((d) => d[1]));
      for (const [option, p] of r.distribution) {
        box.append(el("div", { class: "dist" + (p === best ? " best" : "") },
          el("span", { text: JSON.stringify(option) }),
          el("span", { class: "bar" }, el("i", { style: { width: `${(p * 100).toFixed(1)}%` } })),
          el("span", { text: p.toFixed(3) })));
      }
    }
  });
  summarizeCalls(results[0] && results[0].predictions);
}

// ---------------------------------------------------------------- the websocket

let socket = null;
let queued = [];

function connect() {
  socket = new WebSocket(`ws://${location.host}/ws?token=${encodeURIComponent(TOKEN)}`);
  socket.addEventListener("open", () => { for (const m of queued) socket.send(m); queued = []; });
  socket.addEventListener("message", (m) => receive(JSON.parse(m.data)));
  socket.addEventListener("close", () => {
    setStatus("disconnected: is the playground still running?", "error");
    $("run").disabled = true;
    $("stop").disabled = true;
  });
}

function sendMessage(message) {
  const text = JSON.stringify(message);
  if (socket.readyState === WebSocket.OPEN) socket.send(text);
  else queued.push(text);
}

function setStatus(text, kind) {
  const status = $("status");
  status.textContent = text;
  status.className = kind;
}

function running(yes) {
  $("run").disabled = yes;
  $("stop").disabled = !yes;
  document.body.dataset.state = yes ? "running" : "idle";
}

function receive(message) {
  switch (message.type) {
    case "started":
      run = newRun();
      $("output").replaceChildren();
      $("calls").tBodies[0].replaceChildren();
      $("calls-summary").textContent = "";
      $("tree").replaceChildren();
      $("tree-box").hidden = true;
      $("token-view").replaceChildren(el("p", { class: "hint", text: "no token chosen" }));
      $("result").replaceChildren(el("p", { class: "hint", text: "running…" }));
      showError(null);
      running(true);
      setStatus("running…", "running");
      break;
    case "events":
      if (!run) return;
      for (const e of message.events) dispatch(e);
      for (const seg of run.dirty) renderSegment(seg);
      run.dirty.clear();
      break;
    case "finished":
      flushTree();
      attachBeamTokens();
      showResult(message.result);
      running(false);
      setStatus(`finished in ${((performance.now() - run.started) / 1000).toFixed(1)} s`, "done");
      document.body.dataset.state = "finished";
      break;
    case "stopped":
      flushTree();
      running(false);
      setStatus("stopped", "stopped");
      document.body.dataset.state = "stopped";
      if (run) $("result").replaceChildren(el("p", { class: "hint", text: "stopped before the end" }));
      break;
    case "error":
      running(false);
      showError(message);
      setStatus(`error: ${message.kind || "request"}`, "error");
      document.body.dataset.state = "error";
      if (run) $("result").replaceChildren(el("p", { class: "hint", text: "the run failed" }));
      break;
    default:
      break;
  }
}

function dispatch(e) {
  switch (e.type) {
    case "TextAppended": onText(e); break;
    case "TokenGenerated": onToken(e); break;
    case "VariableFinished": onFinished(e); break;
    case "ModelCall": onCall(e); break;
    case "HypothesisGrown": onHypothesis(e); break;
    case "SearchStep": onSearchStep(e); break;
    default: break;
  }
}

function runQuery() {
  sendMessage({ type: "run", source: editor.value, inputs: inputs(), model: $("model").value });
}

$("run").addEventListener("click", runQuery);
$("stop").addEventListener("click", () => sendMessage({ type: "stop" }));

// ---------------------------------------------------------------- start

for (const name of initial.models) $("model-names").append(el("option", { value: name }));
$("model").value = initial.model || "";
editor.value = initial.source || "";
paint();
checkSource();
connect();
document.body.dataset.state = "idle";
