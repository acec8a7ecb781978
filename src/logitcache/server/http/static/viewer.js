// The logitcache viewer: plain JS over the REST API (no build step, no external resources).
"use strict";

const PAGE = 25;
const $ = (id) => document.getElementById(id);
const state = { shard: null, starts: [0], next: null, seq: null, method: null };

async function api(path) {
  const response = await fetch(path);
  const isJson = (response.headers.get("content-type") || "").includes("application/json");
  const body = isJson ? await response.json() : null;
  if (!response.ok) throw new Error((body && body.detail) || `${response.status} ${response.statusText}`);
  show(null);
  return body;
}

function maximum(values, floor) {
  let best = floor;
  for (const v of values) if (v > best) best = v;  // no spread: sequences can be long
  return best;
}

function clearSequence() {
  state.seq = null;
  $("seq-title").textContent = "Pick a sequence";
  $("tokens").replaceChildren();
  clearPosition();
}

function clearPosition() {
  $("pos-title").textContent = "No position selected";
  $("pos-info").textContent = "";
  $("chart").replaceChildren();
}

function show(error) {
  $("error").textContent = error ? String(error.message || error) : "";
}

function text(tag, content, className) {
  const el = document.createElement(tag);
  el.textContent = content;
  if (className) el.className = className;
  return el;
}

async function loadShards() {
  const shards = await api("/v1/shards");
  const select = $("shard");
  select.replaceChildren(...shards.map((s) => {
    const what = s.damage ? "DAMAGED" : `${s.manifest.method}, ${s.sequences} seqs`;
    const option = text("option", `${s.shard} (${what})`);
    option.value = s.shard;
    return option;
  }));
  if (shards.length) await selectShard(Number(select.value));
}

async function selectShard(shard) {
  state.shard = shard;
  state.starts = [0];
  clearSequence();
  const info = await api(`/v1/shards/${shard}`);
  if (info.damage) {
    $("shard-info").textContent = `damaged: ${info.damage}`;
    return;
  }
  const m = info.manifest;
  const method = m.method === "sampled" ? `sampled, N = ${m.rounds}` : `top-${m.k}`;
  $("shard-info").textContent =
    `V = ${m.vocab_size}, ${method}, ${info.sequences} seqs, ${info.positions} positions, ` +
    `${info.bytes_per_position} B/position${info.missing ? `, ${info.missing} missing` : ""}` +
    `${info.sealed ? ", sealed" : ", not sealed"}`;
  await loadPage();
}

async function loadPage() {
  const start = state.starts[state.starts.length - 1];
  const page = await api(`/v1/shards/${state.shard}/sequences?start=${start}&limit=${PAGE}`);
  state.next = page.next_start;
  $("seq-list").replaceChildren(...page.sequences.map((s) => {
    const item = text("li", `seq ${s.seq} · ${s.positions} pos`, "seq-item");
    item.dataset.seq = s.seq;
    item.addEventListener("click", () => loadSequence(s.seq).catch(show));
    return item;
  }));
  $("prev").disabled = state.starts.length < 2;
  $("next").disabled = state.next === null;
}

function entropyColour(entropy, scale) {
  const x = Math.min(1, entropy / scale);
  return `hsl(${Math.round(220 * (1 - x))}, 70%, 82%)`;
}

async function loadSequence(seq) {
  const shard = state.shard;
  const body = await api(`/v1/shards/${shard}/sequences/${seq}`);
  if (shard !== state.shard) return;  // the shard changed while this was loading
  state.seq = seq;
  clearPosition();
  state.method = body.method;
  for (const item of document.querySelectorAll(".seq-item")) {
    item.classList.toggle("active", Number(item.dataset.seq) === seq);
  }
  $("seq-title").textContent = `Shard ${state.shard}, seq ${seq}: ${body.positions.length} positions`;
  const scale = maximum(body.positions.map((p) => p.entropy), 1e-6);
  $("tokens").replaceChildren(...body.positions.map((p) => {
    const tok = text("span", p.token !== null ? p.token : String(p.input_id), "tok");
    tok.style.background = entropyColour(p.entropy, scale);
    tok.title = `pos ${p.pos}: ${p.entries} entries, entropy ${p.entropy.toFixed(3)}, top ${p.top_token} (${p.top_prob.toFixed(3)})`;
    tok.dataset.pos = p.pos;
    tok.addEventListener("click", () => loadPosition(p.pos).catch(show));
    return tok;
  }));
}

async function loadPosition(pos) {
  const shard = state.shard;
  const seq = state.seq;
  const body = await api(`/v1/shards/${shard}/sequences/${seq}/positions/${pos}`);
  if (shard !== state.shard || seq !== state.seq) return;  // a newer choice won
  for (const tok of document.querySelectorAll(".tok")) {
    tok.classList.toggle("active", Number(tok.dataset.pos) === pos);
  }
  const name = (id, token) => (token !== null && token !== undefined ? JSON.stringify(token) : String(id));
  const label = body.label === null ? "none (last position)" : name(body.label, body.label_token);
  $("pos-title").textContent = `Position ${pos} of seq ${state.seq}`;
  const labelIn = body.label !== null && body.token_ids.includes(body.label);
  $("pos-info").textContent =
    `input ${name(body.input_id, body.input_token)} → label ${label}` +
    (body.label !== null && !labelIn ? " (not among the stored entries)" : "") +
    (body.residual > 1e-6 ? `; residual mass ${body.residual.toFixed(4)}` : "");
  const top = maximum(body.probs, 1e-12);
  $("chart").replaceChildren(...body.token_ids.map((id, i) => {
    const row = document.createElement("div");
    row.className = "bar-row" + (id === body.label ? " label" : "");
    row.dataset.token = id;
    const tokenName = body.tokens ? name(id, body.tokens[i]) : String(id);
    row.append(text("span", tokenName, "name"));
    const bar = text("div", "", "bar");
    bar.style.width = `${(100 * body.probs[i]) / top}%`;
    row.append(bar);
    const count = body.counts ? ` (${body.counts[i]})` : "";
    row.append(text("span", body.probs[i].toFixed(3) + count, "value"));
    return row;
  }));
}

$("shard").addEventListener("change", (e) => selectShard(Number(e.target.value)).catch(show));
$("next").addEventListener("click", () => {
  if (state.next !== null) {
    state.starts.push(state.next);
    loadPage().catch(show);
  }
});
$("prev").addEventListener("click", () => {
  if (state.starts.length > 1) {
    state.starts.pop();
    loadPage().catch(show);
  }
});
loadShards().catch(show);
