// The live job page: polls /api/job every second and redraws; no framework, no CDN.
"use strict";

const BOX_W = 210, BOX_H = 104, GAP_X = 90, GAP_Y = 24;

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  for (const c of children) e.append(c);
  return e;
}

function fmt(n) {
  if (n === null || n === undefined) return "-";
  if (n >= 1e6) return (n / 1e6).toFixed(2) + "M";
  if (n >= 1e3) return (n / 1e3).toFixed(1) + "k";
  return Number.isInteger(n) ? String(n) : n.toFixed(1);
}

function bytes(n) {
  if (n === null || n === undefined) return "-";
  const u = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return n.toFixed(i ? 1 : 0) + " " + u[i];
}

function time(ms) { return ms ? new Date(ms).toLocaleTimeString() : "-"; }
function pct(x) { return (100 * x).toFixed(0) + "%"; }
function wm(w) { return w === null || w === undefined ? "-" : new Date(w).toISOString(); }

// Sums a chain's subtasks over all workers (worker 0 merges the others' counters).
function totals(chain) {
  const t = { inRate: 0, outRate: 0, busy: 0, bp: 0, n: 0, wm: null, lag: null };
  for (const s of chain.subtasks) {
    if (s.rates) {
      t.inRate += s.rates.records_in_per_second;
      t.outRate += s.rates.records_out_per_second;
      t.busy += s.rates.busy; t.bp += s.rates.backpressured; t.n++;
    }
    const w = s.metrics && s.metrics.watermark;
    if (w !== null && w !== undefined) t.wm = t.wm === null ? w : Math.min(t.wm, w);
    const l = s.metrics && s.metrics.event_time_lag_seconds;
    if (l !== null && l !== undefined) t.lag = t.lag === null ? l : Math.max(t.lag, l);
  }
  if (t.n) { t.busy /= t.n; t.bp /= t.n; }
  return t;
}

// Columns by longest path from a source; rows in order within a column.
function layout(job) {
  const depth = new Map(job.chains.map(c => [c.id, 0]));
  for (let i = 0; i < job.chains.length; i++)
    for (const e of job.edges) depth.set(e.to, Math.max(depth.get(e.to), depth.get(e.from) + 1));
  const rows = new Map(), pos = new Map();
  for (const c of job.chains) {
    const d = depth.get(c.id), r = rows.get(d) || 0;
    rows.set(d, r + 1);
    pos.set(c.id, { x: d * (BOX_W + GAP_X), y: r * (BOX_H + GAP_Y) });
  }
  return pos;
}

function colour(busy, bp) {
  // Blue when idle, orange when busy, purple when backpressured.
  if (bp >= busy && bp > 0.1) return `hsl(280, ${30 + 50 * bp}%, ${92 - 30 * bp}%)`;
  return `hsl(28, ${30 + 60 * busy}%, ${96 - 40 * busy}%)`;
}

function drawGraph(job) {
  const graph = document.getElementById("graph");
  const svg = document.getElementById("edges");
  graph.querySelectorAll(".vertex").forEach(v => v.remove());
  svg.innerHTML = "";
  const pos = layout(job);
  let w = 0, h = 0;
  for (const c of job.chains) {
    const p = pos.get(c.id), t = totals(c);
    w = Math.max(w, p.x + BOX_W); h = Math.max(h, p.y + BOX_H);
    const bar = el("div", { class: "bar" },
      el("span", { class: "busy", style: `width:${pct(t.busy)}` }),
      el("span", { class: "bp", style: `width:${pct(t.bp)}` }));
    const box = el("div", {
      class: "vertex", "data-chain": c.id, "data-operators": c.operators.join(","),
      "data-rate-in": t.inRate.toFixed(1), "data-rate-out": t.outRate.toFixed(1),
      style: `left:${p.x}px;top:${p.y}px;height:${BOX_H}px;background:${colour(t.busy, t.bp)}`,
      title: `busy ${pct(t.busy)}, backpressured ${pct(t.bp)}`,
    },
      el("div", { class: "ops" }, c.operators.join(" → ")),
      el("div", { class: "meta" }, `parallelism ${c.parallelism} · busy ${pct(t.busy)} · bp ${pct(t.bp)}`),
      el("div", { class: "rates" }, `in ${fmt(t.inRate)}/s · out ${fmt(t.outRate)}/s`),
      el("div", { class: "meta" }, `watermark ${t.wm === null ? "-" : new Date(t.wm).toISOString().slice(11, 23)}` +
        (t.lag === null ? "" : ` · lag ${t.lag.toFixed(1)} s`)),
      bar);
    graph.append(box);
  }
  const ns = "http://www.w3.org/2000/svg";
  for (const e of job.edges) {
    const a = pos.get(e.from), b = pos.get(e.to);
    const x1 = a.x + BOX_W, y1 = a.y + BOX_H / 2, x2 = b.x, y2 = b.y + BOX_H / 2;
    const line = document.createElementNS(ns, "path");
    line.setAttribute("d", `M${x1},${y1} C${x1 + GAP_X / 2},${y1} ${x2 - GAP_X / 2},${y2} ${x2},${y2}`);
    line.setAttribute("stroke", "#667"); line.setAttribute("fill", "none"); line.setAttribute("stroke-width", "1.5");
    line.setAttribute("class", "edge");
    line.setAttribute("data-partitioning", e.partitioning);
    svg.append(line);
    const label = document.createElementNS(ns, "text");
    label.setAttribute("x", (x1 + x2) / 2 - 22); label.setAttribute("y", (y1 + y2) / 2 - 5);
    label.textContent = e.partitioning;
    svg.append(label);
  }
  svg.setAttribute("width", w); svg.setAttribute("height", h);
  graph.style.height = (h + 10) + "px";
}

function drawTables(job) {
  const rows = [];
  for (const c of job.chains) for (const s of c.subtasks) {
    const m = s.metrics, r = s.rates;
    const num = v => el("td", { class: "num" }, v);
    rows.push(el("tr", {}, el("td", {}, c.operators[0]), num(String(s.subtask)), num(String(s.worker)),
      num(m ? fmt(m.records_in) : "on worker " + s.worker), num(m ? fmt(m.records_out) : "-"),
      num(r ? fmt(r.records_in_per_second) : "-"), num(r ? fmt(r.records_out_per_second) : "-"),
      num(r ? pct(r.busy) : "-"), num(r ? pct(r.backpressured) : "-"),
      num(m ? bytes(m.bytes_in) : "-"), num(m ? bytes(m.bytes_out) : "-"), num(m ? String(m.queued_batches) : "-"),
      num(m && m.alignments ? (1000 * m.alignment_last_seconds).toFixed(1) + " ms" : "-"),
      el("td", {}, wm(m && m.watermark)),
      num(m && m.event_time_lag_seconds !== null ? m.event_time_lag_seconds.toFixed(1) + " s" : "-")));
  }
  document.querySelector("#subtasks tbody").replaceChildren(...rows);
  const k = job.checkpoints;
  document.getElementById("chk-counts").textContent =
    `triggered ${k.triggered} · completed ${k.completed} · failed ${k.failed} · last completed ` +
    (k.last_completed_id ? `#${k.last_completed_id} at ${time(k.last_completed_ms)}` : "none");
  document.querySelector("#checkpoints tbody").replaceChildren(...k.history.slice().reverse().map(h =>
    el("tr", { class: "chk-" + h.status.replace(" ", "-") }, el("td", {}, String(h.id)), el("td", {}, h.status),
      el("td", {}, time(h.triggered_ms)), el("td", {}, h.duration_ms === null ? "-" : h.duration_ms + " ms"),
      el("td", {}, bytes(h.state_bytes)), el("td", {}, h.cause || ""))));
  const ex = job.exceptions.slice().reverse().map(e => el("li", {}, `${time(e.time_ms)}  ${e.message}`));
  document.getElementById("exceptions").replaceChildren(...(ex.length ? ex : [el("li", { class: "none" }, "none")]));
}

async function refresh() {
  try {
    const job = await (await fetch("api/job", { cache: "no-store" })).json();
    document.getElementById("job").textContent = job.job || "streamjob";
    const state = document.getElementById("state");
    state.textContent = job.state; state.className = "state " + job.state;
    const workers = new Set(job.chains.flatMap(c => c.subtasks.map(s => s.worker))).size;
    document.getElementById("facts").textContent =
      `worker ${job.worker} of ${workers} · up ${((job.now_ms - job.started_ms) / 1000).toFixed(0)} s · ` +
      `restarts ${job.restarts} · records in ${fmt(job.totals.records_in)} (${fmt(job.totals.records_in_per_second)}/s) · ` +
      `out ${fmt(job.totals.records_out)} (${fmt(job.totals.records_out_per_second)}/s) · ` +
      `skipped ${job.records_skipped} · dead-lettered ${job.records_dead_lettered}` +
      job.peers.filter(p => p.error).map(p => ` · worker ${p.worker}: ${p.error}`).join("");
    drawGraph(job);
    drawTables(job);
    document.body.dataset.updated = String(job.now_ms);
  } catch (e) {
    const state = document.getElementById("state");
    state.textContent = "disconnected"; state.className = "state";
  }
}

refresh();
setInterval(refresh, 1000);
