// The diehard dashboard page: everything arrives as server-sent events from /events (no polling loop; the
// browser's EventSource reconnects by itself). The page only reads; it has no control that acts. Text is set
// with textContent (never innerHTML), so nothing in a journal line or a file name can become markup.
"use strict";

const S = {
  hello: null,
  duts: null, // the last "duts" document
  dutsAt: 0, // local time (s) it arrived
  lastMessage: 0, // local time (s) of the last event of any kind
  timeline: {}, // dut -> [entries]
  server: [], // server-wide journal entries
  unreadable: [],
  unreadableTotal: 0,
  groups: null,
  es: null,
  connState: "connecting",
  retryTimer: null,
};
const STALE_S = 12; // the server pushes at least every 5 s
const TIMELINE_WINDOW_S = 3600;
const FAILURES = new Set(["crash-detected", "hang-detected", "control-error", "switch-error", "supervisor-error",
  "pull-failed", "stop-failed", "os-reboot-failed", "notify-failed"]);
const ACTIONS = new Set(["app-restart", "os-reboot", "power-cycle", "cool-down", "broken", "power-off", "power-on"]);
const $ = (id) => document.getElementById(id);
const nowS = () => Date.now() / 1000;

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}
function svg(tag, attrs) {
  const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  return e;
}
function clear(e) {
  while (e.firstChild) e.removeChild(e.firstChild);
}

// -- formatting ------------------------------------------------------------------------------------------

function fmtAge(s) {
  if (s === null || s === undefined || !isFinite(s)) return "—";
  if (s < 0) s = 0;
  if (s < 10) return s.toFixed(1) + " s";
  if (s < 120) return Math.round(s) + " s";
  if (s < 7200) return Math.round(s / 60) + " min";
  if (s < 172800) return (s / 3600).toFixed(1) + " h";
  return (s / 86400).toFixed(1) + " d";
}
function fmtDuration(s) {
  if (s === null || s === undefined || !isFinite(s)) return "unknown";
  if (s < 60) return Math.round(s) + " s";
  const m = Math.round(s / 60);
  if (m < 60) return m + " min";
  const h = Math.floor(m / 60);
  if (h < 48) return h + " h " + (m % 60) + " min";
  return Math.floor(h / 24) + " d " + (h % 24) + " h";
}
function sci(x, digits) {
  if (x === null || x === undefined || !isFinite(x)) return "—";
  if (x === 0) return "0";
  return x.toExponential(digits === undefined ? 2 : digits);
}
function pct(x) {
  if (x === null || x === undefined || !isFinite(x)) return "—";
  return "±" + (100 * x).toFixed(x < 0.1 ? 1 : 0) + " %";
}
function utc(t) {
  if (!t) return "—";
  return new Date(t * 1000).toISOString().slice(0, 19).replace("T", " ") + " UTC";
}
function hms(iso) {
  return iso ? String(iso).slice(11, 19) : "";
}
function parseIso(iso) {
  const t = Date.parse(iso);
  return isNaN(t) ? null : t / 1000;
}

// -- connection ------------------------------------------------------------------------------------------

function setConn(state, text) {
  S.connState = state;
  const c = $("conn");
  c.className = "conn conn-" + state;
  c.textContent = text;
}

function connect() {
  if (S.retryTimer) clearTimeout(S.retryTimer);
  S.retryTimer = null;
  if (S.es) S.es.close();
  const es = new EventSource("/events");
  S.es = es;
  const on = (name, fn) => es.addEventListener(name, (ev) => {
    S.lastMessage = nowS();
    let data;
    try {
      data = JSON.parse(ev.data);
    } catch (e) {
      return;
    }
    fn(data);
    if (S.connState !== "live") setConn("live", "connected");
  });
  on("hello", onHello);
  on("duts", onDuts);
  on("journal-snapshot", onJournalSnapshot);
  on("journal", onJournal);
  on("groups", onGroups);
  es.onerror = () => {
    if (es.readyState === EventSource.CLOSED) refused();
    else if (!S.lastMessage) setConn("wait", "connecting: no data yet");
    else setConn("wait", "reconnecting: the numbers below are as of " + utc(S.lastMessage));
  };
}

// The stream was refused or the server is gone: say which, then try again (not a polling loop: one try
// every 10 s while there is no stream).
async function refused() {
  let why = "the dashboard server does not answer (stopped?)";
  try {
    const r = await fetch("/api/health", {cache: "no-store"});
    if (r.status === 401) {
      location.href = "/login";
      return;
    }
    const h = await r.json();
    why = h.clients >= h.max_clients
      ? "refused: " + h.clients + " pages are already open (the limit is " + h.max_clients + ")"
      : "the stream was refused (HTTP error)";
  } catch (e) {
    /* the server does not answer */
  }
  setConn("down", "not connected: " + why + "; trying again in 10 s");
  S.retryTimer = setTimeout(connect, 10000);
}

// -- handlers --------------------------------------------------------------------------------------------

function onHello(h) {
  S.hello = h;
  $("campaign").textContent = h.campaign;
  document.title = h.campaign + " · diehard dashboard";
  $("mode").textContent = h.mode === "live"
    ? "live from the campaign server"
    : "from the server's files (status every " + h.status_interval_s + " s)";
  $("simulated").hidden = !h.simulated;
  $("version").textContent = "diehardlab " + h.version;
  const side = h.one_sided ? "one-sided upper limit" : "Garwood interval";
  $("target").textContent = "target: " + side + " within ±" + Math.round(100 * h.target_relative_width) +
    " % at " + Math.round(100 * h.confidence) + " %; grouped by " + h.group_by.join(", ");
  const tbody = $("duts").tBodies[0];
  clear(tbody);
  for (const d of h.duts) {
    const tr = el("tr");
    tr.dataset.dut = d.name;
    const cells = ["name", "state", "step", "benchmark", "age", "rate", "sdc", "due", "actions", "timeline"];
    for (const c of cells) {
      const td = el("td", "c-" + c);
      if (["rate", "sdc", "due", "actions"].includes(c)) td.classList.add("num");
      tr.appendChild(td);
    }
    tr.querySelector(".c-name").textContent = d.name;
    tr.querySelector(".c-name").title = d.host + " (" + d.transport + "), benchmarks " + d.benchmarks.join(", ");
    tbody.appendChild(tr);
  }
  render();
}

function onDuts(doc) {
  S.duts = doc;
  S.dutsAt = nowS();
  renderDuts();
  renderWarnings();
}

function onJournalSnapshot(j) {
  S.timeline = j.duts || {};
  S.server = j.server || [];
  S.unreadable = j.unreadable || [];
  S.unreadableTotal = j.unreadable_total || 0;
  renderJournal();
  renderTimelines();
}

function onJournal(j) {
  for (const e of j.entries || []) {
    if (e.dut) {
      const list = (S.timeline[e.dut] = S.timeline[e.dut] || []);
      list.push(e);
      if (list.length > 40) list.shift();
    } else {
      S.server.push(e);
      if (S.server.length > 20) S.server.shift();
    }
  }
  S.unreadable = j.unreadable || S.unreadable;
  S.unreadableTotal = j.unreadable_total || S.unreadableTotal;
  renderJournal();
  renderTimelines();
}

function onGroups(g) {
  S.groups = g;
  renderGroups();
  renderWarnings();
}

// -- rendering: boards -------------------------------------------------------------------------------------

function dutAge(row) {
  if (!S.duts || row.heard_at === null || row.heard_at === undefined) return null;
  return S.duts.now - row.heard_at + (nowS() - S.dutsAt);
}

function renderDuts() {
  if (!S.duts || !S.hello) return;
  const live = S.hello.mode === "live";
  const liveness = Object.fromEntries(S.hello.duts.map((d) => [d.name, d.liveness_timeout_s]));
  for (const r of S.duts.rows || []) {
    const tr = document.querySelector('#duts tr[data-dut="' + CSS.escape(r.name) + '"]');
    if (!tr) continue;
    tr.dataset.state = r.state;
    const st = tr.querySelector(".c-state");
    st.textContent = r.state_label;
    st.className = "c-state state state-" + r.state;
    tr.querySelector(".c-step").textContent = r.step;
    tr.querySelector(".c-benchmark").textContent = r.benchmark;
    const age = dutAge(r);
    const ageCell = tr.querySelector(".c-age");
    ageCell.textContent = age === null ? (live ? "none since the server started" : "unknown") : fmtAge(age) + " ago";
    ageCell.classList.toggle("late", age !== null && age > liveness[r.name]);
    ageCell.dataset.age = age === null ? "" : age.toFixed(2);
    ageCell.title = r.datagrams === null || r.datagrams === undefined ? "" : r.datagrams + " datagrams";
    const rate = tr.querySelector(".c-rate");
    rate.textContent = r.it_per_s === null || r.it_per_s === undefined ? "—" : r.it_per_s.toFixed(r.it_per_s < 10 ? 2 : 1);
    rate.title = "iteration " + r.iteration;
    tr.querySelector(".c-sdc").textContent = r.sdc;
    tr.querySelector(".c-due").textContent = r.due;
    tr.querySelector(".c-actions").textContent = r.app_restarts + " / " + r.os_reboots + " / " + r.power_cycles;
  }
  const srv = S.duts.server || {};
  const rejected = Object.entries(srv.rejected || {}).map(([k, v]) => k + " " + v).join(", ");
  $("server-line").textContent = (srv.datagrams === null || srv.datagrams === undefined ? "" : srv.datagrams +
    " datagrams") + (rejected ? "; rejected: " + rejected : "") + " · " + (S.duts.clients || 0) + " page(s) open";
}

function eventKind(ev) {
  if (FAILURES.has(ev)) return "failure";
  if (ACTIONS.has(ev)) return "action";
  return "info";
}

function renderTimelines() {
  if (!S.hello) return;
  const W = 240, H = 18;
  const end = nowS();
  for (const d of S.hello.duts) {
    const tr = document.querySelector('#duts tr[data-dut="' + CSS.escape(d.name) + '"]');
    if (!tr) continue;
    const cell = tr.querySelector(".c-timeline");
    clear(cell);
    const box = svg("svg", {width: W, height: H, viewBox: "0 0 " + W + " " + H, class: "timeline"});
    box.appendChild(svg("line", {x1: 0, y1: H / 2, x2: W, y2: H / 2, class: "axis"}));
    const entries = S.timeline[d.name] || [];
    for (const e of entries) {
      const t = parseIso(e.time);
      if (t === null || end - t > TIMELINE_WINDOW_S) continue;
      const x = Math.max(1, Math.min(W - 1, W - ((end - t) / TIMELINE_WINDOW_S) * W));
      const kind = eventKind(e.event);
      const mark = svg("rect", {x: x - 1.5, y: kind === "info" ? 6 : 2, width: 3, height: kind === "info" ? 6 : 14,
        class: "ev ev-" + kind});
      const title = svg("title");
      title.textContent = hms(e.time) + " " + e.event + (e.detail ? " (" + e.detail + ")" : "");
      mark.appendChild(title);
      box.appendChild(mark);
    }
    cell.appendChild(box);
    const last = entries.filter((e) => e.event !== "progress").slice(-1)[0];
    const txt = el("div", "last-event", last ? hms(last.time) + " " + last.event + (last.detail ? " (" + last.detail + ")" : "") : "no journal entries");
    cell.appendChild(txt);
  }
}

function renderJournal() {
  const ol = $("journal");
  clear(ol);
  const all = [];
  for (const [dut, list] of Object.entries(S.timeline)) for (const e of list) all.push(e);
  for (const e of S.server) all.push(e);
  all.sort((a, b) => (a.time < b.time ? 1 : a.time > b.time ? -1 : b.line - a.line));
  for (const e of all.slice(0, 60)) {
    const li = el("li", "ev-" + eventKind(e.event));
    li.appendChild(el("time", null, String(e.time).replace("T", " ").slice(0, 19)));
    li.appendChild(el("span", "who", e.dut || "server"));
    li.appendChild(el("span", "what", e.event));
    if (e.detail) li.appendChild(el("span", "detail", e.detail));
    ol.appendChild(li);
  }
}

// -- rendering: configurations -----------------------------------------------------------------------------

function neededText(r, conf) {
  if (r.fluence_n_cm2 === null || !(r.fluence_n_cm2 > 0)) return ["no fluence yet: nothing is measured", null];
  if (r.events === 0) {
    return ["no events yet: σ < " + sci(r.upper_limit_cm2) + " cm² (" + Math.round(100 * conf) +
      " %); no rate to extrapolate", null];
  }
  if (r.enough) return ["reached (" + pct(r.relative_width) + " now)", 0];
  if (r.beam_time_needed_s === null) return ["unknown (no beam-on time measured)", null];
  return [fmtDuration(r.beam_time_needed_s) + " of beam for " + r.events_missing + " more events" +
    (r.boards > 1 ? " (" + r.boards + " boards side by side)" : ""), r.beam_time_needed_s];
}

function intervalPlot(r, lo, hi) {
  const W = 120, H = 14;
  const box = svg("svg", {width: W, height: H, viewBox: "0 0 " + W + " " + H, class: "interval"});
  box.appendChild(svg("line", {x1: 0, y1: H / 2, x2: W, y2: H / 2, class: "axis"}));
  const x = (v) => (v > 0 ? Math.max(0, Math.min(W, ((Math.log10(v) - lo) / (hi - lo)) * W)) : 0);
  if (r.sigma_hi_cm2 > 0 && isFinite(hi - lo) && hi > lo) {
    const a = r.events > 0 ? x(r.sigma_lo_cm2) : 0;
    box.appendChild(svg("line", {x1: a, y1: H / 2, x2: x(r.sigma_hi_cm2), y2: H / 2, class: "ci"}));
    box.appendChild(svg("line", {x1: x(r.sigma_hi_cm2), y1: 2, x2: x(r.sigma_hi_cm2), y2: H - 2, class: "ci"}));
    if (r.events > 0) {
      box.appendChild(svg("line", {x1: a, y1: 2, x2: a, y2: H - 2, class: "ci"}));
      box.appendChild(svg("circle", {cx: x(r.sigma_cm2), cy: H / 2, r: 3, class: "est"}));
    }
  }
  const t = svg("title");
  t.textContent = "log scale, " + sci(Math.pow(10, lo)) + " to " + sci(Math.pow(10, hi)) + " cm² (same for every row of this class)";
  box.appendChild(t);
  return box;
}

function renderGroups() {
  const g = S.groups;
  if (!g) return;
  const a = g.answer;
  const status = $("groups-status");
  const parts = [];
  if (a) {
    parts.push("computed by the analysis at " + utc(a.computed_at) + " in " + a.took_s + " s (" + a.runs + " runs, " +
      a.runs_excluded + " excluded; fluence: " + a.fluence_method + "; " + a.ci_method + ")");
  }
  if (a && a.in_progress && a.in_progress.length) {
    parts.push(a.in_progress.length + " run(s) in progress, counted without a DUE until they end (diehard fit " +
      "reads a log without its closing line as a DUE)");
  }
  if (g.status && g.status !== "ok") parts.push(g.status);
  if (g.error) parts.push("the latest try failed: " + g.error + (a ? "; the numbers shown are the previous ones" : ""));
  if (!a && !g.error && g.status === "ok") parts.push("no numbers yet");
  status.textContent = parts.join(" · ") || "waiting for the analysis";
  const tbody = $("groups").tBodies[0];
  clear(tbody);
  if (a) {
    const ranges = {};
    for (const r of a.rows) {
      const vals = [r.sigma_lo_cm2, r.sigma_cm2, r.sigma_hi_cm2].filter((v) => v > 0 && isFinite(v)).map(Math.log10);
      if (!vals.length) continue;
      const k = r.error_class;
      ranges[k] = ranges[k] || [Infinity, -Infinity];
      ranges[k][0] = Math.min(ranges[k][0], ...vals);
      ranges[k][1] = Math.max(ranges[k][1], ...vals);
    }
    for (const r of a.rows) {
      const tr = el("tr");
      tr.dataset.group = r.group;
      tr.dataset.class = r.error_class;
      tr.appendChild(el("td", "g-group", r.group));
      tr.appendChild(el("td", "g-class", r.error_class.toUpperCase().replace("_", " ")));
      tr.appendChild(el("td", "g-events num", r.events));
      tr.appendChild(el("td", "g-fluence num", sci(r.fluence_n_cm2, 3)));
      const sig = el("td", "g-sigma num", r.events > 0
        ? sci(r.sigma_cm2) + " [" + sci(r.sigma_lo_cm2) + ", " + sci(r.sigma_hi_cm2) + "]"
        : "< " + sci(r.sigma_hi_cm2));
      sig.dataset.sigma = r.sigma_cm2 === null ? "" : r.sigma_cm2;
      sig.dataset.lo = r.sigma_lo_cm2 === null ? "" : r.sigma_lo_cm2;
      sig.dataset.hi = r.sigma_hi_cm2 === null ? "" : r.sigma_hi_cm2;
      tr.appendChild(sig);
      tr.appendChild(el("td", "g-width num", r.events > 0 ? pct(r.relative_width) : "—"));
      tr.appendChild(el("td", "g-target num", r.target_events));
      const [text, secs] = neededText(r, a.confidence);
      const need = el("td", "g-needed" + (r.enough ? " enough" : ""), text);
      need.dataset.seconds = secs === null ? "" : String(secs);
      tr.appendChild(need);
      const plot = el("td", "g-plot");
      const rg = ranges[r.error_class];
      if (rg) plot.appendChild(intervalPlot(r, Math.floor(rg[0]), Math.ceil(rg[1]) === Math.floor(rg[0]) ? Math.floor(rg[0]) + 1 : Math.ceil(rg[1])));
      tr.appendChild(plot);
      tbody.appendChild(tr);
    }
    if (!a.rows.length) {
      const tr = el("tr");
      const td = el("td", "status", "no configuration has a run with fluence yet");
      td.colSpan = 9;
      tr.appendChild(td);
      tbody.appendChild(tr);
    }
    $("reproduce").textContent = "the same numbers, from the same files: " + a.command;
    const ul = $("notes").querySelector("ul");
    clear(ul);
    for (const n of a.notes || []) ul.appendChild(el("li", null, n));
    if (a.notes_total > (a.notes || []).length) ul.appendChild(el("li", null, "... " + (a.notes_total - a.notes.length) + " more"));
    $("notes-count").textContent = a.notes_total || 0;
  }
  renderFacility();
}

function sparkline(series) {
  const W = 240, H = 36;
  const box = svg("svg", {width: W, height: H, viewBox: "0 0 " + W + " " + H, class: "spark"});
  if (series.length < 2) return box;
  const t0 = series[0][0], t1 = series[series.length - 1][0];
  const fmax = Math.max(...series.map((p) => p[1])) || 1;
  const pts = series.map((p) => ((p[0] - t0) / (t1 - t0 || 1)) * W + "," + (H - 2 - (p[1] / fmax) * (H - 4)));
  box.appendChild(svg("polyline", {points: pts.join(" "), class: "flux"}));
  const t = svg("title");
  t.textContent = "flux at the reference position, " + utc(t0) + " to " + utc(t1) + "; max " + sci(fmax) + " n/cm²/s";
  box.appendChild(t);
  return box;
}

function renderFacility() {
  const g = S.groups;
  const box = $("facility");
  clear(box);
  if (!g) return;
  const answer = (g.answer && g.answer.facility) || [];
  const watch = Object.fromEntries((g.facility_watch || []).map((w) => [w.path, w]));
  const paths = new Set([...answer.map((f) => f.path), ...Object.keys(watch)]);
  if (!paths.size) {
    box.appendChild(el("p", "status", "no facility log named in the campaign ([facility] flux_logs): fluence comes from the logs' own facility files"));
    return;
  }
  for (const p of paths) {
    const f = answer.find((x) => x.path === p) || {};
    const w = watch[p] || {};
    const div = el("div", "facility");
    div.dataset.path = p;
    div.appendChild(el("strong", null, "facility log " + p));
    if (f.error || w.error) div.appendChild(el("span", "bad", " " + (w.error || f.error)));
    if (f.last_t) {
      const ago = nowS() - f.last_t;
      div.appendChild(el("span", null, " · last row " + utc(f.last_t) + " (" + fmtAge(ago) + " ago), " + f.rows +
        " rows · flux now " + sci(f.flux_now_n_cm2_s) + " n/cm²/s, beam " + (f.beam_on_now ? "on" : "off")));
      if (f.malformed_rows) div.appendChild(el("span", "bad", " · " + f.malformed_rows + " malformed rows ignored"));
      div.appendChild(sparkline(f.series || []));
    }
    box.appendChild(div);
  }
}

// -- what the page does not know ---------------------------------------------------------------------------

function renderWarnings() {
  const ul = $("warnings");
  clear(ul);
  const items = [];
  if (S.duts) for (const w of S.duts.warnings || []) items.push(w);
  const g = S.groups;
  if (g) {
    for (const w of g.facility_watch || []) {
      if (w.stalled) {
        items.push("facility log " + w.path + " has not grown for " + fmtAge(w.quiet_s) +
          ": fluence after its last row is unknown, and runs it does not cover are left out of the cross sections");
      }
    }
    if (g.answer && g.answer.runs_excluded) {
      const first = (g.answer.excluded || [])[0];
      items.push(g.answer.runs_excluded + " run(s) left out of the cross sections" + (first ? " (e.g. " + first.name +
        ": " + first.reason + ")" : ""));
    }
    if (g.error) items.push("cross sections: " + g.error);
  }
  for (const w of items) ul.appendChild(el("li", null, w));
}

function render() {
  renderDuts();
  renderTimelines();
  renderJournal();
  renderGroups();
  renderWarnings();
}

// A display clock, not a poll: ages tick, and a stream that went quiet is called stale.
function tick() {
  if (S.duts) {
    for (const r of S.duts.rows || []) {
      const tr = document.querySelector('#duts tr[data-dut="' + CSS.escape(r.name) + '"]');
      if (!tr) continue;
      const age = dutAge(r);
      const cell = tr.querySelector(".c-age");
      if (age !== null) {
        cell.textContent = fmtAge(age) + " ago";
        cell.dataset.age = age.toFixed(2);
        const live = Object.fromEntries(S.hello.duts.map((d) => [d.name, d.liveness_timeout_s]));
        cell.classList.toggle("late", age > live[r.name]);
      }
    }
  }
  if (S.connState === "live" && nowS() - S.lastMessage > STALE_S) {
    setConn("wait", "no update for " + fmtAge(nowS() - S.lastMessage) + ": the numbers below may be stale");
  }
}

document.addEventListener("DOMContentLoaded", () => {
  connect();
  setInterval(tick, 1000);
  setInterval(renderTimelines, 30000);
});
