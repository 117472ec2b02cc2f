// The Sluice console: a small single-page app over the gateway's HTTP API (/v1/...).
// No framework; uPlot draws the charts. Every action is an API call, so the gateway and
// the store decide what the caller may do; buttons the caller would be refused are hidden
// (GET /v1/access).
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const page = () => $("#page");
let timers = [];
let sources = [];
let loading = 0; // navigations whose page is still being drawn
let config = { trace_url: "" };

// -- calling the API ---------------------------------------------------------------------

function token() { return sessionStorage.getItem("sluice_token") || ""; }

async function api(path, options = {}) {
  const headers = { ...(options.headers || {}) };
  if (token()) headers.Authorization = `Bearer ${token()}`;
  if (options.body !== undefined) headers["Content-Type"] = "application/json";
  const resp = await fetch(path, {
    method: options.method || "GET",
    headers,
    body: options.body === undefined ? undefined : JSON.stringify(options.body),
  });
  const body = await resp.json().catch(() => ({}));
  if (!resp.ok) {
    if (resp.status === 401) askToken();
    const err = new Error(`${body.reason || resp.status}: ${body.error || resp.statusText}`);
    err.status = resp.status;
    err.body = body;
    throw err;
  }
  return body;
}

function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v === undefined || v === null || v === "") continue;
    for (const one of Array.isArray(v) ? v : [v]) q.append(k, one);
  }
  const s = q.toString();
  return s ? `?${s}` : "";
}

function flash(text, kind = "ok") {
  const el = $("#flash");
  el.textContent = text;
  el.className = kind;
  el.dataset.kind = kind;
}

function askToken() {
  const d = $("#token-dialog");
  if (!d.open) d.showModal();
}

async function access(params = {}) {
  try {
    return await api(`/v1/access${query(params)}`);
  } catch (e) {
    return { principal: "", secured: true, streams: {}, groups: {} };
  }
}

// -- small helpers -------------------------------------------------------------------------

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "on") for (const [ev, fn] of Object.entries(v)) el.addEventListener(ev, fn);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (v !== undefined && v !== null && v !== false) el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) el.append(c instanceof Node ? c : document.createTextNode(String(c ?? "")));
  return el;
}

function table(headers, rows, testid) {
  return h("table", { "data-testid": testid },
    h("thead", {}, h("tr", {}, headers.map(([label, num]) => h("th", { class: num ? "num" : "" }, label)))),
    h("tbody", {}, rows));
}

const fmt = (n) => Number(n || 0).toLocaleString("en-US");
const enc = encodeURIComponent;

function b64bytes(b64) {
  const bin = atob(b64 || "");
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

function hexdump(bytes) {
  const lines = [];
  for (let i = 0; i < bytes.length; i += 16) {
    const chunk = Array.from(bytes.slice(i, i + 16));
    const hex = chunk.map((b) => b.toString(16).padStart(2, "0")).join(" ");
    const text = chunk.map((b) => (b >= 32 && b < 127 ? String.fromCharCode(b) : ".")).join("");
    lines.push(`${i.toString(16).padStart(8, "0")}  ${hex.padEnd(48)}  ${text}`);
  }
  return lines.join("\n");
}

// The data as pretty JSON when it is JSON, else as a hex dump.
function renderData(b64, contentType) {
  const bytes = b64bytes(b64);
  if (!bytes.length) return h("p", { class: "muted" }, "(no data: a notification)");
  try {
    const text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
    if (/json/.test(contentType || "") || /^\s*[[{"]/.test(text)) {
      return h("pre", { "data-testid": "event-json" }, JSON.stringify(JSON.parse(text), null, 2));
    }
    return h("pre", { "data-testid": "event-text" }, text);
  } catch (e) {
    return h("pre", { "data-testid": "event-hex" }, hexdump(bytes));
  }
}

function traceLink(traceparent) {
  const m = /^[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$/.exec(traceparent || "");
  if (!m || !config.trace_url) return null;
  const url = config.trace_url.replace("{trace_id}", m[1]).replace("{span_id}", m[2]);
  return h("a", { href: url, target: "_blank", rel: "noopener", "data-testid": "trace-link" }, `trace ${m[1]}`);
}

function chart(title, series, data, width = 560) {
  const box = h("div", { class: "chart", "data-testid": `chart-${title.toLowerCase().replace(/\W+/g, "-")}` });
  const opts = {
    title, width, height: 220,
    // At least the last minute on the time axis, so a few points do not span years.
    scales: { x: { time: true, range: (u, min, max) => [Math.min(min ?? max - 60, max - 60), max ?? Date.now() / 1000] } },
    series: [{}, ...series.map((label, i) => ({ label, stroke: palette(i), width: 1.5 }))],
    axes: [{}, { size: 60 }],
  };
  box.plot = new uPlot(opts, data, box);
  return box;
}

function palette(i) {
  const colors = ["#1f6feb", "#d73a49", "#2da44e", "#bf8700", "#8250df", "#0a7ea4", "#e16f24", "#57606a"];
  return colors[i % colors.length];
}

// -- pages -------------------------------------------------------------------------------

async function overview() {
  const root = page();
  root.replaceChildren(h("h1", {}, "Overview"));
  const cards = h("div", { class: "cards" });
  const charts = h("div", { class: "charts" });
  const groups = h("div");
  root.append(cards, charts, h("h2", {}, "Groups"), groups);
  let rateChart = null;
  let subsChart = null;

  async function refresh() {
    const stats = await api("/v1/stats");
    const pts = stats.samples;
    const times = [], rates = [], subs = [];
    for (let i = 1; i < pts.length; i++) {
      const dt = pts[i][0] - pts[i - 1][0];
      times.push(pts[i][0]);
      rates.push(dt > 0 ? Math.max(0, (pts[i][1] - pts[i - 1][1]) / dt) : 0);
      subs.push(pts[i][2]);
    }
    const rate = rates.length ? rates[rates.length - 1] : 0;
    cards.replaceChildren(
      h("div", { class: "card" }, h("div", { class: "label" }, "Head position"), h("div", { class: "value", "data-testid": "head-position" }, fmt(stats.head_position))),
      h("div", { class: "card" }, h("div", { class: "label" }, "Appends / s"), h("div", { class: "value" }, fmt(Math.round(rate)))),
      h("div", { class: "card" }, h("div", { class: "label" }, "Gateway subscribers"), h("div", { class: "value" }, fmt(stats.subscribers))),
    );
    if (!rateChart) {
      rateChart = chart("Append rate (events/s)", ["events/s"], [times, rates]);
      subsChart = chart("Subscribers", ["subscribers"], [times, subs]);
      charts.append(rateChart, subsChart);
    } else {
      rateChart.plot.setData([times, rates]);
      subsChart.plot.setData([times, subs]);
    }
    // Groups every 10 s: describing a group counts its lag, which costs the store a scan.
    if (tick++ % 5 === 0) {
      const list = await api("/v1/groups");
      groups.replaceChildren(groupTable(list.groups));
    }
  }
  let tick = 0;
  await refresh();
  if (root.isConnected) timers.push(setInterval(() => refresh().catch((e) => flash(e.message, "error")), 2000));
}

function totalLag(g) { return (g.partitions || []).reduce((s, p) => s + Number(p.lag_events || 0), 0); }

function groupTable(groups) {
  return table(
    [["Group"], ["Members", 1], ["Partitions", 1], ["Lag (events)", 1], ["Filter"]],
    groups.map((g) => h("tr", { class: "link", "data-group": g.group, on: { click: () => go(`#/group/${enc(g.group)}`) } },
      h("td", {}, g.group),
      h("td", { class: "num" }, (g.members || []).length),
      h("td", { class: "num" }, (g.partitions || []).length),
      h("td", { class: "num", "data-testid": "group-lag" }, fmt(totalLag(g))),
      h("td", { class: "muted" }, [...(g.config.filter.stream_prefixes || []).map((p) => `${p}*`), ...(g.config.filter.event_types || [])].join(", ") || "everything"))),
    "groups-table");
}

async function streams(params) {
  const root = page();
  const prefix = params.get("prefix") || "";
  const tokens = (params.get("pages") || "").split(",").filter(Boolean);
  const current = tokens[tokens.length - 1] || "";
  const input = h("input", { id: "stream-prefix", placeholder: "name prefix", value: prefix, "data-testid": "stream-prefix" });
  const search = () => go(`#/streams${query({ prefix: input.value })}`);
  input.addEventListener("keydown", (e) => { if (e.key === "Enter") search(); });
  root.replaceChildren(h("h1", {}, "Streams"),
    h("div", { class: "toolbar" }, input, h("button", { on: { click: search }, "data-testid": "stream-search" }, "Search")));
  const list = await api(`/v1/streams${query({ prefix, page_size: 50, page_token: current })}`);
  root.append(table(
    [["Stream"], ["Events", 1], ["Last revision", 1], ["Last position", 1], ["Updated"]],
    list.streams.map((s) => h("tr", { class: "link", "data-stream": s.stream, on: { click: () => go(`#/stream/${enc(s.stream)}`) } },
      h("td", {}, s.stream), h("td", { class: "num" }, fmt(s.event_count)), h("td", { class: "num" }, s.last_revision),
      h("td", { class: "num" }, s.last_position), h("td", { class: "muted" }, s.updated || ""))),
    "streams-table"));
  const pager = h("div", { class: "toolbar" });
  if (tokens.length) {
    pager.append(h("button", { class: "secondary", on: { click: () => go(`#/streams${query({ prefix, pages: tokens.slice(0, -1).join(",") })}`) } }, "Previous page"));
  }
  if (list.next_page_token) {
    pager.append(h("button", { "data-testid": "next-page", on: { click: () => go(`#/streams${query({ prefix, pages: [...tokens, list.next_page_token].join(",") })}`) } }, "Next page"));
  }
  pager.append(h("span", { class: "muted", "data-testid": "page-number" }, `page ${tokens.length + 1}`));
  root.append(pager);
}

async function stream(name, params) {
  const root = page();
  const [info, can] = await Promise.all([api(`/v1/streams/${enc(name)}`), access({ stream: name })]);
  const from = params.get("from");
  const read = await api(`/v1/streams/${enc(name)}/events${query({ backwards: true, max_count: 50, ...(from ? { "from.revision": from } : { "from.end": true }) })}`);
  root.replaceChildren(h("h1", {}, `Stream ${name}`),
    h("dl", { class: "fields" },
      h("dt", {}, "Events"), h("dd", {}, fmt(info.event_count)),
      h("dt", {}, "Revisions"), h("dd", {}, `${info.first_revision} – ${info.last_revision}`),
      h("dt", {}, "Last position"), h("dd", {}, info.last_position),
      h("dt", {}, "Retention"), h("dd", {}, JSON.stringify(info.retention || {}))),
    h("h2", {}, "Events, newest first"),
    table([["Revision", 1], ["Position", 1], ["Type"], ["Id"], ["Created"]],
      read.events.map((e) => h("tr", { class: "link", "data-revision": e.revision, on: { click: () => go(`#/event/${enc(name)}/${e.revision}`) } },
        h("td", { class: "num" }, e.revision), h("td", { class: "num" }, e.position), h("td", {}, e.type),
        h("td", { class: "mono" }, e.id), h("td", { class: "muted" }, e.created))),
      "events-table"));
  const pager = h("div", { class: "toolbar" });
  if (read.next) pager.append(h("button", { class: "secondary", on: { click: () => go(`#/stream/${enc(name)}?from=${read.next.revision}`) } }, "Older events"));
  if (can.streams.append) pager.append(h("button", { on: { click: () => go(`#/publish${query({ stream: name })}`) } }, "Append an event"));
  if (can.streams.delete) {
    pager.append(h("button", { class: "danger", "data-testid": "delete-stream", on: { click: async () => {
      if (!confirm(`Delete stream ${name}? Its events can no longer be read.`)) return;
      await api(`/v1/streams/${enc(name)}`, { method: "DELETE" });
      flash(`Deleted ${name}`);
      go("#/streams");
    } } }, "Delete stream"));
  }
  root.append(pager);
}

async function eventPage(name, revision) {
  const root = page();
  const read = await api(`/v1/streams/${enc(name)}/events${query({ "from.revision": revision, max_count: 1 })}`);
  const e = read.events[0];
  if (!e || e.revision !== String(revision)) {
    root.replaceChildren(h("h1", {}, "Event not found"));
    return;
  }
  const md = Object.entries(e.metadata || {});
  const link = traceLink((e.metadata || {}).traceparent);
  root.replaceChildren(h("h1", {}, `${e.type} in ${name}`),
    h("dl", { class: "fields", "data-testid": "event-fields" },
      h("dt", {}, "Id"), h("dd", { class: "mono" }, e.id),
      h("dt", {}, "Stream"), h("dd", {}, h("a", { href: `#/stream/${enc(name)}` }, name)),
      h("dt", {}, "Revision"), h("dd", {}, e.revision),
      h("dt", {}, "Position"), h("dd", {}, e.position),
      h("dt", {}, "Created"), h("dd", {}, e.created),
      h("dt", {}, "Content type"), h("dd", {}, e.content_type || "(none)"),
      h("dt", {}, "Trace"), h("dd", {}, link || h("span", { class: "muted" }, "none"))),
    h("h2", {}, "Data"), renderData(e.data, e.content_type),
    h("h2", {}, "Metadata"),
    md.length ? table([["Key"], ["Value"]], md.map(([k, v]) => h("tr", {}, h("td", { class: "mono" }, k), h("td", {}, v))), "metadata-table")
      : h("p", { class: "muted" }, "none"));
}

function tail(params) {
  const root = page();
  const prefix = h("input", { placeholder: "stream prefix", value: params.get("prefix") || "", "data-testid": "tail-prefix" });
  const type = h("input", { placeholder: "event type", value: params.get("type") || "", "data-testid": "tail-type" });
  const count = h("span", { class: "muted", "data-testid": "tail-count" }, "0 events");
  const body = h("tbody");
  let seen = 0;
  const start = () => {
    for (const s of sources) s.close();
    sources = [];
    body.replaceChildren();
    seen = 0;
    const url = `/v1/watch${query({ prefix: prefix.value, type: type.value, access_token: token() })}`;
    const src = new EventSource(url);
    // Rows are added once per frame, however fast events come (a thousand a second is
    // one DOM update per frame, and only the newest 500 rows are kept).
    let queued = [];
    const flush = () => {
      const rows = queued.slice(-500).reverse().map(([id, ev]) =>
        h("tr", { class: "link", "data-id": ev.id, on: { click: () => go(`#/event/${enc(ev.subject)}/${ev.sluicerevision}`) } },
          h("td", { class: "num" }, id), h("td", {}, ev.subject), h("td", {}, ev.type), h("td", { class: "mono" }, ev.id), h("td", { class: "muted" }, ev.time)));
      queued = [];
      body.prepend(...rows);
      while (body.children.length > 500) body.lastChild.remove();
      count.textContent = `${seen} events`;
    };
    src.addEventListener("event", (m) => {
      seen += 1;
      if (!queued.length) requestAnimationFrame(flush);
      queued.push([m.lastEventId, JSON.parse(m.data)]);
    });
    src.addEventListener("caught_up", () => { $("#tail-state").textContent = "live"; });
    src.onerror = () => { $("#tail-state").textContent = "reconnecting"; };
    sources.push(src);
  };
  root.replaceChildren(h("h1", {}, "Live tail"),
    h("div", { class: "toolbar" }, prefix, type, h("button", { "data-testid": "tail-start", on: { click: start } }, "Tail"), count,
      h("span", { id: "tail-state", class: "muted", "data-testid": "tail-state" }, "")),
    h("table", { "data-testid": "tail-table" },
      h("thead", {}, h("tr", {}, h("th", { class: "num" }, "Position"), h("th", {}, "Stream"), h("th", {}, "Type"), h("th", {}, "Id"), h("th", {}, "Time"))),
      body));
  if (params.get("prefix") || params.get("type")) start();
}

async function groups() {
  const root = page();
  const list = await api("/v1/groups");
  root.replaceChildren(h("h1", {}, "Groups"), groupTable(list.groups));
}

async function group(name) {
  const root = page();
  const can = await access({ group: name, stream: `$dlq.${name}` });
  const history = { times: [], total: [], lags: new Map() };
  const members = h("div"), parts = h("div"), charts = h("div", { class: "charts" }), dead = h("div");
  let lagChart = null;
  let dlq = `$dlq.${name}`;

  const target = h("select", { "data-testid": "reset-to" },
    h("option", { value: "end" }, "the end (skip what waits)"), h("option", { value: "start" }, "the start (all again)"), h("option", { value: "position" }, "a position"));
  const position = h("input", { type: "number", min: "1", placeholder: "position", "data-testid": "reset-position" });
  const reset = h("button", { class: "danger", "data-testid": "reset-group", on: { click: async () => {
    const to = target.value === "position" ? { position: position.value } : { [target.value]: {} };
    if (!confirm(`Reset every cursor of ${name} to ${target.value === "position" ? `position ${position.value}` : `the ${target.value}`}?`)) return;
    try {
      await api(`/v1/groups/${enc(name)}/reset`, { method: "POST", body: { to } });
      flash(`Cursors of ${name} reset`);
      await refresh();
    } catch (e) { flash(e.message, "error"); }
  } } }, "Reset cursors");

  root.replaceChildren(h("h1", {}, `Group ${name}`),
    can.groups.admin ? h("div", { class: "toolbar" }, "Reset cursors to", target, position, reset) : "",
    h("h2", {}, "Members"), members, h("h2", {}, "Partitions"), parts, charts,
    h("h2", {}, "Dead letters"), dead);

  async function refresh() {
    const g = await api(`/v1/groups/${enc(name)}`);
    dlq = g.config.dead_letter_stream || dlq;
    members.replaceChildren(table([["Member"], ["Epoch", 1], ["Assigned"], ["Lease expires"]],
      (g.members || []).map((m) => h("tr", {}, h("td", {}, m.member_id), h("td", { class: "num" }, m.member_epoch),
        h("td", {}, (m.assigned || []).join(", ")), h("td", { class: "muted" }, m.lease_expires))), "members-table"));
    parts.replaceChildren(table([["Partition", 1], ["Owner"], ["Cursor", 1], ["Lag (events)", 1], ["Lag (s)", 1]],
      (g.partitions || []).map((p) => h("tr", {}, h("td", { class: "num" }, p.partition), h("td", {}, p.owner || h("span", { class: "muted" }, "unowned")),
        h("td", { class: "num" }, p.cursor), h("td", { class: "num" }, fmt(p.lag_events)), h("td", { class: "num" }, Number(p.lag_seconds || 0).toFixed(1)))),
      "partitions-table"));
    $("[data-testid=partitions-table]").dataset.totalLag = String(totalLag(g));
    // Lag over time, per partition (those that have lagged while the page is open).
    history.times.push(Date.now() / 1000);
    for (const p of g.partitions || []) {
      const lag = Number(p.lag_events || 0);
      if (lag > 0 && !history.lags.has(p.partition) && history.lags.size < 24) {
        history.lags.set(p.partition, history.times.slice(0, -1).map(() => 0));
      }
      if (history.lags.has(p.partition)) history.lags.get(p.partition).push(lag);
    }
    if (history.times.length > 300) {
      history.times.shift();
      for (const v of history.lags.values()) v.shift();
    }
    history.total.push(totalLag(g));
    if (history.total.length > history.times.length) history.total.shift();
    const keys = [...history.lags.keys()];
    const data = [history.times, history.total, ...keys.map((k) => history.lags.get(k))];
    if (!lagChart || lagChart.plot.series.length !== keys.length + 2) {
      lagChart = chart("Lag per partition (events)", ["total", ...keys.map((k) => `partition ${k}`)], data, 900);
      charts.replaceChildren(lagChart);
    } else {
      lagChart.plot.setData(data);
    }
    await deadLetters();
  }

  async function deadLetters() {
    let read;
    try {
      read = await api(`/v1/streams/${enc(dlq)}/events${query({ backwards: true, max_count: 50, "from.end": true })}`);
    } catch (e) {
      if (e.body && e.body.code === "NOT_FOUND") { dead.replaceChildren(h("p", { class: "muted", "data-testid": "no-dead-letters" }, "none")); return; }
      throw e;
    }
    const rows = read.events.filter((e) => (e.metadata || {})["dlq-group"] === undefined || e.metadata["dlq-group"] === name);
    const redrive = async (body) => {
      try {
        const r = await api(`/v1/groups/${enc(name)}/redrive`, { method: "POST", body });
        flash(`Redriven: ${r.redriven} (before: ${r.already})`);
      } catch (e) { flash(e.message, "error"); }
    };
    dead.replaceChildren(
      can.groups.admin && rows.length ? h("div", { class: "toolbar" }, h("button", { class: "secondary", "data-testid": "redrive-all", on: { click: () => redrive({}) } }, "Redrive all")) : "",
      table([["From stream"], ["Position", 1], ["Type"], ["Reason"], ["Attempts", 1], [""]],
        rows.map((e) => {
          const m = e.metadata || {};
          return h("tr", { "data-dead-id": m["dlq-event-id"] || e.id },
            h("td", {}, h("a", { href: `#/event/${enc(dlq)}/${e.revision}` }, m["dlq-stream"] || "")),
            h("td", { class: "num" }, m["dlq-position"] || ""), h("td", {}, e.type), h("td", { "data-testid": "dead-reason" }, m["dlq-reason"] || ""),
            h("td", { class: "num" }, m["dlq-attempts"] || ""),
            h("td", {}, can.groups.admin ? h("button", { "data-testid": "redrive", on: { click: () => redrive({ streams: [m["dlq-stream"]], from_position: m["dlq-position"], to_position: m["dlq-position"] }) } }, "Redrive") : ""));
        }), "dead-letters-table"));
  }

  await refresh();
  if (root.isConnected) timers.push(setInterval(() => refresh().catch((e) => flash(e.message, "error")), 2000));
}

async function publish(params) {
  const root = page();
  const streamIn = h("input", { value: params.get("stream") || "", placeholder: "stream", "data-testid": "publish-stream" });
  const typeIn = h("input", { placeholder: "event type", "data-testid": "publish-type" });
  const data = h("textarea", { rows: 8, "data-testid": "publish-data" }, "{}");
  const mode = h("select", { "data-testid": "publish-mode" }, h("option", { value: "append" }, "append (stored)"), h("option", { value: "publish" }, "publish (ephemeral, not stored)"));
  const send = h("button", { "data-testid": "publish-send", on: { click: async () => {
    try {
      const parsed = JSON.parse(data.value || "null");
      if (mode.value === "append") {
        const bytes = new TextEncoder().encode(JSON.stringify(parsed));
        const b64 = btoa(String.fromCharCode(...bytes));
        const r = await api(`/v1/streams/${enc(streamIn.value)}/events`, { method: "POST", body: { events: [{ type: typeIn.value, data: b64, content_type: "application/json" }] } });
        flash(`Appended at revision ${r.first_revision}, position ${r.first_position}`);
      } else {
        const r = await api("/v1/publish", { method: "POST", body: { stream: streamIn.value, type: typeIn.value, data: parsed } });
        flash(`Published to ${r.subscribers} subscribers`);
      }
    } catch (e) { flash(e.message, "error"); }
  } } }, "Send");
  root.replaceChildren(h("h1", {}, "Publish"),
    h("div", { class: "toolbar" }, streamIn, typeIn, mode), data, h("div", { class: "toolbar" }, send));
}

// -- routing ----------------------------------------------------------------------------

function go(hash) { location.hash = hash; }

async function route() {
  for (const t of timers) clearInterval(t);
  for (const s of sources) s.close();
  timers = [];
  sources = [];
  const [path, q] = (location.hash.slice(1) || "/").split("?");
  const params = new URLSearchParams(q || "");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  const nav = { "": "overview", streams: "streams", stream: "streams", event: "streams", tail: "tail", groups: "groups", group: "groups", publish: "publish" }[parts[0] || ""];
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.nav === nav);
  if (!document.body.dataset.keepFlash) flash("", "");
  // Each navigation draws into a fresh page. A page still waiting on the API when the
  // next navigation comes (a search typed while the list loads) finishes into the page
  // it began, now detached, instead of adding its table beside the new page's.
  const root = h("main", { id: "page" });
  page().replaceWith(root);
  root.dataset.ready = "false";
  document.body.dataset.loading = String(++loading);
  try {
    if (!parts.length) await overview();
    else if (parts[0] === "streams") await streams(params);
    else if (parts[0] === "stream") await stream(parts[1], params);
    else if (parts[0] === "event") await eventPage(parts[1], parts[2]);
    else if (parts[0] === "tail") tail(params);
    else if (parts[0] === "groups") await groups();
    else if (parts[0] === "group") await group(parts[1]);
    else if (parts[0] === "publish") await publish(params);
    else page().replaceChildren(h("h1", {}, "Not found"));
  } catch (e) {
    if (root.isConnected) flash(e.message, "error");
  } finally {
    document.body.dataset.loading = String(--loading);
  }
  root.dataset.ready = "true";
}

async function start() {
  $("#token-button").addEventListener("click", askToken);
  $("#token-save").addEventListener("click", () => {
    sessionStorage.setItem("sluice_token", $("#token-input").value.trim());
    route();
    whoami();
  });
  try { config = await (await fetch("/console/config.json")).json(); } catch (e) { /* defaults */ }
  window.addEventListener("hashchange", route);
  await whoami();
  await route();
}

async function whoami() {
  const a = await access();
  $("#who").textContent = a.secured ? (a.principal ? `signed in as ${a.principal}` : "not signed in") : "open (no authentication)";
}

start();
