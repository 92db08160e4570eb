// moerules playground: edit a bundle, see what it does to a record, live.
// Plain JavaScript, no dependencies: the page must work offline.
"use strict";

const token = document.querySelector('meta[name="moerules-token"]').content;
const $ = (id) => document.getElementById(id);
const source = $("source"), gutter = $("gutter"), backdrop = $("backdrop");
const state = { version: "", schema: null, records: [], problems: [], timer: 0, seq: 0 };

async function api(path, body) {
  const response = await fetch(path, {
    method: body === undefined ? "GET" : "POST",
    headers: { "X-Moerules-Token": token, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = await response.json();
  if (!response.ok) throw new Error(data.error || `HTTP ${response.status}`);
  return data;
}

function status(text, bad) {
  const el = $("status");
  el.textContent = text;
  el.className = bad ? "bad" : "";
}

// -- editor: line numbers, problem highlights ------------------------------------------
function escapeHtml(text) {
  return text.replace(/[&<>]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;" }[c]));
}

function layout() {
  const lines = source.value.split("\n");
  const byLine = new Map();
  for (const p of state.problems) {
    if (!p.here) continue;
    const seen = byLine.get(p.line);
    if (!seen || p.severity === "error") byLine.set(p.line, p);
  }
  gutter.innerHTML = lines.map((_, i) => {
    const p = byLine.get(i + 1);
    const cls = p ? (p.severity === "error" ? "err" : "warn") : "";
    const title = p ? ` title="${escapeHtml(p.message).replace(/"/g, "&quot;")}"` : "";
    return `<div class="${cls}" data-line="${i + 1}"${title}>${i + 1}</div>`;
  }).join("");
  backdrop.innerHTML = lines.map((line, i) => {
    const p = byLine.get(i + 1);
    if (!p) return escapeHtml(line) + "\n";
    const cls = p.severity === "error" ? "err" : "warn";
    const at = Math.max(0, Math.min(line.length, p.col - 1));
    const word = line.slice(at).match(/^[^\s,:{}\[\]"'|]+/);
    const end = at + (word ? word[0].length : 1);
    const marked = escapeHtml(line.slice(0, at)) +
      `<mark class="${cls}">${escapeHtml(line.slice(at, end)) || " "}</mark>` +
      escapeHtml(line.slice(end));
    return `<span class="${cls}">${marked}</span>\n`;
  }).join("");
  source.style.height = `${lines.length * 20 + 16}px`;
  source.style.width = "100%";
  source.style.width = `${Math.max(source.scrollWidth, source.parentElement.clientWidth)}px`;
}

function showProblems(problems, compiled) {
  state.problems = problems;
  const list = $("problems");
  if (!problems.length) {
    list.innerHTML = compiled ? '<div class="ok">no problems</div>' : "";
  } else {
    list.innerHTML = "";
    for (const p of problems) {
      const div = document.createElement("div");
      div.className = p.severity;
      div.dataset.line = p.line;
      div.textContent = p.here ? `${p.line}:${p.col}: ${p.severity}: ${p.message}` : p.text;
      div.addEventListener("click", () => p.here && goTo(p.line, p.col));
      list.appendChild(div);
    }
  }
  layout();
}

function goTo(line, col) {
  const lines = source.value.split("\n");
  let offset = 0;
  for (let i = 0; i < line - 1 && i < lines.length; i++) offset += lines[i].length + 1;
  offset += Math.max(0, col - 1);
  source.focus();
  source.setSelectionRange(offset, offset);
  const top = (line - 1) * 20;
  const editor = $("editor");
  if (top < editor.scrollTop || top > editor.scrollTop + editor.clientHeight - 40) {
    editor.scrollTop = Math.max(0, top - 60);
  }
}

// -- live evaluation -------------------------------------------------------------------
function currentRecord() {
  return $("record").hidden ? ($("record-pick").value || "") : $("record").value;
}

function schedule() {
  clearTimeout(state.timer);
  state.timer = setTimeout(evaluate, 250);
}

async function evaluate() {
  const seq = ++state.seq;
  status("running…");
  let result;
  try {
    result = await api("/api/evaluate", { text: source.value, record: currentRecord() });
  } catch (error) {
    status(String(error.message || error), true);
    return;
  }
  if (seq !== state.seq) return; // a newer edit is on its way
  showProblems(result.problems, result.compiled);
  const errors = result.problems.filter((p) => p.severity === "error").length;
  const warnings = result.problems.length - errors;
  if (!result.compiled) {
    status(`${errors} error${errors === 1 ? "" : "s"}: the rules do not compile`, true);
    $("tab-requests").textContent = "(the rules do not compile: see the problems below the editor)";
    $("tab-trace").textContent = "";
    return;
  }
  status(warnings ? `compiled, ${warnings} warning${warnings === 1 ? "" : "s"}` : "compiled");
  if (result.error) {
    $("tab-requests").textContent = result.error;
    return;
  }
  $("tab-requests").textContent = result.requests.length
    ? result.requests.map((r) => `${r.method} ${r.url}\n` +
        Object.entries(r.headers).map(([k, v]) => `${k}: ${v}`).join("\n") + "\n\n" +
        JSON.stringify(r.body, null, 2)).join("\n\n")
    : "(no request: " + summary(result.report) + ")";
  $("tab-trace").textContent = result.trace;
}

function summary(report) {
  if (!report) return "no record";
  const parts = [];
  for (const [reason, n] of Object.entries(report.dropped || {})) parts.push(`${n} dropped: ${reason}`);
  for (const [reason, n] of Object.entries(report.dead_lettered || {})) parts.push(`${n} dead-lettered: ${reason}`);
  return parts.join("; ") || "nothing to send";
}

// -- tabs and buttons ------------------------------------------------------------------
function showTab(name) {
  for (const button of document.querySelectorAll(".tabs button")) {
    button.classList.toggle("active", button.dataset.tab === name);
  }
  for (const tab of ["requests", "trace", "diff", "tests"]) $(`tab-${tab}`).hidden = tab !== name;
}

async function runTests() {
  showTab("tests");
  const panel = $("tab-tests");
  panel.textContent = "running the tests…";
  try {
    const result = await api("/api/test", { text: source.value });
    panel.innerHTML = "";
    const head = document.createElement("div");
    head.className = "summary " + (result.failed ? "fail" : "pass");
    head.id = "tests-summary";
    head.textContent = result.files.length ? result.summary : "no tests next to this bundle (tests/*.yaml)";
    panel.appendChild(head);
    for (const file of result.files) {
      for (const c of file.cases || []) {
        const row = document.createElement("div");
        row.className = c.passed ? "pass" : "fail";
        row.textContent = `${c.passed ? "PASS" : "FAIL"} ${c.name}` +
          (c.passed ? "" : `\n  ${c.at}\n  ${c.failures.join("\n").replace(/\n/g, "\n  ")}`);
        panel.appendChild(row);
      }
      if (file.error) panel.appendChild(Object.assign(document.createElement("div"),
        { className: "fail", textContent: file.error }));
    }
  } catch (error) {
    panel.textContent = String(error.message || error);
  }
}

async function runDiff() {
  showTab("diff");
  const panel = $("tab-diff");
  panel.textContent = "comparing with the file on disk…";
  try {
    const result = await api("/api/diff", { text: source.value });
    panel.innerHTML = "";
    if (result.error) { panel.textContent = result.error; return; }
    const head = Object.assign(document.createElement("div"),
      { className: "summary", id: "diff-summary", textContent: result.summary });
    panel.appendChild(head);
    for (const group of result.groups) {
      const box = Object.assign(document.createElement("div"), { className: "group" });
      box.appendChild(Object.assign(document.createElement("h4"), { textContent: group.description }));
      const lines = group.changes.map((c) =>
        `line ${c.line} ${c.item}${c.detail ? ` (${c.detail})` : ""}: ` +
        `${JSON.stringify(c.old)} → ${JSON.stringify(c.new)}`);
      if (group.count > group.changes.length) lines.push(`… and ${group.count - group.changes.length} more`);
      box.appendChild(Object.assign(document.createElement("pre"), { textContent: lines.join("\n") }));
      panel.appendChild(box);
    }
  } catch (error) {
    panel.textContent = String(error.message || error);
  }
}

async function save() {
  try {
    const result = await api("/api/save", { text: source.value, version: state.version });
    state.version = result.version;
    status(`saved to ${result.saved}`);
  } catch (error) {
    status(String(error.message || error), true);
  }
}

// -- completion from the bundle's JSON Schema --------------------------------------------
function resolve(node) {
  let guard = 0;
  while (node && node.$ref && guard++ < 20) {
    node = state.schema.$defs[node.$ref.split("/").pop()];
  }
  return node || {};
}

function objectChoices(node) {
  // every object form a schema node allows (anyOf / oneOf / allOf opened)
  node = resolve(node);
  const out = [];
  for (const part of [...(node.anyOf || []), ...(node.oneOf || []), ...(node.allOf || [])]) {
    out.push(...objectChoices(part));
  }
  if (node.properties || node.additionalProperties) out.push(node);
  return out;
}

function childOf(nodes, key) {
  const out = [];
  for (const node of nodes.flatMap(objectChoices)) {
    if (key === "[]") {
      const r = resolve(node);
      if (r.items) out.push(r.items);
      continue;
    }
    if (node.properties && node.properties[key]) out.push(node.properties[key]);
    else if (node.additionalProperties && typeof node.additionalProperties === "object") {
      out.push(node.additionalProperties);
    }
  }
  // lists: a node may be a list of objects
  for (const node of nodes.map(resolve)) {
    if (key === "[]" && node.items) out.push(node.items);
    for (const part of [...(node.anyOf || []), ...(node.oneOf || [])]) {
      const r = resolve(part);
      if (key === "[]" && r.items) out.push(r.items);
    }
  }
  return out;
}

function yamlPath(lines, row, indent) {
  // the keys (and list items) enclosing a line at `indent`, read from the lines above it
  const path = [];
  let want = indent;
  for (let i = row - 1; i >= 0 && want > 0; i--) {
    const line = lines[i];
    if (!line.trim() || line.trim().startsWith("#")) continue;
    const lead = line.length - line.trimStart().length;
    const item = line.trimStart().startsWith("- ");
    const keyIndent = item ? lead + 2 : lead;
    if (item && keyIndent === want && lead < want) {
      path.unshift("[]");
      want = lead;
      const key = line.trimStart().slice(2).match(/^([^:#]+):\s*$/);
      if (key) { /* "- key:" opens the item; nothing more */ }
      continue;
    }
    if (lead < want) {
      const key = line.trim().replace(/^- /, "").match(/^([^:#\s][^:#]*):/);
      if (key) path.unshift(key[1].trim());
      if (item) path.splice(path.length - 1, 0, "[]");
      want = lead;
    }
  }
  return path;
}

function completions() {
  if (!state.schema) return [];
  const lines = source.value.slice(0, source.selectionStart).split("\n");
  const row = lines.length - 1;
  const current = lines[row];
  const prefixMatch = current.match(/^(\s*)(- )?([A-Za-z_]*)$/);
  if (!prefixMatch) return [];
  const indent = prefixMatch[1].length + (prefixMatch[2] ? 2 : 0);
  const all = source.value.split("\n");
  const path = yamlPath(all, row, indent);
  if (prefixMatch[2]) path.push("[]");
  let nodes = [state.schema];
  for (const key of path) nodes = childOf(nodes, key);
  const present = new Set(); // keys the block already has, above and below the caret
  for (const step of [-1, 1]) {
    for (let i = row + step; i >= 0 && i < all.length; i += step) {
      const lead = all[i].length - all[i].trimStart().length;
      if (!all[i].trim() || all[i].trim().startsWith("#")) continue;
      if (lead < indent || (lead === indent && all[i].trimStart().startsWith("- "))) break;
      const key = lead === indent && all[i].trim().match(/^([^:#]+):/);
      if (key) present.add(key[1]);
    }
  }
  const seen = new Map();
  for (const node of nodes.flatMap(objectChoices)) {
    for (const [key, value] of Object.entries(node.properties || {})) {
      if (!present.has(key) && key.startsWith(prefixMatch[3]) && !seen.has(key)) {
        seen.set(key, resolve(value).description || "");
      }
    }
  }
  return [...seen.entries()].map(([key, doc]) => ({ key, doc, typed: prefixMatch[3] }));
}

function showCompletions() {
  const items = completions();
  const list = $("completions");
  if (!items.length) { list.hidden = true; return; }
  list.innerHTML = "";
  items.forEach((item, i) => {
    const li = document.createElement("li");
    li.className = i === 0 ? "active" : "";
    li.dataset.key = item.key;
    li.innerHTML = `${escapeHtml(item.key)}<small>${escapeHtml(item.doc.slice(0, 60))}</small>`;
    li.addEventListener("mousedown", (event) => { event.preventDefault(); accept(item); });
    list.appendChild(li);
  });
  const row = source.value.slice(0, source.selectionStart).split("\n").length;
  list.style.top = `${row * 20 + 8}px`;
  list.style.left = "40px";
  list.hidden = false;
  list._items = items;
}

function accept(item) {
  const at = source.selectionStart;
  const insert = item.key.slice(item.typed.length) + ": ";
  source.setRangeText(insert, at, at, "end");
  $("completions").hidden = true;
  layout();
  schedule();
}

source.addEventListener("keydown", (event) => {
  const list = $("completions");
  if (event.ctrlKey && event.code === "Space") {
    event.preventDefault();
    showCompletions();
    return;
  }
  if (!list.hidden) {
    const items = [...list.children];
    const active = items.findIndex((li) => li.classList.contains("active"));
    if (event.key === "ArrowDown" || event.key === "ArrowUp") {
      event.preventDefault();
      const next = (active + (event.key === "ArrowDown" ? 1 : items.length - 1)) % items.length;
      items.forEach((li, i) => li.classList.toggle("active", i === next));
      return;
    }
    if (event.key === "Enter" || event.key === "Tab") {
      event.preventDefault();
      accept(list._items[Math.max(0, active)]);
      return;
    }
    if (event.key === "Escape") { list.hidden = true; return; }
  }
  if (event.key === "Tab") { // two spaces, as YAML wants
    event.preventDefault();
    source.setRangeText("  ", source.selectionStart, source.selectionEnd, "end");
    layout();
    schedule();
  }
});

source.addEventListener("input", () => {
  layout();
  if (!$("completions").hidden) showCompletions();
  schedule();
});
source.addEventListener("blur", () => { $("completions").hidden = true; });
window.addEventListener("resize", layout);

// -- start -------------------------------------------------------------------------------
async function start() {
  for (const button of document.querySelectorAll(".tabs button")) {
    button.addEventListener("click", () => showTab(button.dataset.tab));
  }
  $("run-tests").addEventListener("click", runTests);
  $("run-diff").addEventListener("click", runDiff);
  $("save").addEventListener("click", save);
  $("paste-toggle").addEventListener("click", () => {
    const pasting = $("record").hidden;
    $("record").hidden = !pasting;
    $("record-pick").disabled = pasting;
    $("paste-toggle").textContent = pasting ? "Use the sample" : "Paste a record";
    if (pasting && !$("record").value) $("record").value = $("record-pick").value;
    schedule();
  });
  $("record").addEventListener("input", schedule);
  $("record-pick").addEventListener("change", schedule);
  try {
    const data = await api("/api/state");
    state.version = data.version;
    state.schema = data.schema;
    $("bundle-path").textContent = data.bundle;
    document.title = `moerules playground: ${data.bundle}`;
    source.value = data.text;
    for (const record of data.records) {
      const option = document.createElement("option");
      option.value = record.text;
      option.textContent = `line ${record.line}: ${record.text.slice(0, 120)}`;
      $("record-pick").appendChild(option);
    }
    if (!data.records.length) $("paste-toggle").click();
    layout();
    await evaluate();
    document.body.dataset.ready = "true";
  } catch (error) {
    status(String(error.message || error), true);
  }
}

start();
