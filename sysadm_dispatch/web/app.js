// The dashboard: login, the live jobs view, the output view, kill and run,
// and the history.  docs/dashboard.rst describes it for users.

import { Connection, RpcError, socketUrl } from "./client.js";
import { bound, clock, duration, fullTime, h, parseTime, setText } from "./dom.js";
import { HistoryView } from "./history.js";
import { JobBook, detailsOf, outcome } from "./jobs.js";
import { OutputView } from "./output.js";
import { RunForm } from "./runform.js";

const TOKEN_KEY = "sysadm-dispatch.session";
const MAX_ROWS = 500;
const DEFAULT_QUEUES = ["no_queue", "pkg_queue", "iocage_queue"];
const VIEWS = ["jobs", "history", "run"];
const KEEPALIVE = 10 * 60 * 1000;

const body = document.body;
const book = new JobBook();

const session = {
  user: "",
  full: false,
  token: null,
  ttl: 900,
  lastUse: 0, // when a request last renewed the token (ms, local clock)
  active: false, // the user did something since then
  checking: false,
};

let conn = null;
let loggedIn = false;
let loggingOut = false;
let reconnectTimer = null;
let reconnectDelay = 1000;
let view = "jobs";
let stateFilter = "all";
let textFilter = "";
let selection = null; // {job, live}
let pendingSelect = null; // a job id started from the form, not yet seen
const rows = new Map(); // job id -> {tr, cells, key}

// ---- Requests, and the session they keep alive.

function request(name, args, namespace = "rpc") {
  if (conn === null) return Promise.reject(new RpcError(0, "", "not connected to the server"));
  return conn.call(name, args, namespace).then(
    (reply) => {
      session.lastUse = Date.now();
      return reply;
    },
    (error) => {
      if (error.code === 401 && loggedIn) sessionEnded("Your session has ended (it expired or was logged out). Log in again.");
      throw error;
    });
}

function saveSession() {
  sessionStorage.setItem(TOKEN_KEY, JSON.stringify({ token: session.token, user: session.user }));
}

function storedSession() {
  try {
    const value = JSON.parse(sessionStorage.getItem(TOKEN_KEY) || "null");
    return value && typeof value.token === "string" ? value : null;
  } catch {
    return null;
  }
}

// Once a second: renew the token while the user is using the page, and
// notice when it has expired.
function checkSession() {
  if (!loggedIn || session.checking || conn === null || !conn.open) return;
  const idle = Date.now() - session.lastUse;
  const renew = session.active && idle > Math.min(session.ttl * 1000 / 3, 60000);
  const expired = idle > session.ttl * 1000 + 1000;
  if (!renew && !expired) return;
  session.active = false;
  session.checking = true;
  request("query", {}).catch(() => {}).finally(() => {
    session.checking = false;
  });
}

for (const type of ["pointerdown", "keydown", "wheel", "touchstart"]) {
  document.addEventListener(type, () => {
    session.active = true;
  }, { passive: true, capture: true });
}

// ---- Screens and views.

function setScreen(name) {
  body.dataset.screen = name;
}

function setView(name) {
  if (!VIEWS.includes(name) || (name === "run" && !session.full)) name = "jobs";
  view = name;
  body.dataset.view = name;
  for (const tab of document.querySelectorAll(".tabs [data-view]")) {
    tab.setAttribute("aria-current", tab.dataset.view === name ? "page" : "false");
  }
  if (location.hash !== `#${name}`) history.replaceState(null, "", `#${name}`);
  if (name === "history") historyView.firstShow();
  if (name === "run") document.querySelector('form.run-form [name="commands"]').focus();
}

function setConn(state, text) {
  const el = bound("conn");
  el.dataset.conn = state;
  setText(el, text);
}

let bannerTimer = null;
function banner(text, kind = "info") {
  const el = bound("banner");
  el.dataset.kind = kind;
  setText(el, text);
  el.classList.toggle("shown", text !== "");
  clearTimeout(bannerTimer);
  if (text !== "" && kind !== "sticky") bannerTimer = setTimeout(() => banner(""), 8000);
}

// ---- Connecting, logging in and out.

function onEvent(message) {
  if (message.name !== "dispatcher" || !message.args) return;
  const before = book.get(message.args.process_id)?.state;
  const job = book.event(message.args, Date.now());
  if (job === null) return;
  // Queue positions change when a job arrives, starts or leaves.
  if (job.state !== before) scheduleList();
  scheduleRender();
  if (selection !== null && selection.live && selection.job.id === job.id) {
    if (selection.job !== job) select(job, true);
    else refreshRecord(job);
  }
}

function onClose() {
  conn = null;
  if (loggingOut) return;
  if (!loggedIn) {
    // (The server closes connections that do not log in; the form opens a new one.)
    setConn("down", "");
    return;
  }
  scheduleReconnect();
}

function scheduleReconnect() {
  clearTimeout(reconnectTimer);
  const seconds = Math.round(reconnectDelay / 1000);
  setConn("down", `reconnecting in ${seconds}s`);
  banner("The connection to the server was lost; reconnecting.", "sticky");
  reconnectTimer = setTimeout(reconnect, reconnectDelay);
  reconnectDelay = Math.min(reconnectDelay * 2, 30000);
}

async function connect() {
  if (conn !== null && conn.open) return;
  if (conn !== null) conn.close();
  setConn("connecting", "connecting");
  const c = new Connection(socketUrl(location), { onEvent, onClose });
  conn = c;
  try {
    await c.connect();
  } catch (e) {
    if (conn === c) conn = null;
    setConn("down", "offline");
    throw e;
  }
  setConn("up", loggedIn ? "live" : "connected");
  request("identify", {}).then((reply) => {
    const host = typeof reply?.hostname === "string" ? reply.hostname : "";
    setText(bound("host"), host);
    setText(bound("login-host"), host ? `on ${host}` : "");
    document.title = host ? `${host} · sysadm-dispatch` : "sysadm-dispatch";
  }).catch(() => {});
}

async function reconnect() {
  try {
    await connect();
    await request("auth_token", { token: session.token });
    book.gap();
    await startFollowing();
    reconnectDelay = 1000;
    banner("Reconnected.");
  } catch (e) {
    if (e.code === 401) {
      sessionEnded("Your session ended while the connection was down. Log in again.");
    } else if (loggedIn) {
      scheduleReconnect();
    }
  }
}

// Subscribe, then list: every change after the list is in the events.
async function startFollowing() {
  await request("subscribe", ["dispatcher"], "events");
  await refreshList();
  setConn("up", "live");
}

async function enter(token, ttl, user) {
  session.token = token;
  session.ttl = Number.isFinite(ttl) && ttl > 0 ? ttl : 900;
  session.user = user;
  session.lastUse = Date.now();
  saveSession();
  const classes = await request("query", {});
  session.full = classes?.["rpc/dispatcher"] === "read/write";
  body.dataset.role = session.full ? "full" : "read";
  setText(bound("who"), `${user} · ${session.full ? "full" : "read-only"}`);
  loggedIn = true;
  await startFollowing();
  setScreen("app");
  const wanted = location.hash.slice(1);
  setView(VIEWS.includes(wanted) ? wanted : "jobs");
  renderNow();
}

async function login(form) {
  const error = bound("login-error");
  const username = form.elements.username.value;
  const password = form.elements.password.value;
  if (!username || !password) {
    setText(error, "Enter your user name and password.");
    return;
  }
  setText(error, "");
  form.classList.add("busy");
  try {
    await connect();
    const reply = await conn.call("auth", { username, password });
    form.elements.password.value = "";
    await enter(reply[0], reply[1], username);
  } catch (e) {
    if (e.code === 401) setText(error, "Wrong user name or password.");
    else setText(error, e.describe ? e.describe() : String(e));
  } finally {
    form.classList.remove("busy");
  }
}

function resetToLogin(message) {
  loggedIn = false;
  clearTimeout(reconnectTimer);
  sessionStorage.removeItem(TOKEN_KEY);
  session.token = null;
  session.full = false;
  body.dataset.role = "";
  book.clear();
  select(null);
  historyView.reset();
  runForm.reset();
  renderNow();
  banner("");
  setText(bound("login-error"), message);
  setScreen("login");
  document.querySelector('.login-form [name="username"]').focus();
}

function sessionEnded(message) {
  if (!loggedIn) return;
  if (conn !== null) {
    loggingOut = true;
    conn.close();
    conn = null;
    loggingOut = false;
  }
  resetToLogin(message);
  connect().catch(() => {});
}

function logout() {
  if (conn !== null) {
    conn.send("auth_clear", {});
    loggingOut = true;
    conn.close();
    conn = null;
    loggingOut = false;
  }
  resetToLogin("");
  connect().catch(() => {});
}

// ---- The job list, kept current from events.

let listing = false;
let listAgain = false;
let listTimer = null;
let lastListCost = 0;

// Queue positions and times come from `list`; asked again after events
// that change them, at most every half second (or four times what the last
// one took), never on a timer of its own.
function scheduleList() {
  if (listing) {
    listAgain = true;
    return;
  }
  if (listTimer === null) listTimer = setTimeout(refreshList, Math.max(500, 4 * lastListCost));
}

async function refreshList() {
  clearTimeout(listTimer);
  listTimer = null;
  listing = true;
  listAgain = false;
  const askedAt = Date.now();
  try {
    const reply = await request("dispatcher", { action: "list" });
    lastListCost = Date.now() - askedAt;
    book.list(reply?.jobs, askedAt);
    scheduleRender();
  } catch (e) {
    if (e.code !== 0 && e.code !== 401) banner(`Cannot list the jobs: ${e.describe()}`, "error");
  } finally {
    listing = false;
    if (listAgain && loggedIn) scheduleList();
  }
}

// Events of one burst are drawn together, a moment later.  (A timer, not
// requestAnimationFrame: a page the browser deems hidden still keeps up.)
let renderQueued = false;
function scheduleRender() {
  if (renderQueued) return;
  renderQueued = true;
  setTimeout(() => {
    renderQueued = false;
    renderNow();
  }, 30);
}

function matches(job) {
  if (stateFilter !== "all" && job.state !== stateFilter) return false;
  if (!textFilter) return true;
  return job.id.toLowerCase().includes(textFilter) || job.commands.some((c) => c.toLowerCase().includes(textFilter));
}

function stateText(job) {
  if (job.killing) return "killing...";
  if (job.missed) return "finished";
  return outcome(job).label;
}

function commandText(job) {
  const n = job.commands.length;
  if (job.state === "running" && job.currentCmd !== null) {
    const at = job.commands.indexOf(job.currentCmd);
    return n > 1 ? `${job.currentCmd}  (${at + 1}/${n})` : job.currentCmd;
  }
  return n > 1 ? `${job.commands[0]}  (+${n - 1})` : job.commands[0] ?? "";
}

function timing(job) {
  const now = Date.now();
  if (job.state === "running") return job.startedAt === null ? "" : duration((now - job.startedAt) / 1000);
  // (The stylesheet says "waiting" before it where there is room.)
  if (job.state === "pending") return job.queuedAt === null ? "" : duration((now - job.queuedAt) / 1000);
  if (job.startedAt !== null && job.finishedAt !== null) return duration((job.finishedAt - job.startedAt) / 1000);
  return "";
}

function makeRow(job) {
  const cells = {
    state: h("td", { class: "c-state" }),
    stateText: h("span", { class: "state-text" }),
    id: h("td", { class: "c-id" }),
    queue: h("td", { class: "c-queue" }),
    cmd: h("td", { class: "c-cmd" }),
    start: h("td", { class: "c-start" }),
    dur: h("td", { class: "c-dur" }),
    act: h("td", { class: "c-act" }),
  };
  cells.state.append(h("span", { class: "dot" }), cells.stateText);
  const tr = h("tr", { class: "row", tabindex: 0, dataset: { jobId: job.id } },
    cells.state, cells.id, cells.queue, cells.cmd, cells.start, cells.dur, cells.act);
  tr.addEventListener("click", (e) => {
    if (e.target.closest("button") === null) selectId(tr.dataset.jobId);
  });
  tr.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && e.target === tr) selectId(tr.dataset.jobId);
  });
  return { tr, cells, key: "" };
}

function actions(job) {
  if (job.state === "finished") {
    return [h("button", { type: "button", class: "icon", dataset: { action: "dismiss" }, title: "Remove from this list",
      "aria-label": "Dismiss", text: "×", on: { click: () => { book.dismiss(job.id); renderNow(); } } })];
  }
  if (session.full && !job.killing) {
    return [h("button", { type: "button", class: "kill", dataset: { action: "kill" }, title: "Kill this job",
      text: "kill", on: { click: () => confirmKill(job) } })];
  }
  return [];
}

function fillRow(row, job) {
  const selected = selection !== null && selection.live && selection.job.id === job.id;
  const key = `${job.version}|${job.killing}|${selected}|${session.full}`;
  const c = row.cells;
  if (row.key !== key) {
    row.key = key;
    row.tr.dataset.state = job.state;
    row.tr.dataset.outcome = job.killing ? "killing" : job.state === "finished" ? outcome(job).key : job.state;
    row.tr.classList.toggle("selected", selected);
    setText(c.stateText, stateText(job));
    setText(c.id, job.id);
    c.id.title = job.id;
    setText(c.queue, job.position !== null && job.state === "pending" ? `${job.queue} #${job.position}` : job.queue);
    setText(c.cmd, commandText(job));
    c.cmd.title = job.commands.join("\n");
    const started = job.state === "pending" ? job.queuedAt : job.startedAt;
    setText(c.start, clock(started));
    c.start.title = started === null ? "" : `${job.state === "pending" ? "queued" : "started"} ${fullTime(started)}`;
    c.act.replaceChildren(...actions(job));
  }
  setText(c.dur, timing(job));
}

function renderNow() {
  const all = book.sorted();
  const shown = all.filter(matches);
  const tbody = document.querySelector('[data-list="jobs"]');
  const wanted = [];
  for (const job of shown.slice(0, MAX_ROWS)) {
    let row = rows.get(job.id);
    if (row === undefined) {
      row = makeRow(job);
      rows.set(job.id, row);
    }
    fillRow(row, job);
    wanted.push(row.tr);
  }
  const keep = new Set(shown.slice(0, MAX_ROWS).map((j) => j.id));
  for (const id of [...rows.keys()]) if (!keep.has(id)) rows.delete(id);
  // Only when the order or membership changed (keeps focus and selection).
  const current = tbody.children;
  if (current.length !== wanted.length || wanted.some((tr, i) => current[i] !== tr)) tbody.replaceChildren(...wanted);

  const empty = bound("jobs-empty");
  empty.hidden = shown.length > 0;
  setText(empty, all.length ? "No job matches the filter." :
    "No jobs yet. Jobs queued or running on the server appear here as they start.");
  setText(bound("jobs-more"), shown.length > MAX_ROWS ? `${shown.length - MAX_ROWS} more not shown: filter to narrow the list.` : "");

  const { counts, queues } = book.counts();
  for (const el of document.querySelectorAll("[data-count]")) setText(el, counts[el.dataset.count]);
  const names = new Set([...DEFAULT_QUEUES, ...queues.keys()].filter((q) => q));
  runForm.setQueues(names);
  const chips = [...queues.entries()].filter(([q]) => q).sort(([a], [b]) => (a < b ? -1 : 1)).map(([q, n]) => {
    const parts = [];
    if (n.running) parts.push(h("span", { class: "n-running", text: `${n.running} running` }));
    if (n.pending) parts.push(h("span", { class: "n-pending", text: `${n.pending} pending` }));
    if (n.finished) parts.push(h("span", { class: "n-finished", text: `${n.finished} finished` }));
    return h("span", { class: "queue", dataset: { queue: q } }, h("b", { text: q }), ...parts);
  });
  const bar = bound("queues");
  const text = chips.map((c) => c.textContent).join("|");
  if (bar.dataset.key !== text) {
    bar.dataset.key = text;
    bar.replaceChildren(...chips);
  }
  if (selection !== null && selection.live) output.update();
  if (pendingSelect !== null && book.get(pendingSelect) !== undefined) {
    // A job started from the form: selected once its first event is in.
    const id = pendingSelect;
    pendingSelect = null;
    selectId(id);
  }
}

function tick() {
  for (const [id, row] of rows) {
    const job = book.get(id);
    if (job !== undefined && job.active) setText(row.cells.dur, timing(job));
  }
  output.tick();
  checkSession();
  // The server closes connections silent for --idle-timeout (30 minutes by
  // default); a page that only watches says something now and then.
  if (loggedIn && conn !== null && conn.open && Date.now() - conn.lastSent > KEEPALIVE) {
    conn.call("identify", {}).catch(() => {});
  }
}

// ---- Selecting a job: its output view.

function selectId(id) {
  const job = book.get(id);
  if (job !== undefined) select(job, true);
}

function select(job, live = true) {
  selection = job === null ? null : { job, live };
  body.dataset.detail = job === null ? "closed" : "open";
  output.show(job, live);
  historyView.mark();
  for (const [id, row] of rows) row.tr.classList.toggle("selected", live && job !== null && id === job.id);
  if (job !== null && live) fetchRecord(job);
}

const fetching = new Map(); // job id -> whether to fetch again when answered

// The job's record from rpc/logs `job`: its stored record once finished;
// while it runs, the output so far (from servers that send it).
async function fetchRecord(job) {
  if (fetching.has(job.id)) {
    fetching.set(job.id, true);
    return;
  }
  fetching.set(job.id, false);
  try {
    const record = await request("logs", { action: "job", job_id: job.id });
    if (book.get(job.id) !== job || record === null || typeof record !== "object") return;
    const state = record.state ?? detailsOf(record).state;
    const started = parseTime(detailsOf(record).time_started ?? record.time_started);
    const sameRun = started === null || job.startedAt === null || started === job.startedAt;
    if (state === "finished" && job.state === "finished" && sameRun) {
      job.applyRecord(record);
    } else if (state !== "finished" && job.active && sameRun) {
      job.record = record;
      job.recordMissing = false;
      job.version += 1;
    } else if (job.active) {
      // An earlier run's record: this server has no live one.
      job.recordMissing = true;
      job.version += 1;
    }
  } catch (e) {
    if (e.code === 404) {
      job.recordMissing = true;
      job.version += 1;
    }
  } finally {
    const again = fetching.get(job.id);
    fetching.delete(job.id);
    if (selection !== null && selection.job === job) output.update();
    if (again && book.get(job.id) === job && job.needsRecord()) fetchRecord(job);
  }
}

// After an event for the selected job: a running job joined late reads
// its output so far again; a job that just finished, its stored record.
function refreshRecord(job) {
  const stored = job.record !== null && (job.record.state ?? detailsOf(job.record).state) === "finished";
  if (job.needsRecord() || (job.state === "finished" && !stored)) fetchRecord(job);
}

// ---- Kill.

const dialog = bound("confirm");
let killTarget = null;

function confirmKill(job) {
  killTarget = job;
  setText(bound("confirm-id"), job.id);
  setText(bound("confirm-text"), job.state === "pending"
    ? "It is still waiting in its queue: it is removed and never starts."
    : "Every process of the job gets SIGTERM, then SIGKILL if still alive after the server's grace period.");
  dialog.showModal();
  dialog.querySelector('[data-action="cancel"]').focus();
}

dialog.querySelector('[data-action="cancel"]').addEventListener("click", () => dialog.close());
dialog.querySelector('[data-action="confirm"]').addEventListener("click", () => {
  dialog.close();
  const job = killTarget;
  killTarget = null;
  if (job !== null) kill(job);
});

async function kill(job) {
  if (!job.active) return;
  job.killing = true;
  job.version += 1;
  renderNow();
  try {
    const reply = await request("dispatcher", { action: "kill", job_id: job.id });
    if ((reply?.killed?.not_found ?? []).includes(job.id) && job.killing) {
      job.killing = false;
      job.version += 1;
      banner(`${job.id} had already finished.`);
    }
  } catch (e) {
    job.killing = false;
    job.version += 1;
    banner(`Kill ${job.id}: ${e.describe ? e.describe() : e}`, "error");
  }
  renderNow();
}

// ---- Wiring.

const output = new OutputView({ onKill: (job) => confirmKill(job), canKill: () => session.full });
const historyView = new HistoryView({
  request,
  onOpen: (job) => select(job, false),
  isSelected: (job) => selection !== null && selection.job === job,
});
const runForm = new RunForm({
  request,
  onStarted: (id) => {
    const job = book.get(id);
    if (job !== undefined) select(job, true);
    else pendingSelect = id;
  },
});

document.querySelector(".login-form").addEventListener("submit", (e) => {
  e.preventDefault();
  login(e.target);
});
for (const tab of document.querySelectorAll("[data-view]")) tab.addEventListener("click", () => setView(tab.dataset.view));
for (const button of document.querySelectorAll("[data-filter-state]")) {
  button.addEventListener("click", () => {
    stateFilter = button.dataset.filterState;
    for (const b of document.querySelectorAll("[data-filter-state]")) b.setAttribute("aria-pressed", String(b === button));
    renderNow();
  });
}
document.querySelector('[data-panel="jobs"] input[name="filter"]').addEventListener("input", (e) => {
  textFilter = e.target.value.trim().toLowerCase();
  renderNow();
});
document.querySelector('[data-action="clear-finished"]').addEventListener("click", () => {
  if (selection !== null && selection.live && selection.job.state === "finished") select(null);
  book.clearFinished();
  renderNow();
});
document.querySelector('[data-action="logout"]').addEventListener("click", logout);
document.querySelector('[data-action="back"]').addEventListener("click", () => select(null));
document.addEventListener("keydown", (e) => {
  if (e.key === "/" && body.dataset.screen === "app" && !(e.target instanceof HTMLInputElement || e.target instanceof HTMLTextAreaElement)) {
    const filter = document.querySelector(`[data-panel="${view === "history" ? "history" : "jobs"}"] input[name="filter"]`);
    filter.focus();
    e.preventDefault();
  }
});

async function start() {
  setInterval(tick, 1000);
  const stored = storedSession();
  try {
    await connect();
  } catch (e) {
    setScreen("login");
    setText(bound("login-error"), `Cannot reach the server: ${e.describe ? e.describe() : e}`);
    return;
  }
  if (stored !== null) {
    try {
      const reply = await request("auth_token", { token: stored.token });
      await enter(reply[0], reply[1], stored.user);
      return;
    } catch (e) {
      sessionStorage.removeItem(TOKEN_KEY);
      loggedIn = false;
      if (e.code !== 401) setText(bound("login-error"), e.describe ? e.describe() : String(e));
    }
  }
  setScreen("login");
  document.querySelector('.login-form [name="username"]').focus();
}

start();
