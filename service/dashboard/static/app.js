// The dashboard: three pages drawn from the same /v1 API every client uses, with the token kept in localStorage.
// Text from the server is always set with textContent, never parsed as HTML.
import { LineChart, PALETTE } from "./chart.js";

const TOKEN_KEY = "ttm.token";
const FINAL = new Set(["succeeded", "failed", "cancelled"]);
const STATES = ["waiting", "queued", "running", "cancelling", "succeeded", "failed", "cancelled"];
const CURVES = [
  { metric: "train/loss", title: "Train loss", unit: "loss" },
  { metric: "test/top1", title: "Test top-1", unit: "%" },
  { metric: "test/entropy", title: "Student entropy H(q)", unit: "nats" },
  { metric: "test/kl", title: "KL(p\u209c\u1d40 ‖ q)", unit: "nats" },
];
const main = document.getElementById("main");

// ------------------------------------------------------------------------------------------ small helpers
function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "dataset") Object.assign(node.dataset, v);
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) if (c !== undefined && c !== null) node.append(c);
  return node;
}

const size = (n) => (n < 1024 ? `${n} B`
  : n < 1048576 ? `${(n / 1024).toFixed(1)} KiB` : `${(n / 1048576).toFixed(1)} MiB`);
const SUFFIX = { pt: ".pt", safetensors: ".safetensors", torchscript: ".torchscript.pt" };
const pct = (v) => (v === null || v === undefined ? "–" : `${v.toFixed(2)} %`);
const when = (t) => (t ? new Date(t).toLocaleString() : "–");
const lossText = (spec) => {
  const loss = (spec && spec.loss) || {};
  const params = Object.entries(loss).filter(([k]) => k !== "kind").map(([k, v]) => `${k}=${v}`);
  return `${(loss.kind || "?").toUpperCase()}${params.length ? ` (${params.join(", ")})` : ""}`;
};
const stateBadge = (state) => h("span", { class: `state state-${state}`, dataset: { state } }, state);

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// ------------------------------------------------------------------------------------------ the API
const token = () => localStorage.getItem(TOKEN_KEY);

async function api(path, options = {}) {
  const headers = { Accept: "application/json", ...(options.headers || {}) };
  if (token()) headers.Authorization = `Bearer ${token()}`;
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401) {
    localStorage.removeItem(TOKEN_KEY);
    showLogin("The server refused the token: sign in again.");
    throw new ApiError(401, "unauthorized", "signed out");
  }
  if (!response.ok) {
    const body = await response.json().catch(() => null);
    const err = (body && body.error) || {};
    throw new ApiError(response.status, err.code || `http_${response.status}`, err.message || response.statusText);
  }
  return response;
}
const getJson = async (path) => (await api(path)).json();

// Server-Sent Events over fetch() (EventSource cannot send the Authorization header). Calls onEvent(type, data)
// for each event; resumes after a dropped connection with Last-Event-ID; returns once the job has ended.
async function followEvents(jobId, onEvent, signal) {
  let lastId = null, finished = false, failures = 0;
  while (!finished && !signal.aborted) {
    try {
      const headers = { Accept: "text/event-stream" };
      if (lastId) headers["Last-Event-ID"] = lastId;
      const response = await api(`/v1/jobs/${encodeURIComponent(jobId)}/events`, { headers, signal });
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let cut;
        while ((cut = buffer.search(/\r?\n\r?\n/)) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut).replace(/^\r?\n\r?\n/, "");
          const ev = parseBlock(block);
          if (!ev) continue;
          failures = 0;
          if (ev.id) lastId = ev.id;
          onEvent(ev.type, ev.data);
          if (ev.type === "state" && FINAL.has(ev.data.state)) finished = true;
        }
      }
      if (!finished) finished = FINAL.has((await getJson(`/v1/jobs/${encodeURIComponent(jobId)}`)).state);
    } catch (err) {
      if (signal.aborted || (err instanceof ApiError && err.status < 500)) throw err;
      failures += 1;
    }
    if (!finished) await new Promise((r) => setTimeout(r, Math.min(10000, 500 * 2 ** Math.min(failures, 5))));
  }
}

function parseBlock(block) {
  let type = "message", id = null;
  const data = [];
  for (const line of block.split(/\r?\n/)) {
    if (!line || line.startsWith(":")) continue;
    const i = line.indexOf(":");
    const field = i < 0 ? line : line.slice(0, i);
    let value = i < 0 ? "" : line.slice(i + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") type = value;
    else if (field === "data") data.push(value);
    else if (field === "id") id = value;
  }
  if (!data.length) return null;
  try {
    return { type, id, data: JSON.parse(data.join("\n")) };
  } catch {
    return null;
  }
}

// ------------------------------------------------------------------------------------------ login
function showLogin(message) {
  stopPage();
  document.getElementById("logout").hidden = true;
  const input = h("input", { type: "password", id: "token", name: "token", autocomplete: "current-password",
                             placeholder: "API token", required: true, size: 44 });
  const error = h("p", { class: "error", id: "login-error", role: "alert" }, message || "");
  const form = h("form", { id: "login", class: "card narrow" },
    h("h1", {}, "Sign in"),
    h("p", { class: "muted" }, "Paste an API token (", h("code", {}, "ttm admin user create NAME"), " prints one)."),
    h("label", { for: "token" }, "Token"), input,
    h("button", { type: "submit", class: "primary" }, "Sign in"), error);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    localStorage.setItem(TOKEN_KEY, input.value.trim());
    try {
      await api("/v1/jobs?limit=1");
      route();
    } catch (err) {
      if (!(err instanceof ApiError && err.status === 401)) {
        error.textContent = `Cannot reach the server: ${err.message}`;
      }
    }
  });
  main.replaceChildren(form);
  input.focus();
}

document.getElementById("logout").addEventListener("click", () => {
  localStorage.removeItem(TOKEN_KEY);
  showLogin("Signed out.");
});

// ------------------------------------------------------------------------------------------ pages
let pageCleanup = [];
function stopPage() {
  for (const stop of pageCleanup) stop();
  pageCleanup = [];
}
function every(ms, fn) {
  const id = setInterval(() => { if (!document.hidden) fn(); }, ms);
  pageCleanup.push(() => clearInterval(id));
}

function errorBox(err) {
  return h("p", { class: "error", role: "alert" }, err.status === 404 ? "No such job (or not yours)." : err.message);
}

// The queue: every job the token may see, newest first, refreshed every few seconds.
async function queuePage() {
  const params = new URLSearchParams(location.search);
  const filter = params.get("state") || "";
  const select = h("select", { id: "state-filter", "aria-label": "state" },
    h("option", { value: "" }, "all states"),
    ...STATES.map((s) => h("option", { value: s, selected: s === filter }, s)));
  select.addEventListener("change", () => {
    const q = select.value ? `?state=${select.value}` : "";
    history.replaceState(null, "", `/ui/${q}`);
    route();
  });
  const compare = h("button", { type: "button", id: "compare-selected", disabled: true }, "Compare selected");
  const tbody = h("tbody", { id: "jobs" });
  const more = h("button", { type: "button", id: "more", hidden: true }, "Older jobs…");
  const selected = new Set();
  compare.addEventListener("click", () => { location.href = `/ui/compare?jobs=${[...selected].join(",")}`; });
  const status = h("p", { class: "muted", id: "queue-status" });
  main.replaceChildren(
    h("div", { class: "toolbar" }, h("h1", {}, "Jobs"), h("span", { class: "spacer" }), select, compare),
    h("table", { class: "jobs" },
      h("thead", {}, h("tr", {}, ...["", "Job", "Name", "State", "Owner", "Queue", "Position", "Loss", "Best top-1",
                                    "Created"].map((c) => h("th", {}, c)))),
      tbody),
    more, status);

  let limit = 50;
  more.addEventListener("click", () => { limit += 50; refresh(); });
  async function refresh() {
    const q = new URLSearchParams({ limit: String(Math.min(limit, 200)) });
    if (filter) q.set("state", filter);
    let page;
    try {
      page = await getJson(`/v1/jobs?${q}`);
    } catch (err) {
      if (err.status !== 401) status.textContent = `Could not load jobs: ${err.message}`;
      return;
    }
    const rows = page.items.map((job) => {
      const box = h("input", { type: "checkbox", "aria-label": `select ${job.id}`, checked: selected.has(job.id) });
      box.addEventListener("change", () => {
        box.checked ? selected.add(job.id) : selected.delete(job.id);
        compare.disabled = selected.size < 1;
      });
      return h("tr", { dataset: { jobId: job.id, state: job.state } },
        h("td", {}, box),
        h("td", {}, h("a", { href: `/ui/jobs/${job.id}`, class: "mono" }, job.id)),
        h("td", {}, job.name), h("td", {}, stateBadge(job.state)), h("td", { class: "owner" }, job.owner),
        h("td", {}, job.queue), h("td", { class: "position" }, job.queue_position ?? ""),
        h("td", {}, lossText(job.spec)), h("td", { class: "num" }, pct(job.best_top1)),
        h("td", {}, when(job.created_at)));
    });
    tbody.replaceChildren(...rows);
    if (!rows.length) tbody.append(h("tr", {}, h("td", { colspan: 10, class: "muted" }, "No jobs yet.")));
    more.hidden = !page.next_cursor || limit >= 200;
    const n = page.items.length;
    status.textContent = `${n} job${n === 1 ? "" : "s"} · updated ${new Date().toLocaleTimeString()}`;
  }
  await refresh();
  every(3000, refresh);
}

// The lab queue: each queue's queued jobs in the order they will start (GET /v1/queue), why they stand there, and
// a bar per row of the owner's recent usage over their share (what orders users within a class).
function hoursText(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 60) return "now";
  const m = Math.round(seconds / 60);
  return m < 90 ? `${m} min` : `${(m / 60).toFixed(1)} h`;
}

async function labQueuePage() {
  const params = new URLSearchParams(location.search);
  const name = params.get("queue") === "cpu" ? "cpu" : "gpu";
  const select = h("select", { id: "queue-name", "aria-label": "queue" },
    ...["gpu", "cpu"].map((q) => h("option", { value: q, selected: q === name }, `${q} queue`)));
  select.addEventListener("change", () => {
    history.replaceState(null, "", `/ui/queue?queue=${select.value}`);
    route();
  });
  const summary = h("p", { class: "muted", id: "lab-summary" });
  const tbody = h("tbody", { id: "lab-queue" });
  main.replaceChildren(
    h("div", { class: "toolbar" }, h("h1", {}, "Queue"), h("span", { class: "spacer" }), select),
    summary,
    h("table", { class: "jobs" },
      h("thead", {}, h("tr", {}, ...["#", "Job", "Owner", "Class", "Owner's usage / share", "", "Starts in"]
        .map((c) => h("th", {}, c)))),
      tbody),
    h("p", { class: "muted" }, "Order: class (high, normal, low), then the owner's decayed GPU-hours over their " +
      "share, then submit time. Others' jobs show their place only."));

  async function refresh() {
    let q;
    try {
      q = await getJson(`/v1/queue?queue=${name}&limit=200`);
    } catch (err) {
      if (err.status !== 401) summary.textContent = `Could not load the queue: ${err.message}`;
      return;
    }
    const loads = q.items.map((e) => e.owner_usage_hours / (e.owner_share || 1));
    const top = Math.max(1e-9, ...loads);
    tbody.replaceChildren(...q.items.map((e, i) => {
      const load = loads[i];
      const fill = h("span");
      fill.style.width = `${Math.max(2, Math.round(100 * load / top))}%`; // CSSOM: the CSP allows no style attributes
      const bar = h("span", { class: "usage-bar", role: "img", "aria-label": `${load.toFixed(2)} h per share` }, fill);
      const job = e.id ? h("a", { href: `/ui/jobs/${e.id}`, class: "mono" }, e.name || e.id) :
        h("span", { class: "muted" }, "another user's job");
      return h("tr", { dataset: { position: String(e.position), jobId: e.id || "" } },
        h("td", { class: "num" }, String(e.position)), h("td", {}, job), h("td", {}, e.owner || "–"),
        h("td", {}, h("span", { class: `state prio-${e.priority}` }, e.priority)),
        h("td", { class: "num" }, `${e.owner_usage_hours.toFixed(2)} h / ${e.owner_share}`),
        h("td", { class: "bar-cell" }, bar),
        h("td", {}, e.held_back ? "held back (owner at max-running)" : hoursText(e.eta_seconds)));
    }));
    if (!q.items.length) tbody.append(h("tr", {}, h("td", { colspan: 7, class: "muted" }, "Nothing queued.")));
    summary.textContent = `${q.queued} queued · ${q.running} running · ${q.workers} worker` +
      `${q.workers === 1 ? "" : "s"} · updated ${new Date().toLocaleTimeString()}`;
  }
  await refresh();
  every(3000, refresh);
}

// One job: what it is, how it went, its curves live from the event stream, its checkpoints, and a cancel button.
async function jobPage(jobId) {
  let job;
  try {
    job = await getJson(`/v1/jobs/${encodeURIComponent(jobId)}`);
  } catch (err) {
    if (err.status !== 401) main.replaceChildren(h("h1", {}, jobId), errorBox(err));
    return;
  }
  const title = h("h1", {}, job.name);
  const badge = h("span", { id: "job-state" });
  const cancel = h("button", { type: "button", id: "cancel", class: "danger" }, "Cancel job");
  const notice = h("p", { class: "error", id: "job-error", role: "alert" });
  const meta = h("dl", { class: "meta", id: "meta" });
  const historyList = h("ol", { id: "history", class: "history" });
  const checkpoints = h("tbody", { id: "checkpoints" });
  const charts = h("div", { class: "charts" });
  const curves = new Map(CURVES.map((c) => {
    const fig = h("figure", { dataset: { metric: c.metric } });
    charts.append(fig);
    return [c.metric, new LineChart(fig, c)];
  }));
  for (const chart of curves.values()) chart.ensureSeries(job.id, { label: job.name, color: PALETTE[0] });

  main.replaceChildren(
    h("div", { class: "toolbar" }, title, badge, h("span", { class: "spacer" }),
      h("a", { href: `/ui/compare?jobs=${job.id}`, class: "button" }, "Compare…"), cancel),
    notice, meta, h("h2", {}, "Curves"), charts,
    h("div", { class: "columns" },
      h("section", {}, h("h2", {}, "State history"), historyList),
      h("section", {}, h("h2", {}, "Checkpoints"),
        h("table", { class: "checkpoints" }, h("thead", {}, h("tr", {}, ...["Which", "Format", "Epoch", "Top-1", "Size",
          "sha256", ""].map((c) => h("th", {}, c)))), checkpoints))),
    h("h2", {}, "Spec"), h("pre", { id: "spec", class: "spec" }, JSON.stringify(job.spec, null, 2)));

  function render() {
    badge.replaceChildren(stateBadge(job.state));
    cancel.hidden = !["waiting", "queued", "running"].includes(job.state);
    const spec = job.spec || {};
    const teacher = spec.teacher ? (spec.teacher.job ? `job ${spec.teacher.job}` :
      `${spec.teacher.arch || "TorchScript"} (${spec.teacher.weights || spec.teacher.torchscript})`) : "–";
    const rows = [
      ["ID", job.id], ["Owner", job.owner],
      ["Queue", job.queue + (job.queue_position ? ` · position ${job.queue_position}` : "")],
      ["Loss", lossText(spec)], ["Teacher", teacher], ["Student", spec.student ? spec.student.arch : "–"],
      ["Dataset", spec.dataset ? spec.dataset.name : "–"],
      ["Epochs", spec.train ? spec.train.epochs : "–"], ["Attempts", job.attempts],
      ["Created", when(job.created_at)], ["Started", when(job.started_at)], ["Finished", when(job.finished_at)],
      ["Best top-1", pct(job.best_top1)], ["Reason", job.reason || "–"],
    ];
    meta.replaceChildren(...rows.flatMap(([k, v]) => [
      h("dt", {}, k), h("dd", { dataset: { field: k.toLowerCase() } }, String(v))]));
  }
  render();

  async function reloadJob() {
    try {
      job = await getJson(`/v1/jobs/${encodeURIComponent(jobId)}`);
      render();
    } catch { /* the next event or tick tries again */ }
  }

  async function reloadCheckpoints() {
    let items;
    try {
      items = await getJson(`/v1/jobs/${encodeURIComponent(jobId)}/checkpoints`);
    } catch {
      return;
    }
    checkpoints.replaceChildren(...items.map((c) => {
      const button = h("button", { type: "button", class: "link", dataset: { which: c.which, format: c.format } },
        "Download");
      button.addEventListener("click", () => downloadCheckpoint(c, button));
      return h("tr", {}, h("td", {}, c.which), h("td", {}, c.format), h("td", {}, c.epoch),
        h("td", {}, pct(c.manifest && c.manifest.top1)), h("td", { class: "num" }, size(c.size)),
        h("td", { class: "mono", title: c.sha256 }, c.sha256.slice(0, 12)), h("td", {}, button));
    }));
    if (!items.length) {
      checkpoints.append(h("tr", {}, h("td", { colspan: 7, class: "muted" },
        "None yet: one appears after each epoch.")));
    }
  }

  cancel.addEventListener("click", async () => {
    if (!confirm(`Cancel job ${job.name} (${job.id})?`)) return;
    cancel.disabled = true;
    try {
      job = await (await api(`/v1/jobs/${encodeURIComponent(jobId)}/cancel`, { method: "POST" })).json();
      notice.textContent = "";
      render();
    } catch (err) {
      notice.textContent = `Cancel failed: ${err.message}`;
    } finally {
      cancel.disabled = false;
    }
  });

  const controller = new AbortController();
  pageCleanup.push(() => controller.abort());
  let lastEpoch = 0;
  const onEvent = (type, data) => {
    if (type === "metric") {
      const chart = curves.get(data.name);
      if (chart) chart.add(job.id, data.epoch, data.value);
      if (data.epoch > lastEpoch) {
        lastEpoch = data.epoch;
        reloadCheckpoints();
      }
    } else if (type === "state") {
      historyList.append(h("li", { dataset: { state: data.state } }, h("time", {}, when(data.at)), " ",
        stateBadge(data.state), data.reason ? ` ${data.reason}` : ""));
      if (data.state !== job.state) reloadJob();
      if (FINAL.has(data.state)) reloadCheckpoints();
    }
  };
  reloadCheckpoints();
  followEvents(job.id, onEvent, controller.signal).then(reloadJob).catch((err) => {
    if (!controller.signal.aborted && err.status !== 401) notice.textContent = `Live updates stopped: ${err.message}`;
  });
  every(5000, () => { if (!FINAL.has(job.state)) reloadJob(); });
}

async function downloadCheckpoint(c, button) {
  button.disabled = true;
  try {
    const blob = await (await api(c.url)).blob();
    const jobId = c.url.split("/")[3];
    const a = h("a", { href: URL.createObjectURL(blob), download: `${jobId}-${c.which}${SUFFIX[c.format] || ""}` });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 60000);
  } catch (err) {
    alert(`Download failed: ${err.message}`);
  } finally {
    button.disabled = false;
  }
}

// Several jobs' curves overlaid: ?jobs=a,b,c. Metrics are read with ?after= and polled while a job runs.
async function comparePage() {
  const ids = (new URLSearchParams(location.search).get("jobs") || "").split(",").map((s) => s.trim()).filter(Boolean);
  const input = h("input", { id: "compare-ids", size: 60, value: ids.join(","),
                             placeholder: "job ids, comma-separated" });
  const form = h("form", { class: "toolbar" }, h("h1", {}, "Compare"), h("span", { class: "spacer" }), input,
    h("button", { type: "submit" }, "Show"));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    history.replaceState(null, "", `/ui/compare?jobs=${input.value.split(/[\s,]+/).filter(Boolean).join(",")}`);
    route();
  });
  const legend = h("tbody", { id: "compare-jobs" });
  const charts = h("div", { class: "charts" });
  const curves = new Map(CURVES.map((c) => {
    const fig = h("figure", { dataset: { metric: c.metric } });
    charts.append(fig);
    return [c.metric, new LineChart(fig, c)];
  }));
  main.replaceChildren(form,
    h("table", { class: "jobs" }, h("thead", {}, h("tr", {}, ...["", "Job", "Name", "Loss", "State", "Best top-1"]
      .map((c) => h("th", {}, c)))), legend), charts);
  if (!ids.length) {
    legend.append(h("tr", {}, h("td", { colspan: 6, class: "muted" },
      "Pick jobs on the queue page, or type their ids above.")));
    return;
  }
  const tracks = ids.map((id, i) => ({ id, color: PALETTE[i % PALETTE.length], after: 0, job: null }));
  for (const t of tracks) for (const chart of curves.values()) chart.ensureSeries(t.id, { color: t.color });
  async function poll(track) {
    try {
      if (!track.job || !FINAL.has(track.job.state)) {
        track.job = await getJson(`/v1/jobs/${encodeURIComponent(track.id)}`);
      }
      for (;;) {
        const page = await getJson(`/v1/jobs/${encodeURIComponent(track.id)}/metrics?after=${track.after}&limit=10000`);
        const label = `${track.job.name} · ${lossText(track.job.spec)}`;
        for (const m of page.items) {
          const chart = curves.get(m.name);
          if (chart) chart.add(track.id, m.epoch, m.value, { label, color: track.color });
        }
        for (const chart of curves.values()) chart.setLabel(track.id, label);
        if (!page.items.length || page.next_after === track.after) break;
        track.after = page.next_after;
      }
      track.error = null;
    } catch (err) {
      track.error = err;
    }
  }
  function renderLegend() {
    legend.replaceChildren(...tracks.map((t) => {
      const swatch = h("span", { class: "swatch" });
      swatch.style.background = t.color;
      if (t.error && !t.job) {
        return h("tr", { dataset: { jobId: t.id } }, h("td", {}, swatch), h("td", { class: "mono" }, t.id),
          h("td", { colspan: 4, class: "error" },
            t.error.status === 404 ? "no such job (or not yours)" : t.error.message));
      }
      return h("tr", { dataset: { jobId: t.id } }, h("td", {}, swatch),
        h("td", {}, h("a", { href: `/ui/jobs/${t.id}`, class: "mono" }, t.id)), h("td", {}, t.job.name),
        h("td", {}, lossText(t.job.spec)), h("td", {}, stateBadge(t.job.state)),
        h("td", { class: "num" }, pct(t.job.best_top1)));
    }));
  }
  const tick = async () => {
    await Promise.all(tracks.filter((t) => !t.job || !FINAL.has(t.job.state) || t.after === 0).map(poll));
    renderLegend();
  };
  await tick();
  every(3000, () => { if (tracks.some((t) => !t.job || !FINAL.has(t.job.state))) tick(); });
}

// ------------------------------------------------------------------------------------------ routing
let authOff = null; // a server started with TTM_AUTH=off (loopback only) needs no token

async function route() {
  stopPage();
  if (!token() && authOff === null) {
    const probe = await fetch("/v1/jobs?limit=1", { headers: { Accept: "application/json" } }).catch(() => null);
    authOff = probe !== null && probe.ok;
  }
  if (!token() && !authOff) {
    showLogin();
    return;
  }
  document.getElementById("logout").hidden = authOff && !token();
  const path = location.pathname;
  const job = path.match(/^\/ui\/jobs\/([^/]+)$/);
  for (const a of document.querySelectorAll("header nav a")) a.classList.remove("active");
  if (job) {
    jobPage(decodeURIComponent(job[1]));
  } else if (path === "/ui/compare") {
    document.getElementById("nav-compare").classList.add("active");
    comparePage();
  } else if (path === "/ui/queue") {
    document.getElementById("nav-lab-queue").classList.add("active");
    labQueuePage();
  } else {
    document.getElementById("nav-queue").classList.add("active");
    queuePage();
  }
}

route();
