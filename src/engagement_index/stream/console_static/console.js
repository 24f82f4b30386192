// The Engagement Index console: one static page, a client of the public query API.
// No framework and no charting library: charts are SVG drawn here, each with a text
// alternative. The bearer token stays in sessionStorage (this tab only) and goes out as an
// Authorization header; the live feed is read with fetch() so that it can carry the header.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const REFRESH_MS = 30000; // the index decays between changes: visible numbers re-read this often
const state = { token: null, tenant: null, model: null, stream: null, timer: null, cursors: [] };
window.__consoleLoads = (window.__consoleLoads || 0) + 1;

// ------------------------------------------------------------------ DOM helpers
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}
function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG, tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}
function setAttrs(el, attrs) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "on") for (const [ev, fn] of Object.entries(v)) el.addEventListener(ev, fn);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
}
function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}
const fmt = (n, d = 1) => (n === null || n === undefined ? "–" : Number(n).toFixed(d));
const count = (n) => Number(n || 0).toLocaleString("en");
const when = (iso) => (iso ? iso.replace("T", " ").replace(/\.\d+Z$/, " UTC") : "–");
function ago(ms) {
  const sec = Math.round(ms / 1000);
  if (sec < 120) return `${sec} s`;
  if (sec < 7200) return `${Math.round(sec / 60)} min`;
  if (sec < 172800) return `${Math.round(sec / 3600)} h`;
  return `${Math.round(sec / 86400)} d`;
}
function announce(text) {
  document.getElementById("announce").textContent = text;
}
function view() {
  return document.getElementById("view");
}
function show(...nodes) {
  const main = view();
  main.replaceChildren(...nodes);
}

// ------------------------------------------------------------------ API
class ApiError extends Error {
  constructor(status, body) {
    super(body && body.error ? body.error : `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}
async function api(path, params) {
  const url = new URL(path, location.origin);
  for (const [k, v] of params || []) url.searchParams.append(k, v);
  const res = await fetch(url, { headers: { Authorization: `Bearer ${state.token}` } });
  let body = null;
  try { body = await res.json(); } catch (e) { body = null; }
  if (!res.ok) throw new ApiError(res.status, body);
  return body;
}
const tenantPath = (rest) => `/v1/tenants/${encodeURIComponent(state.tenant)}/${rest}`;
const contactPath = (id, rest) =>
  `/v1/contacts/${encodeURIComponent(state.tenant)}/${encodeURIComponent(id)}${rest || ""}`;

// The live feed: Server-Sent Events over fetch (so the token goes in the header).
function openStream(params, onEvent) {
  const ctrl = new AbortController();
  const live = document.getElementById("live");
  (async () => {
    while (!ctrl.signal.aborted) {
      try {
        const url = new URL(tenantPath("stage-changes"), location.origin);
        for (const [k, v] of params) url.searchParams.append(k, v);
        const res = await fetch(url, {
          headers: { Authorization: `Bearer ${state.token}`, Accept: "text/event-stream" },
          signal: ctrl.signal,
        });
        if (!res.ok) throw new ApiError(res.status, null);
        const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += value;
          let end;
          while ((end = buffer.indexOf("\n\n")) >= 0) {
            const block = buffer.slice(0, end);
            buffer = buffer.slice(end + 2);
            let event = "message";
            let data = "";
            for (const line of block.split("\n")) {
              if (line.startsWith("event:")) event = line.slice(6).trim();
              else if (line.startsWith("data:")) data += line.slice(5).trim();
            }
            if (event === "ready") {
              live.textContent = "live";
              live.classList.add("on");
            } else if (data) onEvent(event, JSON.parse(data));
          }
        }
      } catch (e) {
        if (ctrl.signal.aborted) return;
        if (e instanceof ApiError && (e.status === 401 || e.status === 404)) break;
      }
      live.textContent = "reconnecting";
      live.classList.remove("on");
      await new Promise((r) => setTimeout(r, 2000));
    }
  })();
  return ctrl;
}
function stopLive() {
  if (state.stream) state.stream.abort();
  state.stream = null;
  if (state.timer) clearInterval(state.timer);
  state.timer = null;
  const live = document.getElementById("live");
  live.textContent = "offline";
  live.classList.remove("on");
}

// ------------------------------------------------------------------ the model
const lifecycles = () => state.model.lifecycles;
const firstLifecycle = () => state.model.lifecycles[0];
function kindTitle(lc) {
  if (lc.kind === "band") return `Contacts per band (${lc.name})`;
  if (lc.kind === "trend") return `Contacts per trend (${lc.name})`;
  return `Contacts per stage: ${lc.name}`;
}
function stageParam(lc, stage) {
  if (lc.kind === "band") return ["band", stage];
  if (lc.kind === "trend") return ["trend", stage];
  return ["stage", `${lc.name}:${stage}`];
}
function listLink(params, text, label) {
  const q = new URLSearchParams(params);
  return h("a", { href: `#/contacts?${q}`, "aria-label": label || null }, text);
}

// ------------------------------------------------------------------ sign-in
function signIn(message) {
  stopLive();
  document.getElementById("nav").hidden = true;
  const tenant = h("input", { id: "tenant", name: "tenant", required: true, autocomplete: "username",
    value: sessionStorage.getItem("ei.tenant") || "" });
  const token = h("input", { id: "token", name: "token", type: "password", required: true,
    autocomplete: "current-password" });
  const error = h("p", { id: "signin-error", class: "error", role: "alert" }, message || "");
  const form = h("form", { class: "signin", "aria-labelledby": "signin-title" },
    h("h1", { id: "signin-title" }, "Sign in"),
    h("p", { class: "muted" }, "Use a query API bearer token. It is kept in this browser tab only."),
    h("label", { for: "tenant" }, "Tenant", tenant),
    h("label", { for: "token" }, "Bearer token", token),
    h("button", { type: "submit", class: "primary" }, "Sign in"),
    error);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    state.token = token.value.trim();
    state.tenant = tenant.value.trim();
    try {
      state.model = await api(tenantPath("model"));
    } catch (e) {
      state.token = null;
      error.textContent = e.status === 401 ? "That token is not valid."
        : e.status === 404 ? `This token cannot read tenant “${state.tenant}”.`
        : `Sign-in failed: ${e.message}`;
      return;
    }
    sessionStorage.setItem("ei.token", state.token);
    sessionStorage.setItem("ei.tenant", state.tenant);
    if (!location.hash || location.hash === "#/signin") location.hash = "#/overview";
    else route();
  });
  show(form);
  tenant.value ? token.focus() : tenant.focus();
}

// ------------------------------------------------------------------ overview
async function overview() {
  const [summary, rates] = await Promise.all([
    api(tenantPath("summary")),
    api(tenantPath("transitions/per-minute")),
  ]);
  const panels = [];
  for (const lc of lifecycles()) {
    const counts = summary.lifecycles[lc.name] || {};
    const max = Math.max(1, ...Object.values(counts));
    const rows = lc.stages.map((st) => {
      const n = counts[st.name] || 0;
      const [k, v] = stageParam(lc, st.name);
      return h("tr", {},
        h("th", { scope: "row" }, st.name),
        h("td", { class: "num" }, listLink([[k, v]], count(n), `${count(n)} contacts in ${lc.name} ${st.name}`)),
        h("td", { "aria-hidden": "true" }, h("span", { class: "bar", style: `width:${(100 * n) / max}px` })));
    });
    panels.push(h("section", { class: "panel", "aria-labelledby": `lc-${lc.name}` },
      h("h2", { id: `lc-${lc.name}` }, kindTitle(lc)),
      h("table", { class: "counts", "data-lifecycle": lc.name },
        h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "stage"),
          h("th", { scope: "col", class: "num" }, "contacts"), h("th", { scope: "col" }, h("span", { class: "sr-only" }, "bar")))),
        h("tbody", {}, rows))));
  }
  for (const kind of ["band", "trend"]) {
    if (!lifecycles().some((lc) => lc.kind === kind)) {
      panels.push(h("section", { class: "panel" }, h("h2", {}, `Contacts per ${kind}`),
        h("p", { class: "muted" }, `The model (${state.model.model_version}) has no ${kind} lifecycle.`)));
    }
  }
  const t24 = summary.transitions_24h;
  const flowPanels = lifecycles().map((lc) => flowMatrix(lc, t24.edges.filter((e) => e.lifecycle === lc.name)));
  const feed = h("ol", { class: "feed", id: "feed", "aria-live": "polite" });
  show(
    h("h1", { tabindex: "-1" }, `Tenant ${summary.tenant}`),
    h("p", { class: "card-head" },
      h("span", {}, h("span", { class: "big", id: "total" }, listLink([], count(summary.contacts), `all ${count(summary.contacts)} contacts`)), " contacts"),
      h("span", { class: "muted" }, `model ${summary.model_version}, as of ${when(summary.as_of)}`)),
    h("div", { class: "grid" }, panels),
    h("h2", { style: "margin-top:16px" }, "Flows between stages in the last 24 h"),
    h("p", { class: "muted" }, t24.complete ? "Complete for the window." :
      `Counted since ${when(t24.counting_since)} (a worker restarted or a partition moved within the window).`,
      " A number links to the contacts now in the stage the flow leads to."),
    h("div", { class: "grid wide" }, flowPanels),
    h("div", { class: "grid", style: "margin-top:16px" },
      h("section", { class: "panel", "aria-labelledby": "rate-title" },
        h("h2", { id: "rate-title" }, "Transitions per minute (last hour)"),
        rateChart(rates)),
      h("section", { class: "panel", "aria-labelledby": "feed-title" },
        h("h2", { id: "feed-title" }, "Stage changes as they happen"),
        h("p", { class: "muted", id: "feed-empty" }, "Waiting for the next stage change…"),
        feed)),
  );
  let pending = null;
  state.stream = openStream([], (event, t) => {
    if (event !== "transition") return;
    document.getElementById("feed-empty")?.remove();
    feed.prepend(h("li", {},
      h("a", { href: `#/contact/${encodeURIComponent(t.contact_id)}` }, t.contact_id), " ",
      `${t.lifecycle}: ${t.from_stage || "(new)"} → ${t.to_stage}`,
      h("span", { class: "muted" }, ` ${t.reason}, ${when(t.occurred_at)}`)));
    while (feed.children.length > 30) feed.lastChild.remove();
    if (!pending) pending = setTimeout(() => { pending = null; refreshOverview(); }, 1000);
  });
  state.timer = setInterval(refreshOverview, REFRESH_MS);
  if (!rates.counting_since) setTimeout(refreshOverview, 2000); // the feed was just started
}
// Re-reads the numbers without rebuilding the page (focus and the live feed stay).
async function refreshOverview() {
  if (!location.hash.startsWith("#/overview")) return;
  let summary, rates;
  try {
    [summary, rates] = await Promise.all([api(tenantPath("summary")), api(tenantPath("transitions/per-minute"))]);
  } catch (e) { return; }
  for (const lc of lifecycles()) {
    const table = document.querySelector(`table[data-lifecycle="${CSS.escape(lc.name)}"]`);
    if (!table) continue;
    const counts = summary.lifecycles[lc.name] || {};
    const max = Math.max(1, ...Object.values(counts));
    lc.stages.forEach((st, i) => {
      const row = table.tBodies[0].rows[i];
      const n = counts[st.name] || 0;
      row.cells[1].firstChild.textContent = count(n);
      row.cells[1].firstChild.setAttribute("aria-label", `${count(n)} contacts in ${lc.name} ${st.name}`);
      row.cells[2].firstChild.style.width = `${(100 * n) / max}px`;
    });
    const matrix = document.querySelector(`table[data-flows="${CSS.escape(lc.name)}"]`);
    if (matrix) matrix.replaceWith(flowTable(lc, summary.transitions_24h.edges.filter((e) => e.lifecycle === lc.name)));
  }
  const total = document.querySelector("#total a");
  if (total) total.textContent = count(summary.contacts);
  const chart = document.getElementById("rate-chart");
  if (chart) chart.replaceWith(rateChart(rates));
}
function flowMatrix(lc, edges) {
  return h("section", { class: "panel", "aria-labelledby": `flow-${lc.name}` },
    h("h3", { id: `flow-${lc.name}` }, lc.name), h("div", { class: "scroll" }, flowTable(lc, edges)));
}
function flowTable(lc, edges) {
  const cell = {};
  let any = false;
  for (const e of edges) {
    const key = `${e.from_stage ?? ""}\u001f${e.to_stage}`;
    cell[key] = (cell[key] || 0) + e.count;
    any = any || (e.from_stage === null && e.count > 0);
  }
  const froms = [...(any ? [null] : []), ...lc.stages.map((st) => st.name)];
  const head = h("tr", {}, h("th", { scope: "col" }, "from \\ to"),
    lc.stages.map((st) => h("th", { scope: "col", class: "num" }, st.name)));
  const rows = froms.map((from) => h("tr", {},
    h("th", { scope: "row" }, from === null ? "(new)" : from),
    lc.stages.map((st) => {
      const n = cell[`${from ?? ""}\u001f${st.name}`] || 0;
      if (!n) return h("td", { class: "num muted" }, from === st.name ? "·" : "0");
      const [k, v] = stageParam(lc, st.name);
      return h("td", { class: "num" }, listLink([[k, v]], count(n),
        `${count(n)} moved from ${from ?? "new"} to ${st.name}; list the contacts now in ${st.name}`));
    })));
  return h("table", { class: "matrix", "data-flows": lc.name },
    h("caption", {}, `${lc.name}: transitions in the last 24 h, rows from, columns to`),
    h("thead", {}, head), h("tbody", {}, rows));
}
function rateChart(rates) {
  const minutes = rates.minutes;
  const W = 600, H = 160, pad = 28;
  const max = Math.max(1, ...minutes.map((m) => m.count));
  const bw = (W - pad) / minutes.length;
  const total = minutes.reduce((a, m) => a + m.count, 0);
  const last = minutes[minutes.length - 1];
  const svg = s("svg", { viewBox: `0 0 ${W} ${H + 20}`, class: "chart", role: "img", "aria-labelledby": "rate-t rate-d" },
    s("title", { id: "rate-t" }, "Transitions per minute over the last hour"),
    s("desc", { id: "rate-d" }, `${total} transitions in the last 60 minutes, ${last.count} in the current minute, at most ${max} in one minute.`),
    s("line", { x1: pad, y1: H, x2: W, y2: H, stroke: "#4a5260" }),
    s("text", { x: pad - 4, y: 10, "text-anchor": "end", "font-size": 11 }, String(max)),
    s("text", { x: pad - 4, y: H, "text-anchor": "end", "font-size": 11 }, "0"),
    s("text", { x: pad, y: H + 16, "font-size": 11 }, "−60 min"),
    s("text", { x: W, y: H + 16, "font-size": 11, "text-anchor": "end" }, "now"),
    minutes.map((m, i) => {
      const bh = (H - 12) * (m.count / max);
      return s("rect", { x: pad + i * bw + 1, y: H - bh, width: Math.max(1, bw - 2), height: bh, fill: "#2f6fb8" },
        s("title", {}, `${when(m.at)}: ${m.count}`));
    }));
  const since = rates.counting_since ? `Counted since ${when(rates.counting_since)}.` : "The feed is starting.";
  return h("figure", { id: "rate-chart", style: "margin:0" }, svg,
    h("figcaption", { class: "muted" }, `${count(total)} in the last hour; ${last.count} this minute. ${since}`));
}

// ------------------------------------------------------------------ segment lists
function listParams() {
  const q = location.hash.split("?")[1] || "";
  return [...new URLSearchParams(q)];
}
async function contacts() {
  const params = listParams();
  const get = (k) => (params.find(([a]) => a === k) || [])[1] || "";
  const stageFilter = {};
  for (const [k, v] of params) {
    if (k === "stage") { const [lc, st] = v.includes(":") ? v.split(":") : [firstLifecycle().name, v]; stageFilter[lc] = st; }
    if (k === "band" || k === "trend") { const lc = lifecycles().find((x) => x.kind === k); if (lc) stageFilter[lc.name] = v; }
  }
  const selects = lifecycles().map((lc) => h("label", {}, lc.name,
    h("select", { name: `lc:${lc.name}` }, h("option", { value: "" }, "any"),
      lc.stages.map((st) => h("option", { value: st.name, selected: stageFilter[lc.name] === st.name }, st.name)))));
  const sortSel = h("select", { name: "sort" }, [
    ["contact_id", "contact id"], ["-contact_id", "contact id, descending"], ["-index", "index, highest first"],
    ["index", "index, lowest first"], ["-last_event", "latest event, newest first"], ["last_event", "latest event, oldest first"],
  ].map(([v, t]) => h("option", { value: v, selected: (get("sort") || "contact_id") === v }, t)));
  const form = h("form", { class: "filters", "aria-label": "Filters" }, selects,
    h("label", {}, "min index", h("input", { name: "min_index", type: "number", min: 0, max: 100, step: "any", value: get("min_index"), size: 5 })),
    h("label", {}, "max index", h("input", { name: "max_index", type: "number", min: 0, max: 100, step: "any", value: get("max_index"), size: 5 })),
    h("label", {}, "customer", h("select", { name: "customer" }, ["", "true", "false"].map((v) =>
      h("option", { value: v, selected: get("customer") === v }, v || "any")))),
    h("label", {}, "active within", h("input", { name: "active_within", placeholder: "7d", value: get("active_within"), size: 6 })),
    h("label", {}, "sort", sortSel),
    h("label", {}, "per page", h("select", { name: "limit" }, ["25", "50", "100"].map((v) =>
      h("option", { value: v, selected: (get("limit") || "50") === v }, v)))),
    h("button", { type: "submit", class: "primary" }, "Apply"));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const out = new URLSearchParams();
    const fd = new FormData(form);
    for (const lc of lifecycles()) {
      const v = fd.get(`lc:${lc.name}`);
      if (v) out.append(...stageParam(lc, v));
    }
    for (const k of ["min_index", "max_index", "customer", "active_within", "sort", "limit"]) {
      const v = fd.get(k);
      if (v) out.append(k, v);
    }
    state.cursors = [];
    location.hash = `#/contacts?${out}`;
  });
  const apiParams = params.filter(([k]) => k !== "cursor");
  if (!get("limit")) apiParams.push(["limit", "50"]);
  const cursor = get("cursor");
  let page;
  const status = h("p", { class: "muted", role: "status" });
  try {
    page = await api(tenantPath("contacts"), cursor ? [...apiParams, ["cursor", cursor]] : apiParams);
  } catch (e) {
    show(h("h1", { tabindex: "-1" }, "Contacts"), form,
      h("p", { class: "error", role: "alert" }, e.body && e.body.message ? e.body.message : e.message));
    return;
  }
  const lcs = lifecycles();
  const table = h("table", { id: "contact-list" },
    h("caption", {}, `${page.items.length} contacts on this page, as of ${when(page.as_of)}`),
    h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "contact"),
      lcs.map((lc) => h("th", { scope: "col" }, lc.name)),
      h("th", { scope: "col", class: "num" }, "index"), h("th", { scope: "col" }, "latest event"))),
    h("tbody", {}, page.items.map((it) => h("tr", {},
      h("td", {}, h("a", { href: `#/contact/${encodeURIComponent(it.contact_id)}` }, it.contact_id)),
      lcs.map((lc) => h("td", {}, it.stages[lc.name] || "–")),
      h("td", { class: "num" }, fmt(it.index)), h("td", {}, when(it.last_event_at))))));
  const base = new URLSearchParams(params.filter(([k]) => k !== "cursor"));
  const prev = h("button", { type: "button", disabled: !cursor }, "Previous page");
  prev.addEventListener("click", () => {
    const back = state.cursors.pop();
    const q = new URLSearchParams(base);
    if (back) q.set("cursor", back);
    location.hash = `#/contacts?${q}`;
  });
  const next = h("button", { type: "button", disabled: !page.next_cursor }, "Next page");
  next.addEventListener("click", () => {
    state.cursors.push(cursor);
    const q = new URLSearchParams(base);
    q.set("cursor", page.next_cursor);
    location.hash = `#/contacts?${q}`;
  });
  const exportBtn = h("button", { type: "button", id: "export" }, "Export CSV (whole segment)");
  exportBtn.addEventListener("click", () => exportCsv(apiParams, status).catch((e) => {
    status.textContent = `Export failed: ${e.status === 503 ? "the workers are rebalancing, try again" : e.message}`;
  }));
  show(h("h1", { tabindex: "-1" }, "Contacts"), form,
    h("div", { class: "scroll" }, table),
    h("div", { class: "pager" }, prev, next, exportBtn, status));
}
function csvCell(v) {
  const t = v === null || v === undefined ? "" : String(v);
  return /[",\n\r]/.test(t) ? `"${t.replace(/"/g, '""')}"` : t;
}
async function exportCsv(params, status) {
  // every page of the segment in contact id order (the order in which paging lists each once)
  const base = params.filter(([k]) => k !== "sort" && k !== "limit");
  base.push(["sort", "contact_id"], ["limit", "1000"]);
  const lcs = lifecycles();
  const lines = [["contact_id", ...lcs.map((lc) => lc.name), "index", "last_event_at"].map(csvCell).join(",")];
  let cursor = null;
  do {
    const page = await api(tenantPath("contacts"), cursor ? [...base, ["cursor", cursor]] : base);
    for (const it of page.items) {
      lines.push([it.contact_id, ...lcs.map((lc) => it.stages[lc.name]), it.index, it.last_event_at].map(csvCell).join(","));
    }
    cursor = page.next_cursor;
    status.textContent = `${lines.length - 1} rows…`;
  } while (cursor);
  const blob = new Blob([lines.join("\r\n") + "\r\n"], { type: "text/csv" });
  const a = h("a", { href: URL.createObjectURL(blob), download: `${state.tenant}-contacts.csv` });
  document.body.append(a);
  a.click();
  a.remove();
  status.textContent = `Exported ${lines.length - 1} contacts.`;
}

// ------------------------------------------------------------------ contact card
async function contactCard(id) {
  let contact;
  try {
    contact = await api(contactPath(id));
  } catch (e) {
    if (e.status === 404) {
      show(h("h1", { tabindex: "-1" }, "Contact not found"),
        h("p", { id: "not-found" }, `No contact “${id}” in tenant ${state.tenant}.`));
      return;
    }
    throw e;
  }
  let history = { points: [] };
  try { history = await api(contactPath(id, "/history")); } catch (e) { /* none yet */ }
  renderCard(contact, history);
  const seen = [];
  state.stream = openStream([["contact_id", id]], async (event, t) => {
    if (event !== "transition" || t.contact_id !== id) return;
    const text = `${t.lifecycle} ${t.from_stage || "(new)"} → ${t.to_stage}`;
    seen.unshift(`${text} at ${when(t.occurred_at)}`);
    seen.length = Math.min(seen.length, 4);
    announce(`Stage change: ${text}`);
    try {
      const [c, hist] = await Promise.all([api(contactPath(id)), api(contactPath(id, "/history"))]);
      renderCard(c, hist);
    } catch (e) { /* the next change or refresh tries again */ }
    const note = document.getElementById("live-note");
    if (note) note.textContent = `Live: ${seen.join("; ")}`;
  });
  state.timer = setInterval(async () => {
    try { renderCard(await api(contactPath(id)), await api(contactPath(id, "/history"))); } catch (e) { /* keep */ }
  }, REFRESH_MS);
}
function renderCard(c, history) {
  const m = state.model;
  const lcBy = Object.fromEntries(m.lifecycles.map((lc) => [lc.name, lc]));
  const band = m.band_lifecycle && c.lifecycles[m.band_lifecycle];
  const trend = m.trend_lifecycle && c.lifecycles[m.trend_lifecycle];
  const first = firstLifecycle();
  const others = m.lifecycles.filter((lc) => lc !== first);
  const weights = m.indices[c.half] || {};
  const components = m.components.map((name) => ({ name, score: c.components[name] || 0, weight: weights[name] || 0 }));
  const note = document.getElementById("live-note");
  const old = note ? note.textContent : "";
  const main = [
    h("div", { class: "card-head" },
      h("h1", { tabindex: "-1" }, c.contact_id),
      h("span", { class: "badge", id: "card-stage" }, `${first.name}: ${c.stage}`),
      band ? h("span", { class: "badge", id: "card-band" }, `band: ${band.stage}`) : h("span", { class: "badge muted" }, "no band in this model"),
      trend ? h("span", { class: "badge", id: "card-trend" }, `trend: ${trend.stage}`) : h("span", { class: "badge muted" }, "no trend in this model"),
      h("span", { class: "muted" }, `${c.customer ? "customer" : "not a customer"} · ${c.events_counted} events · evaluated ${when(c.evaluated_at)}`)),
    h("p", { id: "live-note", class: "muted", "aria-live": "polite" }, old),
    h("div", { class: "grid" },
      h("section", { class: "panel", "aria-labelledby": "dial-title" },
        h("h2", { id: "dial-title" }, `Index ${fmt(c.index)} (${c.half})`), dial(first, c)),
      h("section", { class: "panel", "aria-labelledby": "comp-title" },
        h("h2", { id: "comp-title" }, "Why: component scores and weights"),
        componentTable(components, c)),
      h("section", { class: "panel", "aria-labelledby": "lc-title" },
        h("h2", { id: "lc-title" }, "Stages of every lifecycle"),
        h("div", { class: "scroll" }, h("table", { id: "lifecycles" },
          h("thead", {}, h("tr", {}, ["lifecycle", "stage", "since", "for"].map((t) => h("th", { scope: "col" }, t)))),
          h("tbody", {}, m.lifecycles.map((lc) => {
            const st = c.lifecycles[lc.name];
            return h("tr", {}, h("th", { scope: "row" }, lc.name + (lc === first ? " (dial)" : "")),
              h("td", {}, st ? st.stage : "–"), h("td", {}, st ? when(st.entered_at) : "–"),
              h("td", {}, st ? ago(st.in_stage_ms) : "–"));
          })))),
        others.length ? null : h("p", { class: "muted" }, "The model has one lifecycle."))),
    h("section", { class: "panel", style: "margin-top:16px", "aria-labelledby": "hist-title" },
      h("h2", { id: "hist-title" }, "Score history"), historyChart(c, history)),
    h("section", { class: "panel", style: "margin-top:16px", "aria-labelledby": "tr-title" },
      h("h2", { id: "tr-title" }, "Last transitions"), transitionsTable(c.last_transitions, lcBy)),
  ];
  const focused = document.activeElement && document.activeElement.id;
  show(...main);
  if (focused) document.getElementById(focused)?.focus();
}
function componentTable(components, c) {
  const total = components.reduce((a, x) => a + x.weight * x.score, 0);
  return h("div", { class: "scroll" }, h("table", { id: "components" },
    h("caption", {}, `Weights of the ${c.half} index; weight × score summed: ${fmt(total)}`),
    h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "component"), h("th", { scope: "col", class: "num" }, "score"),
      h("th", { scope: "col" }, h("span", { class: "sr-only" }, "score bar")),
      h("th", { scope: "col", class: "num" }, "weight"), h("th", { scope: "col", class: "num" }, "adds"))),
    h("tbody", {}, components.map((x) => h("tr", {},
      h("th", { scope: "row" }, x.name),
      h("td", { class: "num" }, fmt(x.score)),
      h("td", { "aria-hidden": "true" }, h("span", { class: "bar", style: `width:${Math.max(1, 0.7 * x.score)}px` }),
        h("br"), h("span", { class: "bar w", style: `width:${Math.max(1, 70 * x.weight)}px` })),
      h("td", { class: "num" }, fmt(x.weight, 2)),
      h("td", { class: "num" }, fmt(x.weight * x.score)))))),
  h("p", { class: "muted" }, "Blue: the component's score (0–100); orange: its weight in the index."));
}

// The dial: one sector per index of the first lifecycle's stages (two halves for the
// four quarters), each running from 0 at the bottom to 100 at the top; a stage's part of its
// sector starts at the threshold that leads into it; the thresholds are ticks with their values.
function dialSectors(lc) {
  const order = [];
  for (const st of lc.stages) if (!order.includes(st.index)) order.push(st.index);
  return order.map((index) => {
    const stages = lc.stages.filter((st) => st.index === index).map((st) => st.name);
    const entry = {};
    const ticks = [];
    for (const e of lc.edges) {
      if (!stages.includes(e.from) || !stages.includes(e.to)) continue;
      for (const t of e.thresholds) {
        if (t.index !== index) continue;
        ticks.push({ level: t.level, text: `${e.id}: ${t.at_least ? "≥" : "<"} ${t.level}`, at_least: t.at_least });
        if (t.at_least) entry[e.to] = Math.min(entry[e.to] ?? 101, t.level);
      }
    }
    const known = stages.filter((n) => entry[n] !== undefined).sort((a, b) => entry[a] - entry[b]);
    const unknown = stages.filter((n) => entry[n] === undefined);
    let parts;
    if (known.length && unknown.length === 1) {
      parts = [{ stage: unknown[0], from: 0 }, ...known.map((n) => ({ stage: n, from: entry[n] }))];
    } else {
      parts = stages.map((n, i) => ({ stage: n, from: (100 * i) / stages.length }));
    }
    parts.forEach((p, i) => { p.to = i + 1 < parts.length ? parts[i + 1].from : 100; });
    return { index, parts, ticks };
  });
}
function dial(lc, c) {
  const sectors = dialSectors(lc);
  const n = sectors.length;
  const R = 120, cx = 160, cy = 150;
  // angle in degrees clockwise from the top; two sectors mirror each other (0 at the bottom)
  const angle = (i, v) => {
    const f = Math.max(0, Math.min(100, v)) / 100;
    if (n === 2) return i === 0 ? 180 + 180 * f : 180 - 180 * f;
    return (360 / n) * (i + f);
  };
  const pt = (deg, r) => [cx + r * Math.sin((deg * Math.PI) / 180), cy - r * Math.cos((deg * Math.PI) / 180)];
  const arc = (a1, a2, r) => {
    const [x1, y1] = pt(a1, r), [x2, y2] = pt(a2, r);
    const large = Math.abs(a2 - a1) > 180 ? 1 : 0;
    return `M ${x1} ${y1} A ${r} ${r} 0 ${large} ${a2 > a1 ? 1 : 0} ${x2} ${y2}`;
  };
  const colours = ["#7aa7d9", "#2f6fb8", "#3d9a5b", "#c0823a", "#8c6bb1", "#5f8f99"];
  const shapes = [];
  let colour = 0;
  sectors.forEach((sec, i) => {
    for (const p of sec.parts) {
      const a1 = angle(i, p.from), a2 = angle(i, p.to);
      const active = p.stage === c.stage;
      shapes.push(s("path", { d: arc(a1, a2, R), fill: "none", stroke: colours[colour++ % colours.length],
        "stroke-width": active ? 34 : 24, opacity: active ? 1 : 0.75 }, s("title", {}, `${p.stage}: ${sec.index} ${fmt(p.from, 0)}–${fmt(p.to, 0)}`)));
      const [lx, ly] = pt(angle(i, (p.from + p.to) / 2), R - 40);
      shapes.push(s("text", { x: lx, y: ly, "text-anchor": "middle", "font-size": 13, "font-weight": active ? 700 : 400, fill: "#1b1f24" }, p.stage));
    }
    for (const t of sec.ticks) {
      const a = angle(i, t.level);
      const [x1, y1] = pt(a, R - 18), [x2, y2] = pt(a, R + 18), [tx, ty] = pt(a, R + 30);
      shapes.push(s("line", { x1, y1, x2, y2, stroke: "#1b1f24", "stroke-width": 2, "stroke-dasharray": t.at_least ? null : "3 2" },
        s("title", {}, t.text)));
      shapes.push(s("text", { x: tx, y: ty + 4, "text-anchor": "middle", "font-size": 11, fill: "#1b1f24" }, String(t.level)));
    }
    const [hx, hy] = pt(angle(i, 50), R + 48);
    shapes.push(s("text", { x: Math.max(40, Math.min(280, hx)), y: hy, "text-anchor": "middle", "font-size": 12, fill: "#4a5260" }, sec.index));
  });
  const half = sectors.findIndex((sec) => sec.index === c.half);
  if (half >= 0) {
    const [nx, ny] = pt(angle(half, c.index), R - 4);
    shapes.push(s("line", { x1: cx, y1: cy, x2: nx, y2: ny, stroke: "#a11d1d", "stroke-width": 4, "stroke-linecap": "round", id: "needle" }));
  }
  shapes.push(s("circle", { cx, cy, r: 6, fill: "#a11d1d" }));
  const ticks = sectors.flatMap((sec) => sec.ticks.map((t) => `${sec.index} ${t.text}`)).join("; ");
  return s("svg", { viewBox: "-10 -20 340 340", class: "dial", role: "img", "aria-labelledby": "dial-t dial-d", id: "dial" },
    s("title", { id: "dial-t" }, `Index ${fmt(c.index)} in ${c.stage} (${c.half})`),
    s("desc", { id: "dial-d" }, `Sectors: ${sectors.map((sec) => `${sec.index}: ${sec.parts.map((p) => p.stage).join(", ")}`).join("; ")}. Thresholds: ${ticks || "none"}.`),
    shapes);
}
function historyChart(c, history) {
  // points: the history API's midnights, the index after each transition, and now
  const pts = history.points.map((p) => ({ t: Date.parse(p.at), v: p.index, kind: "midnight" }));
  const trans = (c.last_transitions || []).filter((t) => t.lifecycle === firstLifecycle().name || !t.lifecycle)
    .map((t) => ({ t: Date.parse(t.occurred_at), v: t.index, kind: "transition", label: `${t.from_stage || "(new)"} → ${t.to_stage}` }));
  const now = { t: Date.parse(c.evaluated_at), v: c.index, kind: "now" };
  const all = [...pts, ...trans, now].sort((a, b) => a.t - b.t);
  const W = 900, H = 220, L = 34, B = 24;
  const t0 = all[0].t, t1 = Math.max(all[all.length - 1].t, t0 + 1);
  const x = (t) => L + ((W - L - 8) * (t - t0)) / (t1 - t0);
  const y = (v) => 8 + (H - B - 8) * (1 - v / 100);
  const line = all.map((p) => `${x(p.t).toFixed(1)},${y(p.v).toFixed(1)}`).join(" ");
  const grid = [0, 25, 50, 75, 100].map((v) => [
    s("line", { x1: L, x2: W - 8, y1: y(v), y2: y(v), stroke: "#c9ced6" }),
    s("text", { x: L - 4, y: y(v) + 4, "text-anchor": "end", "font-size": 11 }, String(v))]);
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img", "aria-labelledby": "hist-t hist-d", id: "history-chart" },
    s("title", { id: "hist-t" }, "Index over time"),
    s("desc", { id: "hist-d" }, `${pts.length} midnight points, ${trans.length} transitions marked, now ${fmt(c.index)}.`),
    grid,
    s("text", { x: L, y: H - 6, "font-size": 11 }, when(new Date(t0).toISOString())),
    s("text", { x: W - 8, y: H - 6, "font-size": 11, "text-anchor": "end" }, "now"),
    s("polyline", { points: line, fill: "none", stroke: "#2f6fb8", "stroke-width": 2 }),
    all.map((p) => p.kind === "transition"
      ? s("path", { d: `M ${x(p.t)} ${y(p.v) - 7} l 6 7 l -6 7 l -6 -7 z`, fill: "#c0823a", stroke: "#1b1f24", class: "marker" },
        s("title", {}, `${p.label} at ${when(new Date(p.t).toISOString())}, index ${fmt(p.v)}`))
      : s("circle", { cx: x(p.t), cy: y(p.v), r: p.kind === "now" ? 5 : 3, fill: p.kind === "now" ? "#a11d1d" : "#2f6fb8" },
        s("title", {}, `${p.kind} ${when(new Date(p.t).toISOString())}: ${fmt(p.v)}`))));
  return h("figure", { style: "margin:0" }, svg,
    h("figcaption", { class: "muted" }, "Blue dots: the index at each UTC midnight (history API); orange diamonds: transitions of ",
      firstLifecycle().name, " (index after the change); red: now."));
}
function transitionsTable(list, lcBy) {
  if (!list || !list.length) return h("p", { class: "muted" }, "No transitions yet.");
  return h("div", { class: "scroll" }, h("table", { id: "transitions" },
    h("thead", {}, h("tr", {}, ["when", "lifecycle", "change", "reason", "rule", "index", "caused by"].map((t) =>
      h("th", { scope: "col" }, t)))),
    h("tbody", {}, list.map((t) => h("tr", {},
      h("td", {}, when(t.occurred_at)), h("td", {}, t.lifecycle || "–"),
      h("td", {}, `${t.from_stage || "(new)"} → ${t.to_stage}`), h("td", {}, t.reason),
      h("td", {}, t.rule_id || "–"), h("td", { class: "num" }, `${fmt(t.previous_index)} → ${fmt(t.index)}`),
      h("td", {}, t.cause_event_id || (t.reason === "decay" ? "time (decay)" : "–")))))));
}

// ------------------------------------------------------------------ routing
async function route() {
  stopLive();
  if (!state.token) return signIn();
  document.getElementById("nav").hidden = false;
  document.getElementById("tenant-name").textContent = `tenant ${state.tenant}`;
  const hash = location.hash || "#/overview";
  const path = hash.slice(1).split("?")[0];
  for (const a of document.querySelectorAll("nav a")) {
    a.toggleAttribute("aria-current", a.getAttribute("href") === `#${path}` || (path.startsWith("/contact/") && a.getAttribute("href") === "#/contacts"));
  }
  try {
    if (!state.model) state.model = await api(tenantPath("model"));
    if (path === "/overview" || path === "/" || path === "/signin") await overview();
    else if (path === "/contacts") await contacts();
    else if (path.startsWith("/contact/")) await contactCard(decodeURIComponent(path.slice(9)));
    else show(h("h1", { tabindex: "-1" }, "Not found"));
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) return signOut("The token was refused; sign in again.");
    if (e instanceof ApiError && e.status === 404) {
      show(h("h1", { tabindex: "-1" }, "Nothing to show"), h("p", { id: "not-found" }, `This token cannot read tenant “${state.tenant}”.`));
      return;
    }
    show(h("h1", { tabindex: "-1" }, "Something went wrong"),
      h("p", { class: "error", role: "alert" }, e.status === 503 ? "The workers are rebalancing; retrying in a moment." : String(e.message)));
    if (e.status === 503) setTimeout(route, 1500);
    return;
  }
  view().querySelector("h1")?.focus({ preventScroll: true });
}
function signOut(message) {
  sessionStorage.removeItem("ei.token");
  state.token = null;
  state.model = null;
  signIn(message);
}
window.addEventListener("hashchange", route);
document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("sign-out").addEventListener("click", () => signOut("Signed out."));
  state.token = sessionStorage.getItem("ei.token");
  state.tenant = sessionStorage.getItem("ei.tenant");
  route();
});
