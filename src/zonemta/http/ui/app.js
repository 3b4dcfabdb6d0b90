// zonemta dashboard: reads the relay's HTTP API (with the token from this tab's session
// storage), follows the /events websocket, and draws /metrics. No framework, no build step.
// Every text from the relay goes into the page through textContent, never as HTML.

import { LineChart, formatNumber } from "./charts.js";
import { histogramDelta, parsePrometheus, quantile, snapshot } from "./prometheus.js";

const TOKEN_KEY = "zonemta.token";
const params = new URLSearchParams(location.search);
const POLL_MS = Math.max(250, Number(params.get("interval") || 2) * 1000);
const FEED_ROWS = 300; // rows kept in the live table
const HISTORY_MESSAGES = 500; // messages whose events are kept for the message view
const API_BASE = new URL("../", location.href); // the page is served at <api>/ui/

const $ = (id) => document.getElementById(id);

const state = {
  token: sessionStorage.getItem(TOKEN_KEY) || "",
  tokenRequired: true,
  socket: null,
  reconnectDelay: 1000,
  paused: false,
  filter: "",
  history: new Map(), // message id -> [event]
  previous: null, // last metrics snapshot and its time
  zones: [],
  openMessage: null,
  eventTimes: [],
  timers: [],
};

// ---------------------------------------------------------------- the API

class ApiError extends Error {
  constructor(status, message, body) {
    super(message);
    this.status = status;
    this.body = body;
  }
}

async function api(method, path, body) {
  const headers = {};
  if (state.token) headers.Authorization = `Bearer ${state.token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(new URL(path.replace(/^\//, ""), API_BASE), {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: "no-store",
  });
  const text = await response.text();
  const isJson = (response.headers.get("content-type") || "").includes("json");
  const data = isJson && text ? JSON.parse(text) : text;
  if (!response.ok) {
    if (response.status === 401) signedOut("The relay refused the token.");
    const message = data && data.error ? data.error : `${response.status} ${response.statusText}`;
    throw new ApiError(response.status, message, data);
  }
  return data;
}

const get = (path) => api("GET", path);

// ---------------------------------------------------------------- small DOM helpers

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("data-")) node.dataset[key.slice(5)] = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function fillTable(table, rows, emptyId) {
  const body = table.tBodies[0];
  body.replaceChildren(...rows);
  if (emptyId) $(emptyId).hidden = rows.length > 0;
}

function toast(message, kind = "info") {
  const node = el("div", { class: `toast toast-${kind}`, role: "status", text: message });
  $("toasts").append(node);
  setTimeout(() => node.remove(), 6000);
}

function utc(value) {
  if (value === null || value === undefined) return "–";
  const date = typeof value === "number" ? new Date(value * 1000) : new Date(value);
  if (Number.isNaN(date.getTime())) return String(value);
  return date.toISOString().replace("T", " ").replace(/\.\d+Z$/, "");
}

function clock(epochSeconds) {
  return new Date(epochSeconds * 1000).toISOString().slice(11, 23);
}

function stateBadge(name) {
  return el("span", { class: `badge state-${name || "none"}`, text: name || "–" });
}

function messageLink(id, seq) {
  const label = seq ? `${id}.${seq}` : id;
  return el("button", {
    type: "button",
    class: "link mono",
    "data-message": id,
    text: label,
    onclick: () => openMessage(id),
  });
}

function errorText(error) {
  return error instanceof ApiError ? `${error.status}: ${error.message}` : String(error);
}

// ---------------------------------------------------------------- sign in

function signedOut(message) {
  state.token = "";
  sessionStorage.removeItem(TOKEN_KEY);
  stopLive();
  $("dashboard").hidden = true;
  $("lookup").hidden = true;
  $("signout").hidden = true;
  $("feed-status").hidden = true;
  $("message-view").hidden = true;
  $("login").hidden = false;
  const error = $("login-error");
  error.textContent = message || "";
  error.hidden = !message;
  $("token").focus();
}

async function start() {
  const fromHash = new URLSearchParams(location.hash.slice(1)).get("token");
  if (fromHash) {
    state.token = fromHash;
    sessionStorage.setItem(TOKEN_KEY, fromHash);
    history.replaceState(null, "", location.pathname + location.search);
  }
  try {
    const settings = await get("ui/settings.json");
    state.tokenRequired = Boolean(settings.token_required);
  } catch (error) {
    state.tokenRequired = true;
  }
  if (state.tokenRequired && !state.token) {
    signedOut("");
    return;
  }
  await openDashboard();
}

async function openDashboard() {
  try {
    state.zones = (await get("zones")).map((zone) => zone.name);
  } catch (error) {
    if (!(error instanceof ApiError && error.status === 401)) signedOut(errorText(error));
    return;
  }
  $("login").hidden = true;
  $("dashboard").hidden = false;
  $("lookup").hidden = false;
  $("signout").hidden = !state.tokenRequired;
  $("feed-status").hidden = false;
  fillZoneSelects();
  startLive();
}

$("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  state.token = $("token").value.trim();
  sessionStorage.setItem(TOKEN_KEY, state.token);
  $("token").value = "";
  await openDashboard();
});

$("signout").addEventListener("click", () => signedOut(""));

// ---------------------------------------------------------------- live parts

function startLive() {
  stopLive();
  connectFeed();
  refreshAll();
  state.timers.push(setInterval(refreshFast, POLL_MS));
  state.timers.push(setInterval(refreshSlow, Math.max(POLL_MS * 2.5, 5000)));
}

function stopLive() {
  for (const timer of state.timers) clearInterval(timer);
  state.timers = [];
  if (state.socket) {
    const socket = state.socket;
    state.socket = null;
    socket.close(1000, "dashboard closed");
  }
  setFeedStatus("offline", "idle");
}

function refreshAll() {
  refreshFast();
  refreshSlow();
}

function refreshFast() {
  refreshMetrics();
  refreshZones();
  refreshQueue();
}

function refreshSlow() {
  refreshDomains();
  quietly(refreshSuspensions());
  refreshBlacklist();
}

let refreshSoonTimer = null;

/** After an event: counters again, soon, once for a burst of events. */
function refreshSoon() {
  if (refreshSoonTimer) return;
  refreshSoonTimer = setTimeout(() => {
    refreshSoonTimer = null;
    refreshZones();
    refreshQueue();
    refreshDomains();
  }, 400);
}

function quietly(promise) {
  promise.catch((error) => {
    if (!(error instanceof ApiError && error.status === 401)) {
      console.warn("dashboard refresh failed:", errorText(error));
    }
  });
}

// ---------------------------------------------------------------- the event feed

function base64url(text) {
  const bytes = new TextEncoder().encode(text);
  let binary = "";
  for (const byte of bytes) binary += String.fromCharCode(byte);
  return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

function setFeedStatus(text, kind) {
  const pill = $("feed-status");
  pill.textContent = `feed: ${text}`;
  pill.className = `pill pill-${kind}`;
  pill.dataset.state = text;
}

function connectFeed() {
  const url = new URL("events", API_BASE);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  const protocols = ["zonemta.events"];
  if (state.token) protocols.push(`zonemta.bearer.${base64url(state.token)}`);
  const socket = new WebSocket(url, protocols);
  state.socket = socket;
  setFeedStatus("connecting", "idle");
  socket.addEventListener("message", (message) => {
    if (state.socket !== socket) return;
    const event = JSON.parse(message.data);
    if (event.type === "subscribed") {
      state.reconnectDelay = 1000;
      setFeedStatus("live", "live");
      return;
    }
    if (event.type === "heartbeat") return;
    onEvent(event);
  });
  socket.addEventListener("close", (closed) => {
    if (state.socket !== socket) return;
    state.socket = null;
    const why = closed.code === 1013 ? "fell behind" : closed.code === 1001 ? "relay stopping" : "lost";
    setFeedStatus(`${why}, reconnecting`, "down");
    const delay = state.reconnectDelay;
    state.reconnectDelay = Math.min(delay * 2, 15000);
    state.timers.push(setTimeout(() => state.timers.length && connectFeed(), delay));
  });
}

function remember(event) {
  if (!event.id) return;
  let list = state.history.get(event.id);
  if (!list) {
    list = [];
    state.history.set(event.id, list);
    if (state.history.size > HISTORY_MESSAGES) {
      state.history.delete(state.history.keys().next().value);
    }
  }
  list.push(event);
}

function eventDetails(event) {
  const parts = [];
  if (event.type === "message.queued") {
    parts.push(`from ${event.from || "<>"}`, `${event.recipients} recipient(s)`, `${event.size} bytes`);
    if (event.interface) parts.push(`via ${event.interface}`);
  } else if (event.type && event.type.startsWith("suspension.")) {
    const scope = event.domain || event.zone || event.source || event.message_id || "";
    parts.push(scope, event.reason || "", event.who ? `by ${event.who}` : "");
  } else {
    if (event.mx) parts.push(`mx ${event.mx}`);
    if (event.response) parts.push(event.response);
    else if (event.trigger) parts.push(event.trigger);
    if (event.category) parts.push(`(${event.category})`);
    if (event.reason) parts.push(event.reason);
  }
  return parts.filter(Boolean).join(" · ");
}

function transition(event) {
  if (event.type !== "delivery") return el("span", { class: "badge kind", text: event.type });
  return el(
    "span",
    { class: "transition" },
    stateBadge(event.from_state),
    el("span", { class: "arrow", text: "→" }),
    stateBadge(event.to_state),
  );
}

function feedRow(event) {
  const text = [event.id, event.recipient, event.zone, event.to_state, event.type, event.response]
    .filter(Boolean)
    .join(" ")
    .toLowerCase();
  return el(
    "tr",
    {
      class: `event-row ${event.type === "delivery" ? `to-${event.to_state}` : "kind-other"}`,
      "data-id": event.id || "",
      "data-type": event.type,
      "data-state": event.to_state || "",
      "data-text": text,
      hidden: Boolean(state.filter) && !text.includes(state.filter),
    },
    el("td", { class: "mono nowrap", text: clock(event.time) }),
    el("td", {}, event.id ? messageLink(event.id, event.seq) : "–"),
    el("td", { text: event.zone || "" }),
    el("td", { class: "mono", text: event.recipient || "" }),
    el("td", {}, transition(event)),
    el("td", { class: "details", text: eventDetails(event) }),
  );
}

function onEvent(event) {
  remember(event);
  const now = Date.now();
  state.eventTimes.push(now);
  while (state.eventTimes.length && state.eventTimes[0] < now - 10000) state.eventTimes.shift();
  $("feed-rate").textContent = `${formatNumber(state.eventTimes.length / 10)} events/s`;
  if (!state.paused) {
    const body = $("feed-table").tBodies[0];
    body.prepend(feedRow(event));
    while (body.rows.length > FEED_ROWS) body.lastElementChild.remove();
    $("feed-empty").hidden = true;
  }
  if (event.type === "message.queued" || event.to_state === "delivered" ||
      event.to_state === "bounced" || event.to_state === "deferred") {
    refreshSoon();
  }
  if (event.type.startsWith("suspension.")) quietly(refreshSuspensions());
  if (state.openMessage && event.id === state.openMessage) {
    renderHistory(event.id);
    scheduleMessageRefresh();
  }
}

$("feed-filter").addEventListener("input", (event) => {
  state.filter = event.target.value.trim().toLowerCase();
  for (const row of $("feed-table").tBodies[0].rows) {
    row.hidden = Boolean(state.filter) && !row.dataset.text.includes(state.filter);
  }
});

$("feed-pause").addEventListener("click", (event) => {
  state.paused = !state.paused;
  event.target.textContent = state.paused ? "Resume" : "Pause";
});

$("feed-clear").addEventListener("click", () => {
  $("feed-table").tBodies[0].replaceChildren();
  $("feed-empty").hidden = false;
});

// ---------------------------------------------------------------- metrics and charts

const PALETTE = { delivered: "#16a34a", deferred: "#d97706", rejected: "#dc2626", received: "#2563eb" };

const throughputChart = new LineChart($("chart-throughput"), $("legend-throughput"), [
  { key: "received", label: "received", color: PALETTE.received },
  { key: "delivered", label: "delivered", color: PALETTE.delivered },
  { key: "deferrals", label: "deferred", color: PALETTE.deferred },
  { key: "rejected", label: "rejected", color: PALETTE.rejected },
], { unit: "/s" });

const latencyChart = new LineChart($("chart-latency"), $("legend-latency"), [
  { key: "p50", label: "median", color: "#2563eb" },
  { key: "p95", label: "p95", color: "#7c3aed" },
  { key: "mean", label: "mean", color: "#0891b2" },
  { key: "queue", label: "time in queue (mean)", color: "#64748b" },
], { unit: " ms" });

function setStat(id, value) {
  $(id).textContent = value === null || value === undefined ? "–" : formatNumber(value, 0);
}

async function refreshMetricsNow() {
  const text = await get("metrics");
  const figures = snapshot(parsePrometheus(typeof text === "string" ? text : ""));
  const now = Date.now();
  setStat("stat-delivered", figures.delivered);
  setStat("stat-deferrals", figures.deferrals);
  setStat("stat-rejected", figures.rejected);
  setStat("stat-received", figures.received);
  setStat("stat-suspensions", figures.suspensions);
  setStat("stat-blacklisted", figures.blacklisted);
  state.pools = figures.pools;
  const previous = state.previous;
  state.previous = { figures, now };
  if (!previous) return;
  const seconds = (now - previous.now) / 1000;
  if (seconds <= 0) return;
  const rate = (key) => Math.max(0, figures[key] - previous.figures[key]) / seconds;
  throughputChart.push(now, {
    received: rate("received"),
    delivered: rate("delivered"),
    deferrals: rate("deferrals"),
    rejected: rate("rejected"),
  });
  const attempts = histogramDelta(previous.figures.attempt, figures.attempt);
  const queued = histogramDelta(previous.figures.queueTime, figures.queueTime);
  const ms = (seconds) => (seconds === null ? null : seconds * 1000);
  latencyChart.push(now, {
    p50: ms(quantile(0.5, attempts)),
    p95: ms(quantile(0.95, attempts)),
    mean: attempts.count > 0 ? ms(attempts.sum / attempts.count) : null,
    queue: queued.count > 0 ? ms(queued.sum / queued.count) : null,
  });
}

function refreshMetrics() {
  quietly(refreshMetricsNow());
}

// ---------------------------------------------------------------- queue counters

function fillZoneSelects() {
  for (const id of ["queue-zone", "suspend-zone"]) {
    const select = $(id);
    const current = select.value;
    const options = state.zones.map((zone) => el("option", { value: zone, text: zone }));
    if (id === "suspend-zone") options.unshift(el("option", { value: "", text: "any zone" }));
    select.replaceChildren(...options);
    if (current) select.value = current;
    else if (id === "queue-zone" && state.zones.includes("default")) select.value = "default";
  }
}

async function refreshZonesNow() {
  const counters = await get("counter/zone/");
  const deferred = new Map(counters.deferred.entries.map((e) => [e.key, e.value]));
  setStat("stat-active", counters.active.rows);
  setStat("stat-deferred", counters.deferred.rows);
  const pools = state.pools || {};
  fillTable(
    $("zones-table"),
    counters.active.entries.map((entry) =>
      el(
        "tr",
        { "data-zone": entry.key },
        el("td", { text: entry.key }),
        el("td", { class: "num", text: formatNumber(entry.value, 0) }),
        el("td", { class: "num", text: formatNumber(deferred.get(entry.key) ?? 0, 0) }),
        el("td", { class: "num", text: formatNumber(pools[entry.key] ?? 0, 0) }),
      ),
    ),
  );
  $("zones-updated").textContent = `updated ${clock(Date.now() / 1000).slice(0, 8)} UTC`;
}

function refreshZones() {
  quietly(refreshZonesNow());
}

function suspendPrefill(scope, value, zone) {
  $("suspend-scope").value = scope;
  $("suspend-value").value = value;
  $("suspend-zone").value = zone || "";
  $("suspend-reason").focus();
  $("suspensions-panel").scrollIntoView({ behavior: "smooth", block: "center" });
}

async function refreshDomainsNow() {
  const counters = await get("counter/domain/?limit=50");
  fillTable(
    $("domains-table"),
    counters.domains.map((entry) =>
      el(
        "tr",
        { "data-domain": entry.domain },
        el("td", { class: "mono", text: entry.domain }),
        el("td", { text: entry.zones.join(", ") }),
        el("td", { class: "num", text: formatNumber(entry.active, 0) }),
        el("td", { class: "num", text: formatNumber(entry.deferred, 0) }),
        el(
          "td",
          { class: "actions" },
          el("button", {
            type: "button",
            class: "small",
            text: "Suspend…",
            onclick: () => suspendPrefill("domain", entry.domain, ""),
          }),
        ),
      ),
    ),
  );
  const note = counters.domains.length ? `${counters.total} domain(s)` : "queue empty";
  $("domains-note").textContent = counters.complete ? note : `${note}, first ${counters.scanned} read`;
}

function refreshDomains() {
  quietly(refreshDomainsNow());
}

async function refreshQueueNow() {
  const zone = $("queue-zone").value;
  if (!zone) return;
  const kind = $("queue-kind").value;
  const listing = await get(`queued/${kind}/${encodeURIComponent(zone)}?pageSize=50`);
  fillTable(
    $("queue-table"),
    listing.list.map((row) =>
      el(
        "tr",
        { "data-id": row.id },
        el("td", {}, messageLink(row.id, row.seq)),
        el("td", { class: "mono", text: row.recipient }),
        el("td", { class: "nowrap", text: utc(row.created) }),
        el("td", { class: "nowrap", text: utc(row.queued) }),
        el("td", { class: "num", text: String(row.deferred) }),
      ),
    ),
    "queue-empty",
  );
}

function refreshQueue() {
  quietly(refreshQueueNow());
}

$("queue-zone").addEventListener("change", refreshQueue);
$("queue-kind").addEventListener("change", refreshQueue);

// ---------------------------------------------------------------- suspensions, blacklist

function scopeText(entry) {
  const parts = [];
  if (entry.domain) parts.push(`domain ${entry.domain}`);
  if (entry.source) parts.push(`source ${entry.source}`);
  if (entry.message_id) parts.push(`message ${entry.message_id}`);
  if (entry.zone) parts.push(entry.domain ? `in zone ${entry.zone}` : `zone ${entry.zone}`);
  if (entry.max_connections) parts.push(`slowed to ${entry.max_connections} connection(s)`);
  return parts.join(" ");
}

async function resume(entry) {
  try {
    await api("DELETE", `suspend/${encodeURIComponent(entry.id)}`);
    toast(`Resumed: ${scopeText(entry)}`, "ok");
  } catch (error) {
    toast(`Resume failed: ${errorText(error)}`, "error");
  }
  await refreshSuspensions();
}

async function refreshSuspensions() {
  const listing = await get("suspend");
  fillTable(
    $("suspensions-table"),
    listing.suspensions.map((entry) =>
      el(
        "tr",
        { "data-suspension": entry.id, "data-domain": entry.domain || "" },
        el("td", { text: scopeText(entry) }),
        el("td", { class: "nowrap", text: entry.until ? utc(entry.until) : "until resumed" }),
        el("td", { text: entry.rule ? `backoff ${entry.rule}: ${entry.response || ""}` : entry.reason || "" }),
        el("td", { text: entry.who || "" }),
        el(
          "td",
          { class: "actions" },
          el("button", { type: "button", class: "small", text: "Resume", onclick: () => resume(entry) }),
        ),
      ),
    ),
    "suspensions-empty",
  );
}

$("suspend-scope").addEventListener("change", () => {
  const scope = $("suspend-scope").value;
  const placeholder = { domain: "example.net", zone: "default", source: "192.0.2.10", message: "queue id" };
  $("suspend-value").placeholder = placeholder[scope];
  $("suspend-zone").disabled = scope !== "domain";
});

$("suspend-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const scope = $("suspend-scope").value;
  const body = { [scope]: $("suspend-value").value.trim(), who: "dashboard" };
  if (scope === "domain" && $("suspend-zone").value) body.zone = $("suspend-zone").value;
  if ($("suspend-for").value.trim()) body.for = $("suspend-for").value.trim();
  if ($("suspend-reason").value.trim()) body.reason = $("suspend-reason").value.trim();
  try {
    const answer = await api("POST", "suspend", body);
    toast(`Suspended: ${scopeText(answer.suspension)}`, "ok");
    $("suspend-value").value = "";
    $("suspend-reason").value = "";
  } catch (error) {
    toast(`Suspend failed: ${errorText(error)}`, "error");
  }
  await refreshSuspensions();
});

async function refreshBlacklistNow() {
  const listing = await get("blacklist");
  fillTable(
    $("blacklist-table"),
    listing.list.map((entry) =>
      el(
        "tr",
        {},
        el("td", { class: "mono", text: entry.domain }),
        el("td", { class: "mono", text: entry.address }),
        el("td", { class: "details", text: entry.response }),
        el("td", { class: "nowrap", text: utc(entry.expires) }),
      ),
    ),
    "blacklist-empty",
  );
}

function refreshBlacklist() {
  quietly(refreshBlacklistNow());
}

// ---------------------------------------------------------------- one message

let messageTimer = null;

function scheduleMessageRefresh() {
  if (messageTimer) return;
  messageTimer = setTimeout(() => {
    messageTimer = null;
    if (state.openMessage) quietly(loadMessage(state.openMessage));
  }, 300);
}

function renderHistory(id) {
  const events = state.history.get(id) || [];
  fillTable(
    $("mv-history"),
    events
      .filter((event) => event.type === "delivery" || event.type.startsWith("message."))
      .map((event) =>
        el(
          "tr",
          { class: "history-row", "data-state": event.to_state || event.type },
          el("td", { class: "mono nowrap", text: clock(event.time) }),
          el("td", { text: event.seq ?? "" }),
          el("td", {}, transition(event)),
          el("td", { class: "details", text: eventDetails(event) }),
        ),
      ),
    "mv-history-empty",
  );
}

function reasonNode(reason) {
  const extra = [];
  if (reason.next_attempt) extra.push(`next attempt ${utc(reason.next_attempt)}`);
  if (reason.last_response) extra.push(`last reply: ${reason.last_response}`);
  if (reason.lease_until) extra.push(`lease until ${utc(reason.lease_until)}`);
  if (reason.next_token) extra.push(`next token ${utc(reason.next_token)}`);
  return el(
    "li",
    { class: "reason", "data-code": reason.code },
    el("span", { class: `badge reason-${reason.code}`, text: reason.code }),
    el("span", { text: reason.text }),
    extra.length ? el("span", { class: "hint", text: extra.join(" · ") }) : null,
  );
}

async function loadMessage(id) {
  let info = null;
  let why = null;
  try {
    info = await get(`message/${encodeURIComponent(id)}`);
  } catch (error) {
    if (!(error instanceof ApiError && error.status === 404)) throw error;
  }
  if (info) {
    try {
      why = await get(`message/${encodeURIComponent(id)}/why`);
    } catch (error) {
      if (!(error instanceof ApiError && error.status === 404)) throw error;
    }
  }
  if (state.openMessage !== id) return;
  const notice = $("mv-state");
  const seen = state.history.get(id) || [];
  const last = [...seen].reverse().find((event) => event.type === "delivery");
  if (info) {
    const meta = info.meta;
    $("mv-summary").textContent =
      `from ${meta.from || "<>"} · ${meta.subject ? `“${meta.subject}” · ` : ""}` +
      `received ${utc(meta.time)} via ${meta.interface || "?"} · ${formatNumber(meta.bodySize, 0)} bytes`;
    notice.hidden = true;
    $("mv-headers").textContent = (meta.headers || []).map((h) => h.line).join("\n");
  } else {
    $("mv-summary").textContent = "";
    notice.hidden = false;
    notice.dataset.state = "gone";
    notice.textContent = last
      ? `No longer in the queue: its last delivery went ${last.to_state}.`
      : "Not in the queue: delivered, bounced or deleted (or never queued here).";
    $("mv-headers").textContent = "";
  }
  for (const button of ["mv-send-now", "mv-hold", "mv-delete"]) $(button).disabled = !info;
  fillTable(
    $("mv-deliveries"),
    (info ? info.messages : []).map((row) =>
      el(
        "tr",
        { "data-seq": row.seq },
        el("td", { text: row.seq }),
        el("td", { class: "mono", text: row.recipient }),
        el("td", { text: row.zone }),
        el("td", {}, el("span", { class: `badge status-${row.status}`, text: row.status })),
        el("td", { class: "num", text: row.attempts }),
        el("td", { class: "nowrap", text: utc(row.next) }),
      ),
    ),
  );
  const whyBox = $("mv-why");
  if (why && why.recipients.length) {
    whyBox.replaceChildren(
      ...why.recipients.map((recipient) =>
        el(
          "div",
          { class: "why", "data-seq": recipient.seq },
          el("p", { class: "why-head" }, el("b", { text: `#${recipient.seq} ${recipient.recipient}` }),
            ` · ${recipient.zone} · ${recipient.status}`),
          el("ul", { class: "reasons" }, ...recipient.reasons.map(reasonNode)),
        ),
      ),
    );
  } else {
    whyBox.replaceChildren(el("p", { class: "empty", text: "Nothing pending." }));
  }
  renderHistory(id);
}

async function openMessage(id) {
  id = id.trim().toLowerCase();
  if (!/^[0-9a-f]{14,40}$/.test(id)) {
    toast(`Not a queue id: ${id}`, "error");
    return;
  }
  state.openMessage = id;
  $("mv-id").textContent = id;
  $("mv-summary").textContent = "loading…";
  $("message-view").hidden = false;
  document.body.classList.add("drawer-open");
  try {
    await loadMessage(id);
  } catch (error) {
    toast(`Could not load ${id}: ${errorText(error)}`, "error");
  }
}

function closeMessage() {
  state.openMessage = null;
  $("message-view").hidden = true;
  document.body.classList.remove("drawer-open");
}

async function messageAction(label, method, path, body, describe) {
  const id = state.openMessage;
  if (!id) return;
  try {
    const answer = await api(method, path, body);
    toast(describe(answer), "ok");
  } catch (error) {
    toast(`${label} failed: ${errorText(error)}`, "error");
  }
  refreshSoon();
  if (state.openMessage === id) quietly(loadMessage(id));
}

$("mv-close").addEventListener("click", closeMessage);
document.addEventListener("keydown", (event) => {
  if (event.key === "Escape" && state.openMessage) closeMessage();
});

$("mv-send-now").addEventListener("click", () => {
  const id = state.openMessage;
  messageAction("Send now", "PUT", `message/${id}`, undefined,
    (answer) => `Rescheduled ${answer.rescheduled} delivery(ies) of ${id} for now`);
});

$("mv-hold").addEventListener("click", () => {
  const id = state.openMessage;
  messageAction("Hold", "POST", "suspend", { message: id, who: "dashboard" },
    () => `Message ${id} held (resume it under Suspensions)`);
});

$("mv-delete").addEventListener("click", () => {
  const id = state.openMessage;
  if (!window.confirm(`Delete every pending delivery of ${id}? No bounce is sent.`)) return;
  messageAction("Delete", "DELETE", `message/${id}`, undefined,
    (answer) => `Deleted ${answer.deleted} delivery(ies) of ${id}`);
});

$("lookup").addEventListener("submit", (event) => {
  event.preventDefault();
  const id = $("lookup-id").value;
  if (id.trim()) openMessage(id);
});

start();
