// The logitcache viewer: plain JS over the REST API (no build step, no external resources).
//
// Views: a first-run page (no shard yet), a shard's overview (completeness, manifest, histograms)
// and the sequence browser (pages of seqs, a jump box, the tokens of one seq coloured by the
// absolute entropy of their targets, the distribution at one position, optionally beside the same
// position of a second shard). What is on screen lives in the address (?shard=&view=&seq=&pos=
// &compare=&scale=), so a link or a reload restores it and the back button steps through it.
"use strict";

const PAGE = 25;
const POLL_MS = 3000;  // the first-run page looks for shards this often
const LOG_FLOOR = -4;  // the log scale's left edge: 10^-4
const $ = (id) => document.getElementById(id);
const state = {
  server: null,  // /v1/server
  shards: [],  // /v1/shards
  shard: null,  // its number
  info: null,  // /v1/shards/{shard}
  view: "overview",  // "overview" | "browse"
  starts: [0],  // the starts of the pages paged through (the last one is shown)
  next: null,
  seq: null,
  seqBody: null,  // /v1/shards/{shard}/sequences/{seq}
  pos: null,
  compare: null,  // the second shard's number
  compareInfo: null,
  compareSeq: null,  // {seq, body} or {seq, error} of the second shard
  scale: "linear",
  remembered: { seq: null, pos: null },  // where the browser was, for a return from the overview
  generation: 0,  // bumped by every navigation: answers to an older one are dropped
};

class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

async function api(path) {
  const response = await fetch(path);
  const isJson = (response.headers.get("content-type") || "").includes("application/json");
  const body = isJson ? await response.json() : null;
  if (!response.ok) {
    const detail = body && body.detail;
    throw new ApiError(typeof detail === "string" ? detail : `${response.status} ${response.statusText}`, response.status);
  }
  return body;  // the error line is cleared by a new navigation (openShard, openSequence), not by any answer
}

function show(error) {
  $("error").textContent = error ? String(error.message || error) : "";
}

function el(tag, content, className) {
  const node = document.createElement(tag);
  if (content !== undefined && content !== null) node.textContent = content;
  if (className) node.className = className;
  return node;
}

function fmt(x, digits = 3) {
  if (x === null || x === undefined) return "–";
  if (Number.isInteger(x)) return x.toLocaleString("en");
  if (Math.abs(x) < 1e-9) return "0";  // float noise: a sampled target's residual
  return Math.abs(x) >= 1e-3 || x === 0 ? x.toFixed(digits) : x.toExponential(1);
}

function methodLabel(m) {
  if (!m) return "unreadable manifest";
  if (m.method === "sampled") return `sampled N = ${m.rounds}` + (m.temperature !== 1 ? `, t = ${m.temperature}` : "");
  return `top-${m.k}` + (m.top_p !== null && m.top_p !== undefined ? `, p = ${m.top_p}` : "");
}

// ---- tokens: whitespace made visible, undecodable pieces with their id ----------------------------

const MARKS = { " ": "·", "\t": "→", "\n": "↵", "\r": "␍" };

// A node showing `token` (the decoded string, or null) for id `id`: spaces as ·, tabs as →,
// newlines as ↵ (dimmed), and ‹id› after a string holding U+FFFD (bytes that decode to no character).
function tokenNode(id, token, tag = "span", className = "") {
  const node = el(tag, null, className);
  if (token === null || token === undefined) {
    node.append(el("span", `#${id}`, "tok-id only"));
    return node;
  }
  let run = "";
  for (const ch of token) {
    if (MARKS[ch] !== undefined) {
      if (run) node.append(run);
      run = "";
      node.append(el("span", MARKS[ch], "ws"));
    } else {
      run += ch;
    }
  }
  if (run) node.append(run);
  if (token === "") node.append(el("span", "∅", "ws"));
  if (token.includes("\uFFFD")) node.append(el("span", `‹${id}›`, "tok-id"));
  return node;
}

// ---- the address ---------------------------------------------------------------------------------

function writeUrl(push) {
  const params = new URLSearchParams();
  if (state.shard !== null) params.set("shard", state.shard);
  params.set("view", state.view);
  if (state.view === "browse" && state.seq !== null) params.set("seq", state.seq);
  if (state.view === "browse" && state.seq !== null && state.pos !== null) params.set("pos", state.pos);
  if (state.compare !== null) params.set("compare", state.compare);
  if (state.scale !== "linear") params.set("scale", state.scale);
  const query = "?" + params.toString();
  if (query === location.search) return;
  if (push) history.pushState(null, "", query);
  else history.replaceState(null, "", query);
}

function intParam(params, name) {
  const value = params.get(name);
  return value !== null && /^\d+$/.test(value) ? Number(value) : null;
}

// ---- start, and the first-run page ---------------------------------------------------------------

async function start() {
  state.server = await api("/v1/server");
  state.shards = await api("/v1/shards");
  if (!state.shards.length) {
    firstRun();
    return;
  }
  $("first-run").hidden = true;
  $("controls").hidden = false;
  const select = $("shard");
  select.replaceChildren(...state.shards.map((s) => {
    const what = s.damage ? "DAMAGED" : `${methodLabel(s.manifest)}, ${s.sequences} seqs`;
    const option = el("option", `${s.shard} (${what})`);
    option.value = s.shard;
    return option;
  }));
  await restore();
}

function firstRun() {
  $("controls").hidden = true;
  $("overview").hidden = true;
  $("browse").hidden = true;
  const page = $("first-run");
  // a server listening on every interface names none of them: this page's host is one that reaches it
  const address = (state.server.grpc_address || "HOST:PORT").replace(/^(0\.0\.0\.0|\[::\]|::)(?=:)/, location.hostname);
  const token = state.server.writes_need_token ? " --auth-token TOKEN" : "";
  $("teacher-command").textContent =
    `logitcache teacher --model path/to/hf-model --data corpus.bin --seq-len 1024 \\\n` +
    `    --server ${address} --shard 0${token}`;
  page.hidden = false;
  setTimeout(poll, POLL_MS);
}

// On the first-run page: look for shards until one appears (a failed look is shown, and retried).
async function poll() {
  try {
    const shards = await api("/v1/shards");
    if (shards.length) {
      await start();
      return;
    }
  } catch (error) {
    show(error);
  }
  setTimeout(poll, POLL_MS);
}

// Put the screen in the state the address describes.
async function restore() {
  const params = new URLSearchParams(location.search);
  const known = (n) => n !== null && state.shards.some((s) => s.shard === n);
  const wanted = intParam(params, "shard");
  const shard = known(wanted) ? wanted : state.shards[0].shard;
  const compare = intParam(params, "compare");
  state.compare = known(compare) && compare !== shard ? compare : null;
  state.scale = params.get("scale") === "log" ? "log" : "linear";
  $("scale").value = state.scale;
  const seq = intParam(params, "seq");
  const view = params.get("view") === "browse" || (params.get("view") === null && seq !== null) ? "browse" : "overview";
  await openShard(shard, { view, seq, pos: intParam(params, "pos"), push: false });
}

// ---- a shard -------------------------------------------------------------------------------------

// Open `shard` in `view`; in the browser, at `seq` and `pos` when given, else at `keep`'s seq when
// the shard holds it (a switch of shards stays on the same seq), else at the shard's first seq.
async function openShard(shard, { view, seq = null, pos = null, keep = null, push = true }) {
  const generation = ++state.generation;
  show(null);
  state.shard = shard;
  state.view = view;
  state.seq = null;
  state.seqBody = null;
  state.pos = null;
  state.compareSeq = null;
  $("shard").value = shard;
  fillCompare();
  clearSequence();
  let info;
  try {
    info = await api(`/v1/shards/${shard}`);
  } catch (error) {
    if (!(error instanceof ApiError) || error.status !== 404 || generation !== state.generation) throw error;
    await start();  // deleted meanwhile: list the shards again (the first-run page when none is left)
    return;
  }
  if (generation !== state.generation) return;
  state.info = info;
  state.compareInfo = null;
  if (state.compare !== null) {
    try {
      state.compareInfo = await api(`/v1/shards/${state.compare}`);
    } catch (error) {
      if (!(error instanceof ApiError) || error.status !== 404) throw error;
      state.compare = null;  // the shard to compare with was deleted: compare with none
    }
    if (generation !== state.generation) return;
    fillCompare();
  }
  describeShard(info);
  showView(view);
  if (info.damage) {
    writeUrl(push);
    return;
  }
  if (view === "overview") {
    writeUrl(push);
    await loadOverview(generation);
    return;
  }
  if (seq === null && keep !== null && keep.seq !== null) {
    const probe = await api(`/v1/shards/${shard}/sequences?start=${keep.seq}&limit=1`);
    if (generation !== state.generation) return;
    if (probe.sequences.length && probe.sequences[0].seq === keep.seq) ({ seq, pos } = keep);
  }
  if (seq === null) seq = info.first_seq;
  state.starts = seq !== null && info.first_seq !== null && seq > info.first_seq ? [info.first_seq, seq] : [seq ?? 0];
  await loadPage();
  if (generation !== state.generation) return;
  if (seq !== null) await openSequence(seq, { pos, push });
  else writeUrl(push);
}

function fillCompare() {
  const select = $("compare");
  const others = state.shards.filter((s) => s.shard !== state.shard && !s.damage);
  select.replaceChildren(el("option", "none"), ...others.map((s) => {
    const option = el("option", `${s.shard} (${methodLabel(s.manifest)})`);
    option.value = s.shard;
    return option;
  }));
  select.firstChild.value = "";
  if (!others.some((s) => s.shard === state.compare)) state.compare = null;
  select.value = state.compare === null ? "" : String(state.compare);
}

function describeShard(info) {
  const m = info.manifest;
  $("shard-info").textContent = info.damage
    ? `Shard ${info.shard} is damaged: ${info.damage}`
    : `Shard ${info.shard}: V = ${fmt(m.vocab_size)}, ${methodLabel(m)}, ${fmt(info.sequences)} seqs, ` +
      `${fmt(info.positions)} positions, ${info.bytes_per_position} B/position` +
      `${info.missing ? `, ${fmt(info.missing)} missing` : ""}${info.sealed ? ", sealed" : ", not sealed"}`;
  const warning = $("tokenizer-warning");
  const t = info.tokenizer;
  warning.hidden = t.status === "matched";
  warning.className = t.status === "mismatch" ? "warn" : "note";
  const what = {
    mismatch: "⚠ Tokenizer mismatch: token ids only.",
    unverified: "Tokenizer unverified:",
    none: "No tokenizer: token ids only.",
    matched: "",
  }[t.status];
  warning.textContent = `${what} ${t.detail}`;
  warning.dataset.status = t.status;
}

function showView(view) {
  state.view = view;
  $("overview").hidden = view !== "overview";
  $("browse").hidden = view !== "browse";
  $("tab-overview").classList.toggle("active", view === "overview");
  $("tab-browse").classList.toggle("active", view === "browse");
  $("browse").classList.toggle("comparing", state.compare !== null);
}

// ---- the overview --------------------------------------------------------------------------------

function definitions(target, rows) {
  target.replaceChildren(...rows.flatMap(([term, value, className]) => {
    const dd = el("dd", value, className);
    dd.dataset.key = term;
    return [el("dt", term), dd];
  }));
}

async function loadOverview(generation) {
  const info = state.info;
  const m = info.manifest;
  definitions($("completeness"), [
    ["sequences", fmt(info.sequences)],
    ["positions", fmt(info.positions)],
    ["seqs stored", info.first_seq === null ? "none yet" : `${fmt(info.first_seq)} … ${fmt(info.last_seq)}`],
    ["missing", info.missing === null ? "unknown" : fmt(info.missing), info.missing ? "bad" : "good"],
    ["sealed", info.sealed ? "yes" : "no (may still be filling)"],
    ["complete", info.complete ? "yes" : "no", info.complete ? "good" : "bad"],
    ["bytes / position", fmt(info.bytes_per_position)],
    ["on disk", `${fmt(info.disk_bytes / 1048576, 1)} MiB`],
    ["damaged records", fmt(info.damaged_records), info.damaged_records ? "bad" : ""],
  ]);
  const gaps = info.gaps || [];
  $("gaps").textContent = gaps.length
    ? "Missing seqs: " + gaps.map(([a, b]) => (b - a === 1 ? `${a}` : `[${a}, ${b})`)).join(", ") +
      (gaps.length >= 100 ? " …" : "")
    : "";
  const rows = [
    ["method", methodLabel(m)],
    ["vocab_size", fmt(m.vocab_size)],
    ["seq_len", m.seq_len ? fmt(m.seq_len) : "any"],
    ["teacher", m.teacher || "(not recorded)"],
    ["tokenizer", m.tokenizer_fingerprint || "(not recorded)"],
    ["decoded with", info.tokenizer.name || `nothing (${info.tokenizer.status})`, info.tokenizer.status === "mismatch" ? "bad" : ""],
  ];
  if (m.run) {
    const r = m.run;
    rows.push(
      ["corpus", r.corpus_fingerprint],
      ["run", `rank ${r.rank} of ${r.world_size}: seqs [${fmt(r.seq_start)}, ${fmt(r.seq_stop)}) of ${fmt(r.sequences)}`],
      ["seed", String(r.seed)],
    );
  }
  definitions($("manifest"), rows);
  await loadStats(generation);
}

async function loadStats(generation) {
  const sample = Math.max(1, Math.min(10000, Number($("sample").value) || 100));
  $("histograms").replaceChildren(el("p", "counting…", "legend"));
  const stats = await api(`/v1/shards/${state.shard}/stats?sample=${sample}`);
  if (generation !== state.generation) return;
  $("stats-caption").textContent =
    `${fmt(stats.positions)} positions of the first ${fmt(stats.sampled_sequences)} seqs` +
    (stats.corrupt_sequences ? ` (${fmt(stats.corrupt_sequences)} corrupted, left out)` : "");
  const unique = stats.unique_tokens_histogram;
  const uniqueEdges = unique.map((_, i) => i - 0.5).concat([unique.length - 0.5]);
  const nats = (x) => x.toFixed(2);
  const edge = (h) => {  // enough digits to tell a bin's edges apart
    const width = h.edges.length > 1 ? h.edges[1] - h.edges[0] : 1;
    const digits = Math.max(2, Math.min(4, Math.ceil(-Math.log10(width))));
    return (x) => x.toFixed(digits);
  };
  $("histograms").replaceChildren(
    histogram("unique", "Unique ids per position", "positions",
      { edges: uniqueEdges.slice(1), counts: unique.slice(1), mean: stats.mean_unique_tokens },
      (a, b) => `${Math.round((a + b) / 2)}`),
    histogram("entropy", `Target entropy (nats, 0 … ${nats(stats.max_entropy)})`, "positions", stats.entropy_histogram, nats),
    histogram("residual", "Residual (ghost) mass 1 − Σ t", "positions", stats.residual_histogram, edge(stats.residual_histogram)),
    histogram("label", "Target probability of the next token", "positions", stats.label_prob_histogram, edge(stats.label_prob_histogram)),
    histogram("bytes", "Bytes per position (per seq)", "sequences", stats.bytes_per_position_histogram, edge(stats.bytes_per_position_histogram)),
  );
}

// A bar chart of `h` ({edges, counts, mean}) made of divs; every bar says its bin and count.
function histogram(name, title, unit, h, label) {
  const figure = el("figure", null, "hist");
  figure.dataset.name = name;
  const total = h.counts.reduce((a, b) => a + b, 0);
  const top = Math.max(1, ...h.counts);
  figure.append(el("figcaption", title));
  const plot = el("div", null, "hist-plot");
  h.counts.forEach((count, i) => {
    const bar = el("div", null, "hist-bar");
    const lo = h.edges[i];
    const hi = h.edges[i + 1];
    bar.style.height = `${(100 * count) / top}%`;
    bar.dataset.count = count;
    bar.title = name === "unique" ? `${label(lo, hi)} ids: ${count} ${unit}` : `[${label(lo)}, ${label(hi)}): ${count} ${unit}`;
    plot.append(bar);
  });
  figure.append(el("div", fmt(top), "hist-top"), plot);
  const axis = el("div", null, "hist-axis");
  if (name === "unique") axis.append(el("span", label(h.edges[0], h.edges[1])), el("span", label(h.edges.at(-2), h.edges.at(-1))));
  else axis.append(el("span", label(h.edges[0])), el("span", label(h.edges.at(-1))));
  figure.append(axis, el("p", `mean ${fmt(h.mean)} · ${fmt(total)} ${unit}`, "hist-summary"));
  return figure;
}

// ---- sequences -----------------------------------------------------------------------------------

function clearSequence() {
  $("seq-title").textContent = "Pick a sequence";
  $("seq-message").textContent = "";
  $("tokens").replaceChildren();
  $("legend").textContent = "";
  clearPosition();
}

function clearPosition() {
  $("pos-title").textContent = "No position selected: click a token";
  $("compare-info").textContent = "";
  $("compare-info").className = "";
  $("scale-caption").textContent = "";
  for (const col of [$("chart-main"), $("chart-compare")]) {
    col.querySelector(".chart-title").textContent = "";
    col.querySelector(".pos-info").textContent = "";
    col.querySelector(".chart").replaceChildren();
  }
  $("chart-compare").hidden = true;
}

async function loadPage() {
  const shard = state.shard;
  const start = state.starts[state.starts.length - 1];
  $("prev").disabled = $("next").disabled = true;  // until this page is in: a second click would page from a stale next
  const page = await api(`/v1/shards/${shard}/sequences?start=${start}&limit=${PAGE}`);
  if (shard !== state.shard || start !== state.starts[state.starts.length - 1]) return;  // a newer page won
  state.next = page.next_start;
  $("seq-list").replaceChildren(...page.sequences.map((s) => {
    const item = el("li", `seq ${s.seq} · ${s.positions} pos`, "seq-item");
    item.dataset.seq = s.seq;
    item.classList.toggle("active", s.seq === state.seq);
    item.addEventListener("click", () => openSequence(s.seq, { push: true }).catch(show));
    return item;
  }));
  $("prev").disabled = state.starts.length < 2;
  $("next").disabled = state.next === null;
}

function entropyColour(entropy, top) {
  const x = Math.max(0, Math.min(1, entropy / top));
  return `hsl(${Math.round(220 * (1 - x))}, 70%, 82%)`;
}

async function openSequence(seq, { pos = null, push = true } = {}) {
  const generation = ++state.generation;
  show(null);
  const shard = state.shard;
  let body;
  try {
    body = await api(`/v1/shards/${shard}/sequences/${seq}`);
  } catch (error) {
    if (generation !== state.generation) return;
    if (!(error instanceof ApiError) || error.status !== 404) throw error;
    state.seq = null;
    state.seqBody = null;
    clearSequence();
    $("seq-title").textContent = `No seq ${seq}`;
    $("seq-message").textContent = error.message;
    $("seq-message").className = "warn";
    return;
  }
  if (generation !== state.generation) return;
  state.seq = seq;
  state.seqBody = body;
  state.pos = null;
  state.compareSeq = null;
  clearSequence();
  for (const item of document.querySelectorAll(".seq-item")) {
    item.classList.toggle("active", Number(item.dataset.seq) === seq);
  }
  $("seq-title").textContent = `Shard ${shard}, seq ${seq}: ${body.positions.length} positions`;
  const top = body.max_entropy;
  const what = body.method === "sampled" ? `N = ${state.info.manifest.rounds} draws` : `k = ${state.info.manifest.k} entries`;
  const nodes = [];
  for (const p of body.positions) {
    const tok = tokenNode(p.input_id, p.token, "span", "tok");
    tok.style.background = entropyColour(p.entropy, top);
    tok.title = `pos ${p.pos} · id ${p.input_id}: ${p.entries} entries, entropy ${p.entropy.toFixed(3)} nats, ` +
      `top ${p.top_token} (${p.top_prob.toFixed(3)})` + (p.residual > 1e-6 ? `, residual ${p.residual.toFixed(3)}` : "");
    tok.dataset.pos = p.pos;
    tok.addEventListener("click", () => openPosition(p.pos, { push: true }).catch(show));
    nodes.push(tok);
    if (p.token && p.token.includes("\n")) nodes.push(el("span", null, "nl-break"));
  }
  $("tokens").replaceChildren(...nodes);
  const legend = $("legend");
  legend.replaceChildren(
    "Token colour: entropy of the stored target, on an absolute scale: ",
    el("span", null, "swatch low"), " 0 nats → ", el("span", null, "swatch high"),
    ` ${top.toFixed(2)} nats = log ${Math.round(Math.exp(top))}, the most ${what} can show. ` +
      "· space, → tab, ↵ newline; ‹id› follows a token that does not decode on its own. Click a token for its distribution; ← → step.",
  );
  if (pos !== null && pos < body.positions.length) await openPosition(pos, { push });
  else writeUrl(push);
}

// ---- a position ----------------------------------------------------------------------------------

function barWidth(prob) {
  if (state.scale === "log") return prob <= 0 ? 0 : Math.max(0, Math.min(1, (Math.log10(prob) - LOG_FLOOR) / -LOG_FLOOR));
  return Math.max(0, Math.min(1, prob));
}

function barRow(nameNode, prob, valueText, className) {
  const row = el("div", null, "bar-row" + (className ? " " + className : ""));
  nameNode.classList.add("name");
  const track = el("div", null, "track");
  const bar = el("div", null, "bar");
  bar.style.width = `${100 * barWidth(prob)}%`;
  track.append(bar);
  row.dataset.prob = prob;
  row.append(nameNode, track, el("span", valueText, "value"));
  return row;
}

function drawPosition(col, shardInfo, body) {
  col.querySelector(".chart-title").textContent = `Shard ${shardInfo.shard} · ${methodLabel(shardInfo.manifest)}`;
  const info = col.querySelector(".pos-info");
  const labelIn = body.label !== null && body.token_ids.includes(body.label);
  info.replaceChildren(
    "input ", tokenNode(body.input_id, body.input_token, "code"), " → label ",
    body.label === null ? "none (last position)" : tokenNode(body.label, body.label_token, "code"),
    body.label !== null && !labelIn ? " (not among the stored entries)" : "",
    body.method === "topk" ? `; residual mass ${body.residual.toFixed(4)}` : "",
  );
  if (body.tokenizer.status === "mismatch") info.append(el("span", " ⚠ tokenizer mismatch: ids only", "warn-inline"));
  const rows = body.token_ids.map((id, i) => {
    const count = body.counts ? ` (${body.counts[i]})` : "";
    const row = barRow(tokenNode(id, body.tokens ? body.tokens[i] : null), body.probs[i], fmt(body.probs[i]) + count,
      id === body.label ? "label" : "");
    row.dataset.token = id;
    return row;
  });
  if (body.method === "topk") {
    const row = barRow(el("span", "residual"), body.residual, fmt(body.residual), "residual");
    row.title = "1 − Σ t: the teacher's mass outside the stored top-k (the ghost mass)";
    rows.push(row);
  }
  col.querySelector(".chart").replaceChildren(...rows);
}

async function openPosition(pos, { push = true } = {}) {
  const generation = ++state.generation;
  const shard = state.shard;
  const seq = state.seq;
  const body = await api(`/v1/shards/${shard}/sequences/${seq}/positions/${pos}`);
  if (generation !== state.generation) return;
  state.pos = pos;
  for (const tok of document.querySelectorAll(".tok")) {
    tok.classList.toggle("active", Number(tok.dataset.pos) === pos);
  }
  clearPosition();
  $("pos-title").textContent = `Position ${pos} of seq ${seq}`;
  $("scale-caption").textContent = state.scale === "log"
    ? "Bar length: log₁₀ of the probability, from 10⁻⁴ (empty) to 1 (full)."
    : "Bar length: the probability, on [0, 1] (a full bar is 1).";
  drawPosition($("chart-main"), state.info, body);
  $("charts").classList.toggle("comparing", state.compare !== null);
  if (state.compare !== null) await drawCompare(generation, seq, pos);
  writeUrl(push);
}

async function drawCompare(generation, seq, pos) {
  const other = state.compare;
  const col = $("chart-compare");
  col.hidden = false;
  col.querySelector(".chart-title").textContent = `Shard ${other} · ${methodLabel(state.compareInfo.manifest)}`;
  const note = $("compare-info");
  if (!state.compareSeq || state.compareSeq.seq !== seq || state.compareSeq.shard !== other) {
    let cached;
    try {
      cached = { shard: other, seq, body: await api(`/v1/shards/${other}/sequences/${seq}`) };
    } catch (error) {
      if (!(error instanceof ApiError) || error.status !== 404) throw error;
      cached = { shard: other, seq, error: error.message };
    }
    if (generation !== state.generation || other !== state.compare) return;  // a newer choice won
    state.compareSeq = cached;
  }
  if (state.compareSeq.error) {
    col.querySelector(".pos-info").textContent = `Not in shard ${other}: ${state.compareSeq.error}`;
    col.querySelector(".pos-info").className = "pos-info warn";
    note.textContent = `Shard ${other} does not hold seq ${seq}: nothing to compare.`;
    note.className = "warn";
    return;
  }
  const mine = state.seqBody.positions.map((p) => p.input_id);
  const theirs = state.compareSeq.body.positions.map((p) => p.input_id);
  const corpusA = state.info.manifest.run && state.info.manifest.run.corpus_fingerprint;
  const corpusB = state.compareInfo.manifest.run && state.compareInfo.manifest.run.corpus_fingerprint;
  const differ = mine.length !== theirs.length ? 0 : mine.findIndex((id, i) => id !== theirs[i]);
  if (corpusA && corpusB && corpusA !== corpusB) {
    note.textContent = `⚠ Different corpora (${corpusA} vs ${corpusB}): seq ${seq} is not the same text in both shards.`;
    note.className = "warn";
  } else if (differ !== -1) {
    note.textContent = `⚠ The input ids of seq ${seq} differ (first at pos ${differ}): not the same text in both shards.`;
    note.className = "warn";
  } else {
    note.textContent = `Same input ids in both shards${corpusA && corpusA === corpusB ? ` (corpus ${corpusA})` : ""}.`;
    note.className = "good";
  }
  if (pos >= theirs.length) {
    col.querySelector(".pos-info").textContent = `Shard ${other}'s seq ${seq} has only ${theirs.length} positions.`;
    return;
  }
  const body = await api(`/v1/shards/${other}/sequences/${seq}/positions/${pos}`);
  if (generation !== state.generation) return;
  drawPosition(col, state.compareInfo, body);
}

// ---- controls ------------------------------------------------------------------------------------

$("shard").addEventListener("change", (e) => {
  const keep = state.view === "browse" ? { seq: state.seq, pos: state.pos } : state.remembered;
  state.remembered = { seq: null, pos: null };
  openShard(Number(e.target.value), { view: state.view, keep }).catch(show);
});
$("compare").addEventListener("change", async (e) => {
  const value = e.target.value;
  state.compare = value === "" ? null : Number(value);
  state.compareInfo = state.compare === null ? null : await api(`/v1/shards/${state.compare}`).catch((err) => {
    show(err);
    return null;
  });
  if (state.compareInfo === null) state.compare = null;
  state.compareSeq = null;
  $("browse").classList.toggle("comparing", state.compare !== null);
  if (state.view === "browse" && state.seq !== null && state.pos !== null) await openPosition(state.pos, { push: true }).catch(show);
  else writeUrl(true);
});
$("scale").addEventListener("change", (e) => {
  state.scale = e.target.value === "log" ? "log" : "linear";
  if (state.view === "browse" && state.seq !== null && state.pos !== null) openPosition(state.pos, { push: false }).catch(show);
  else writeUrl(false);
});
for (const tab of document.querySelectorAll("#tabs button")) {
  tab.addEventListener("click", () => {
    if (state.view === tab.dataset.view) return;
    if (state.view === "browse") state.remembered = { seq: state.seq, pos: state.pos };
    const { seq, pos } = tab.dataset.view === "browse" ? state.remembered : { seq: null, pos: null };
    openShard(state.shard, { view: tab.dataset.view, seq, pos }).catch(show);
  });
}
$("jump").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = $("jump-seq").value.trim();
  if (!/^\d+$/.test(text)) {
    $("seq-message").textContent = `Expected a seq number (0, 1, 2, …), got "${text}".`;
    $("seq-message").className = "warn";
    return;
  }
  const seq = Number(text);
  openSequence(seq, { push: true }).then(() => {
    if (state.seq !== seq) return;
    state.starts = [...state.starts.slice(0, 1), seq].filter((s, i, all) => all.indexOf(s) === i);
    return loadPage();
  }).catch(show);
});
$("sample-form").addEventListener("submit", (e) => {
  e.preventDefault();
  loadStats(state.generation).catch(show);
});
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
document.addEventListener("keydown", (e) => {
  if (state.view !== "browse" || state.seqBody === null || state.pos === null) return;
  if (e.target instanceof HTMLInputElement || e.target instanceof HTMLSelectElement) return;
  const step = e.key === "ArrowRight" ? 1 : e.key === "ArrowLeft" ? -1 : 0;
  const pos = state.pos + step;
  if (step && pos >= 0 && pos < state.seqBody.positions.length) {
    e.preventDefault();
    openPosition(pos, { push: false }).catch(show);
  }
});
window.addEventListener("popstate", () => {
  show(null);
  restore().catch(show);
});
start().catch(show);
