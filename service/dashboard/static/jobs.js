// The jobs page: every job the token may see, newest first, refreshed every few seconds; sortable by any column
// (click its header), filtered by a search box over name, architecture, loss, state and owner; with each job's
// progress (epoch k / N), duration and ETA read from its metric rows.
import { FINAL, getJson, jobPath, metricsAfter } from "./api.js";
import {
  archText, durationSeconds, every, gammaBeta, h, hms, inEpoch, lossName, lossParams, pct, plannedEpochs, stateBadge,
  STATES, when,
} from "./ui.js";

// job id → {after, epoch, eta, etaAt, done}. A running job's metric rows are read on from `after` (its ETA is the
// trainer's eta_s of the latest epoch); a job that had ended when first seen has no ETA, and the epoch of its last
// checkpoint is how far it got (one small request, where its metric rows would be thousands).
const progress = new Map();

async function loadProgress(job) {
  let p = progress.get(job.id);
  if (!p) progress.set(job.id, p = { after: 0, epoch: 0, eta: null, etaAt: null, done: false });
  if (p.done || !job.started_at) return;
  const final = FINAL.has(job.state); // rows are written before the final state: one read after it is the last
  if (final && p.after === 0) {
    const last = (await getJson(jobPath(job.id, "/checkpoints"))).filter((c) => c.which === "last");
    p.epoch = Math.max(0, ...last.map((c) => c.epoch));
    p.done = true;
    return;
  }
  const { items, after } = await metricsAfter(job.id, p.after);
  for (const m of items) {
    if (m.epoch > p.epoch) p.epoch = m.epoch;
    if (m.name === "eta_s" && m.epoch >= p.epoch) {
      p.eta = m.value;
      p.etaAt = Date.parse(m.at);
    }
  }
  p.after = after;
  p.done = final;
}

// At most `limit` requests at once: a page of 200 finished jobs reads their rows a few at a time.
async function eachLimited(items, limit, fn) {
  const queue = [...items];
  await Promise.all(Array.from({ length: Math.min(limit, queue.length) }, async () => {
    while (queue.length) await fn(queue.shift()).catch(() => {});
  }));
}

function etaSeconds(job, p, now) {
  if (!p || p.eta === null || !["running", "cancelling"].includes(job.state)) return null;
  return Math.max(0, p.eta - (now - p.etaAt) / 1000);
}

// The row's values: what the cells show, what the sort compares and what the search box reads.
function rowOf(job, now) {
  const p = progress.get(job.id);
  const epochs = plannedEpochs(job.spec);
  const epoch = p ? p.epoch : 0;
  const current = inEpoch(job, epoch);
  const fraction = epochs ? Math.min(1, (current ? current.epoch - 1 + current.step / current.steps : epoch) / epochs)
    : null;
  const position = job.queue_position === null || job.queue_position === undefined ? null : job.queue_position;
  return {
    job, epoch, epochs, current, fraction,
    arch: archText(job.spec), loss: lossName(job.spec), params: lossParams(job.spec),
    duration: durationSeconds(job, now), eta: etaSeconds(job, p, now),
    sort: {
      name: job.name.toLowerCase(), state: STATES.indexOf(job.state), owner: job.owner,
      arch: archText(job.spec).toLowerCase(), loss: lossName(job.spec), params: gammaBeta(job.spec),
      progress: fraction, top1: job.best_top1, duration: durationSeconds(job, now),
      eta: etaSeconds(job, p, now),
      queue: position === null ? null : [job.queue, typeof position === "number" ? position : Infinity],
      created: job.created_at,
    },
  };
}

const COLUMNS = [
  ["name", "Name"], ["state", "State"], ["owner", "Owner"], ["arch", "Architecture"], ["loss", "Loss"],
  ["params", "γ / β"], ["progress", "Progress"], ["top1", "Best top-1"], ["duration", "Duration"], ["eta", "ETA"],
  ["queue", "Queue"], ["created", "Created"],
];

// Missing values sort last in either direction; arrays compare element by element.
function compare(a, b) {
  if (Array.isArray(a) && Array.isArray(b)) {
    for (let i = 0; i < Math.max(a.length, b.length); i++) {
      const c = compare(a[i], b[i]);
      if (c) return c;
    }
    return 0;
  }
  if (a === b) return 0;
  if (a === null || a === undefined) return 1;
  if (b === null || b === undefined) return -1;
  return typeof a === "string" && typeof b === "string" ? a.localeCompare(b) : a < b ? -1 : 1;
}
const missing = (v) => v === null || v === undefined || (Array.isArray(v) && v.every(missing));

function sortRows(rows, key, dir) {
  const sign = dir === "desc" ? -1 : 1;
  return rows.map((r, i) => [r, i]).sort(([a, i], [b, j]) => {
    const va = a.sort[key], vb = b.sort[key];
    if (missing(va) !== missing(vb)) return missing(va) ? 1 : -1;
    return sign * compare(va, vb) || i - j;
  }).map(([r]) => r);
}

// Every word of the query must appear in the row's name, architecture, loss, γ/β, state, owner, id or tags.
function matches(row, words) {
  if (!words.length) return true;
  const text = [row.job.name, row.arch, row.loss, row.params, row.job.state, row.job.owner, row.job.id,
                ...(row.job.tags || [])].join(" ").toLowerCase();
  return words.every((w) => text.includes(w));
}

export async function jobsPage(main) {
  const params = new URLSearchParams(location.search);
  const filter = params.get("state") || "";
  let sortKey = COLUMNS.some(([k]) => k === params.get("sort")) ? params.get("sort") : "created";
  let sortDir = params.get("dir") === "asc" ? "asc" : params.get("dir") === "desc" ? "desc"
    : sortKey === "created" ? "desc" : "asc";
  const keepUrl = () => {
    const q = new URLSearchParams();
    if (filter) q.set("state", filter);
    if (search.value.trim()) q.set("q", search.value.trim());
    if (sortKey !== "created" || sortDir !== "desc") {
      q.set("sort", sortKey);
      q.set("dir", sortDir);
    }
    history.replaceState(null, "", `/ui/${q.size ? `?${q}` : ""}`);
  };

  const select = h("select", { id: "state-filter", "aria-label": "state" },
    h("option", { value: "" }, "all states"),
    ...STATES.map((s) => h("option", { value: s, selected: s === filter }, s)));
  select.addEventListener("change", () => {
    const q = new URLSearchParams(location.search);
    if (select.value) q.set("state", select.value); else q.delete("state");
    history.replaceState(null, "", `/ui/${q.size ? `?${q}` : ""}`);
    window.dispatchEvent(new CustomEvent("ttm:route"));
  });
  const search = h("input", { type: "search", id: "job-search", placeholder: "search name, architecture, loss, state, "
                              + "owner", "aria-label": "search jobs", size: 44, value: params.get("q") || "" });
  search.addEventListener("input", () => { keepUrl(); render(); });
  const compareButton = h("button", { type: "button", id: "compare-selected", disabled: true }, "Compare selected");
  const selected = new Set();
  compareButton.addEventListener("click", () => { location.href = `/ui/compare?jobs=${[...selected].join(",")}`; });
  const tbody = h("tbody", { id: "jobs" });
  const headers = COLUMNS.map(([key, title]) => {
    const button = h("button", { type: "button", class: "sort" }, title, h("span", { class: "arrow" }));
    const th = h("th", { dataset: { sort: key }, "aria-sort": "none" }, button);
    button.addEventListener("click", () => {
      sortDir = sortKey === key ? (sortDir === "asc" ? "desc" : "asc")
        : ["created", "top1", "progress", "duration"].includes(key) ? "desc" : "asc";
      sortKey = key;
      keepUrl();
      render();
    });
    return th;
  });
  const more = h("button", { type: "button", id: "more", hidden: true }, "Older jobs…");
  const status = h("p", { class: "muted", id: "queue-status" });
  main.replaceChildren(
    h("div", { class: "toolbar" }, h("h1", {}, "Jobs"), h("span", { class: "spacer" }), search, select,
      compareButton),
    h("div", { class: "table-wrap" },
      h("table", { class: "jobs sortable" }, h("thead", {}, h("tr", {}, h("th", {}, ""), ...headers)), tbody)),
    more, status);

  let items = [], loaded = null, limit = 50, next = null;
  more.addEventListener("click", () => { limit += 50; refresh(); });

  function render() {
    const now = Date.now();
    const words = search.value.toLowerCase().split(/\s+/).filter(Boolean);
    const rows = sortRows(items.map((job) => rowOf(job, now)), sortKey, sortDir).filter((r) => matches(r, words));
    for (const th of headers) {
      const on = th.dataset.sort === sortKey;
      th.setAttribute("aria-sort", on ? (sortDir === "asc" ? "ascending" : "descending") : "none");
      th.querySelector(".arrow").textContent = on ? (sortDir === "asc" ? " ▲" : " ▼") : "";
    }
    tbody.replaceChildren(...rows.map((r) => jobRow(r, selected, compareButton)));
    if (!rows.length) {
      tbody.append(h("tr", {}, h("td", { colspan: COLUMNS.length + 1, class: "muted" },
        items.length ? "No job matches the search." : "No jobs yet.")));
    }
    if (loaded) {
      const n = items.length, shown = rows.length;
      status.textContent = `${shown === n ? "" : `${shown} of `}${n} job${n === 1 ? "" : "s"} · updated ${loaded}`;
    }
  }

  let busy = false; // a slow refresh (many jobs' rows to read) is not started again on the next tick
  async function refresh() {
    if (busy) return;
    busy = true;
    try {
      await load();
    } finally {
      busy = false;
    }
  }
  async function load() {
    const q = new URLSearchParams({ limit: String(Math.min(limit, 200)) });
    if (filter) q.set("state", filter);
    let page;
    try {
      page = await getJson(`/v1/jobs?${q}`);
    } catch (err) {
      if (err.status !== 401) status.textContent = `Could not load jobs: ${err.message}`;
      return;
    }
    items = page.items;
    next = page.next_cursor;
    loaded = new Date().toLocaleTimeString();
    more.hidden = !next || limit >= 200;
    render();
    const stale = items.filter((job) => job.started_at && !(progress.get(job.id) || {}).done);
    if (stale.length) {
      await eachLimited(stale, 6, loadProgress);
      render();
    }
  }
  await refresh();
  every(3000, refresh);
}

function jobRow(r, selected, compareButton) {
  const { job } = r;
  const box = h("input", { type: "checkbox", "aria-label": `select ${job.id}`, checked: selected.has(job.id) });
  box.addEventListener("change", () => {
    box.checked ? selected.add(job.id) : selected.delete(job.id);
    compareButton.disabled = selected.size < 1;
  });
  const fill = h("span");
  fill.style.width = `${Math.round(100 * (r.fraction || 0))}%`; // CSSOM: the CSP allows no style attributes
  const started = job.started_at !== null && job.started_at !== undefined;
  const eta = r.eta !== null ? hms(r.eta) : job.state === "running" && started ? "after epoch 1" : "–";
  const position = job.queue_position === null || job.queue_position === undefined ? null
    : h("span", { class: "position" }, String(job.queue_position));
  return h("tr", { dataset: { jobId: job.id, state: job.state } },
    h("td", {}, box),
    h("td", { class: "name" }, h("a", { href: `/ui/jobs/${encodeURIComponent(job.id)}`, title: job.id }, job.name)),
    h("td", {}, stateBadge(job.state)),
    h("td", { class: "owner" }, job.owner),
    h("td", { class: "arch" }, r.arch),
    h("td", { class: "loss" }, r.loss),
    h("td", { class: "params" }, r.params),
    h("td", { class: "progress", dataset: { epoch: String(r.epoch), epochs: String(r.epochs) },
              title: r.current ? `epoch ${r.current.epoch}: step ${r.current.step} / ${r.current.steps}` : null },
      h("span", { class: "mini-bar" }, fill), `${started ? r.epoch : "–"} / ${r.epochs || "?"}`),
    h("td", { class: "num top1" }, pct(job.best_top1)),
    h("td", { class: "num duration" }, hms(r.duration)),
    h("td", { class: "num eta" }, eta),
    h("td", { class: "queue" }, job.queue, position ? " · #" : "", position),
    h("td", { class: "created" }, when(job.created_at)));
}
