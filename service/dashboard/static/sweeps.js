// Sweeps: the list of yours (newest first), and one sweep: its state and reason, search space, best trial with its
// student's download, a table of the trials linking to their jobs, and the scatter of the trials (scatter.js).
// Both poll GET /v1/sweeps... every few seconds while a sweep runs.
import { api, getJson } from "./api.js";
import { downloadCheckpoint } from "./job.js";
import { drawScatter } from "./scatter.js";
import { every, h, onCancel, paramText, pct, stateBadge, when } from "./ui.js";

const sweepPath = (id, rest = "") => `/v1/sweeps/${encodeURIComponent(id)}${rest}`;
const sweepLink = (s) => h("a", { href: `/ui/sweeps/${encodeURIComponent(s.id)}` }, s.name);
const ended = (s) => s.trials.filter((t) => t.state !== "running").length;
const metricText = (v) => (v === null || v === undefined ? "–" : pct(v));

// The best metric so far: the chosen trial's once the sweep has ended, else the best of the completed trials'.
function bestValue(s) {
  if (s.best) return s.best.value;
  const values = s.trials.filter((t) => t.state === "complete" && t.value !== null).map((t) => t.value);
  return values.length ? Math.max(...values) : null;
}

// {uniform: [0.1, 0.8]} → "uniform 0.1 … 0.8"; a list → its values
export function dimensionText(dim) {
  if (Array.isArray(dim)) return dim.map(paramText).join(", ");
  for (const kind of ["uniform", "log_uniform", "int"]) {
    if (dim && dim[kind]) return `${kind.replace("_", "-")} ${dim[kind][0]} … ${dim[kind][1]}`;
  }
  return JSON.stringify(dim);
}

function errorBox(err) {
  return h("p", { class: "error", role: "alert" }, err.status === 404 ? "No such sweep (or not yours)." : err.message);
}

// ------------------------------------------------------------------------------------------ the list
export async function sweepsPage(main) {
  const tbody = h("tbody", { id: "sweeps" });
  const status = h("p", { class: "muted", id: "sweeps-status" });
  main.replaceChildren(h("div", { class: "toolbar" }, h("h1", {}, "Sweeps")), status,
    h("div", { class: "table-wrap" }, h("table", { class: "jobs" },
      h("thead", {}, h("tr", {}, ...["Name", "State", "Trials ended / budget", "Best metric", "Its test top-1",
        "Created"].map((c) => h("th", {}, c)))), tbody)),
    h("p", { class: "muted" }, "Start one with ", h("code", {}, "ttm sweep sweep.yaml"), " (docs/API.md, Sweeps)."));

  async function refresh() {
    let list;
    try {
      list = await getJson("/v1/sweeps?limit=100");
    } catch (err) {
      if (err.status !== 401) status.textContent = `Could not load the sweeps: ${err.message}`;
      return;
    }
    tbody.replaceChildren(...list.items.map((s) => h("tr", { dataset: { sweepId: s.id } },
      h("td", { class: "name" }, sweepLink(s)), h("td", {}, stateBadge(s.state)),
      h("td", { class: "num trials" }, `${ended(s)} / ${s.budget}`),
      h("td", { class: "num best" }, `${metricText(bestValue(s))}`, h("span", { class: "muted" }, ` ${s.metric}`)),
      h("td", { class: "num top1" }, metricText(s.best && s.best.test_top1)), h("td", {}, when(s.created_at)))));
    if (!list.items.length) tbody.append(h("tr", {}, h("td", { colspan: 6, class: "muted" }, "No sweeps yet.")));
    status.textContent = `${list.items.length} sweep${list.items.length === 1 ? "" : "s"} · updated ` +
      new Date().toLocaleTimeString();
  }
  await refresh();
  every(5000, refresh);
}

// ------------------------------------------------------------------------------------------ one sweep
export async function sweepPage(main, sweepId) {
  let sweep;
  try {
    sweep = await getJson(sweepPath(sweepId));
  } catch (err) {
    if (err.status !== 401) main.replaceChildren(h("h1", {}, sweepId), errorBox(err));
    return;
  }
  const fields = Object.keys(sweep.spec.space);
  const badge = h("span", { id: "sweep-state" });
  const cancel = h("button", { type: "button", id: "cancel-sweep", class: "danger" }, "Cancel sweep");
  const notice = h("p", { class: "error", id: "sweep-error", role: "alert" });
  const reason = h("p", { id: "sweep-reason" });
  const meta = h("dl", { class: "meta", id: "sweep-meta" });
  const best = h("section", { id: "best", class: "progress-card" });
  const scatter = h("figure", { id: "scatter" });
  const trials = h("tbody", { id: "trials" });
  main.replaceChildren(
    h("div", { class: "toolbar" }, h("h1", { id: "sweep-name" }, sweep.name), badge, h("span", { class: "spacer" }),
      cancel),
    notice, reason, meta,
    h("h2", {}, "Best trial"), best,
    h("h2", {}, "Trials"), scatter,
    h("div", { class: "table-wrap" }, h("table", { class: "jobs" }, h("thead", {}, h("tr", {},
      h("th", {}, "#"), ...fields.map((f) => h("th", { class: "field" }, f)), h("th", {}, "State"),
      h("th", { class: "field" }, sweep.metric), h("th", {}, "Epochs reported"), h("th", {}, "Job"), h("th", {}, "Why"))), trials)),
    h("h2", {}, "Search space"),
    h("table", { class: "params", id: "space" }, h("tbody", {}, ...fields.map((f) => h("tr", {},
      h("th", { scope: "row" }, f), h("td", {}, dimensionText(sweep.spec.space[f])))))));

  function render() {
    document.title = `${sweep.name} · sweep · ttm`;
    badge.replaceChildren(stateBadge(sweep.state));
    cancel.hidden = sweep.state !== "running";
    reason.textContent = sweep.reason || (sweep.state === "running" ? "Running: the best trial is chosen when every "
      + "trial has ended." : "");
    const spec = sweep.spec;
    const pruning = spec.pruning ? `${spec.pruning.kind} (from epoch ${spec.pruning.warmup_epochs})` : "none";
    const rows = [["ID", sweep.id], ["Owner", sweep.owner], ["Strategy", spec.strategy],
      ["Trials ended / budget", `${ended(sweep)} / ${sweep.budget}`], ["At once", spec.max_running],
      ["Chosen on", sweep.metric], ["Pruning", pruning], ["Created", when(sweep.created_at)],
      ["Finished", when(sweep.finished_at)]];
    meta.replaceChildren(...rows.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, String(v))]));

    const b = sweep.best;
    if (b) {
      const download = h("button", { type: "button", class: "link", id: "download-best" }, "Download its student");
      download.addEventListener("click", () => downloadCheckpoint({ which: "best", format: "safetensors",
        url: sweepPath(sweep.id, "/checkpoints/best?format=safetensors") }, download));
      const params = Object.entries(b.params).map(([k, v]) => `${k} = ${paramText(v)}`).join(", ");
      best.replaceChildren(h("strong", {}, `Trial ${b.number}`), h("span", { id: "best-params" }, params),
        h("span", { id: "best-value" }, `${sweep.metric} ${metricText(b.value)}`),
        h("span", { id: "best-top1" }, `test top-1 ${metricText(b.test_top1)}`),
        b.job_id ? h("a", { href: `/ui/jobs/${encodeURIComponent(b.job_id)}` }, "its job") : "", download);
    } else {
      best.replaceChildren(h("span", { class: "muted" }, sweep.state === "running"
        ? "Chosen when the sweep ends." : "None: no trial completed."));
    }

    trials.replaceChildren(...sweep.trials.map((t) => h("tr", { dataset: { trial: String(t.number), state: t.state },
                                                             class: b && b.number === t.number ? "best" : null },
      h("td", { class: "num" }, String(t.number)),
      ...fields.map((f) => h("td", { class: "num" }, t.params[f] === undefined ? "–" : paramText(t.params[f]))),
      h("td", {}, stateBadge(t.state)), h("td", { class: "num value" }, metricText(t.value)),
      h("td", { class: "num epochs" }, String(Object.keys(t.epochs).length)),
      h("td", {}, t.job_id ? h("a", { href: `/ui/jobs/${encodeURIComponent(t.job_id)}`, class: "mono" }, t.job_id)
        : "–"),
      h("td", { class: "name muted" }, t.reason || ""))));
    if (!sweep.trials.length) {
      trials.append(h("tr", {}, h("td", { colspan: fields.length + 6, class: "muted" }, "No trial asked yet.")));
    }
    drawScatter(scatter, sweep);
  }
  render();

  async function reload() {
    try {
      sweep = await getJson(sweepPath(sweepId));
      render();
    } catch { /* the next tick tries again */ }
  }

  onCancel(cancel, notice, () => `Cancel sweep ${sweep.name} (${sweep.id}) and its unfinished trials?`,
    async () => (await api(sweepPath(sweepId, "/cancel"), { method: "POST" })).json(),
    (out) => { sweep = out; render(); });
  every(3000, () => { if (sweep.state === "running") reload(); });
}
