// Several jobs side by side (?jobs=a,b,c): one legend for all the charts, a table of the spec parameters that
// differ between them and of their final metrics, and their curves overlaid with each teacher's accuracy and
// entropy as reference lines. Metrics are read with ?after= and polled while a job runs.
import { FINAL, getJson, jobPath, metricsAfter } from "./api.js";
import { legendItem, LineChart, PALETTE } from "./chart.js";
import { CURVES, emptyText, REFERENCE_OF } from "./job.js";
import { durationSeconds, every, h, hms, lossText, num, pct, plannedEpochs, stateBadge } from "./ui.js";

// The final metrics the table shows: the last epoch's value of each (best top-1 is the job's own field).
const FINAL_METRICS = [
  ["test/top1", "test top-1, last epoch (%)"], ["test/top5", "test top-5, last epoch (%)"],
  ["train/loss", "train loss"], ["test/loss", "test loss"], ["test/entropy", "entropy H(q) (nats)"],
  ["test/kl", "KL(p\u209c\u1d40 \u2016 q)"], ["test/u", "U\u1d67(p\u209c)"], ["teacher/top1", "teacher test top-1 (%)"],
];

// {"loss.gamma": 0.3, "train.schedule.kind": "cosine", ...}: a spec as dotted paths to its leaves.
export function flatten(value, prefix = "", out = {}) {
  if (value && typeof value === "object" && !Array.isArray(value)) {
    const keys = Object.keys(value);
    if (!keys.length && prefix) out[prefix] = "{}";
    for (const k of keys) flatten(value[k], prefix ? `${prefix}.${k}` : k, out);
  } else if (prefix) {
    out[prefix] = value;
  }
  return out;
}
const shown = (v) => (v === undefined ? "–" : v === null ? "null" : typeof v === "object" ? JSON.stringify(v)
  : String(v));

// The paths whose values are not the same in every spec (a path missing from some counts as differing).
export function differingPaths(specs) {
  const flat = specs.map((s) => flatten(s || {}));
  const paths = [...new Set(flat.flatMap((f) => Object.keys(f)))].sort();
  return paths.filter((p) => p !== "name" && new Set(flat.map((f) => shown(f[p]))).size > 1);
}

export async function comparePage(main) {
  const ids = [...new Set((new URLSearchParams(location.search).get("jobs") || "").split(",").map((s) => s.trim())
    .filter(Boolean))];
  const input = h("input", { id: "compare-ids", size: 60, value: ids.join(","),
                             placeholder: "job ids, comma-separated" });
  const form = h("form", { class: "toolbar" }, h("h1", {}, "Compare"), h("span", { class: "spacer" }), input,
    h("button", { type: "submit" }, "Show"));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    history.replaceState(null, "", `/ui/compare?jobs=${input.value.split(/[\s,]+/).filter(Boolean).join(",")}`);
    window.dispatchEvent(new CustomEvent("ttm:route"));
  });
  const legend = h("ul", { class: "legend shared", id: "compare-legend" });
  const table = h("table", { class: "params", id: "compare-params" });
  const showAll = h("input", { type: "checkbox", id: "compare-all" });
  const charts = h("div", { class: "charts" });
  const curves = new Map(CURVES.map((c) => {
    const fig = h("figure", { dataset: { metric: c.metric } });
    charts.append(fig);
    return [c.metric, new LineChart(fig, { ...c, legend: false })];
  }));
  main.replaceChildren(form,
    h("h2", {}, "Parameters that differ, and final metrics ",
      h("label", { class: "follow" }, showAll, " show all parameters")),
    h("div", { class: "table-wrap" }, table),
    h("h2", {}, "Curves"), legend, charts);
  if (!ids.length) {
    table.append(h("tbody", {}, h("tr", {}, h("td", { class: "muted" },
      "Pick jobs on the jobs page, or type their ids above."))));
    return;
  }
  const tracks = ids.map((id, i) => ({ id, color: PALETTE[i % PALETTE.length], after: 0, job: null, last: {},
                                       epoch: 0 }));
  for (const t of tracks) for (const chart of curves.values()) chart.ensureSeries(t.id, { color: t.color });

  async function poll(track) {
    try {
      if (!track.job || !FINAL.has(track.job.state)) track.job = await getJson(jobPath(track.id));
      const final = FINAL.has(track.job.state);
      const { items, after } = await metricsAfter(track.id, track.after);
      const label = `${track.job.name} · ${lossText(track.job.spec)}`;
      for (const m of items) {
        const prior = track.last[m.name];
        if (!prior || m.epoch >= prior.epoch) track.last[m.name] = { epoch: m.epoch, value: m.value };
        if (m.epoch > track.epoch) track.epoch = m.epoch;
        const ref = m.epoch === 0 ? REFERENCE_OF[m.name] : undefined;
        if (ref) {
          curves.get(ref).setReference(track.id, m.value, { label: "teacher", color: track.color });
        } else if (!m.name.startsWith("teacher/")) {
          const chart = curves.get(m.name);
          if (chart) chart.add(track.id, m.epoch, m.value, { label, color: track.color });
        }
      }
      for (const chart of curves.values()) chart.setLabel(track.id, label);
      track.after = after;
      track.done = final;
      track.error = null;
    } catch (err) {
      track.error = err;
      if (err.status && err.status < 500) track.done = true; // no such job, or not yours: asking again won't help
    }
  }

  function renderLegend() {
    legend.replaceChildren(...tracks.map((t) => {
      const li = legendItem(t.job ? `${t.job.name} · ${lossText(t.job.spec)}` : t.id, t.color);
      li.dataset.jobId = t.id;
      return li;
    }));
  }

  function renderTable() {
    const known = tracks.filter((t) => t.job);
    const paths = showAll.checked ? [...new Set(known.flatMap((t) => Object.keys(flatten(t.job.spec))))].sort()
      .filter((p) => p !== "name") : differingPaths(known.map((t) => t.job.spec));
    const flat = new Map(known.map((t) => [t.id, flatten(t.job.spec)]));
    const differs = new Set(differingPaths(known.map((t) => t.job.spec)));
    const head = h("tr", {}, h("th", {}, ""), ...tracks.map((t) => {
      const swatch = h("span", { class: "swatch" });
      swatch.style.background = t.color;
      return h("th", { dataset: { jobId: t.id } }, swatch, t.job
        ? h("a", { href: `/ui/jobs/${encodeURIComponent(t.id)}`, title: t.id }, t.job.name)
        : [h("span", { class: "mono" }, t.id), h("div", { class: "error" }, t.error && t.error.status === 404
          ? "no such job (or not yours)" : t.error ? t.error.message : "…")]);
    }));
    const cell = (t, fn) => (t.job ? fn(t) : h("td", { class: "muted" }, "–"));
    const row = (label, fn, attrs = {}) => h("tr", attrs, h("th", { scope: "row" }, label), ...tracks.map((t) =>
      cell(t, fn)));
    const section = (text) => h("tr", { class: "section" }, h("th", { colspan: tracks.length + 1 }, text));
    const body = h("tbody", {},
      row("state", (t) => h("td", {}, stateBadge(t.job.state))),
      section(showAll.checked ? "Spec" : "Spec: what differs"),
      ...(paths.length ? paths.map((p) => row(p, (t) => h("td", { class: "mono" }, shown(flat.get(t.id)[p])),
        { dataset: { param: p }, class: showAll.checked && differs.has(p) ? "param differs" : "param" }))
        : [h("tr", {}, h("td", { colspan: tracks.length + 1, class: "muted" },
          known.length < 2 ? "one job: nothing to compare" : "the specs are the same (but for the name)"))]),
      section("Final metrics"),
      row("epochs", (t) => h("td", { class: "num" }, `${t.epoch} / ${plannedEpochs(t.job.spec) || "?"}`),
        { dataset: { metric: "epochs" } }),
      row("best test top-1 (%)", (t) => h("td", { class: "num" }, pct(t.job.best_top1)),
        { dataset: { metric: "best_top1" } }),
      ...FINAL_METRICS.filter(([name]) => known.some((t) => t.last[name])).map(([name, label]) =>
        row(label, (t) => h("td", { class: "num" }, t.last[name] ? num(t.last[name].value) : "–"),
          { dataset: { metric: name } })),
      row("duration", (t) => h("td", { class: "num" }, hms(durationSeconds(t.job))),
        { dataset: { metric: "duration" } }));
    table.replaceChildren(h("thead", {}, head), body);
    const epochs = Math.max(0, ...known.map((t) => plannedEpochs(t.job.spec)));
    for (const c of CURVES) {
      const chart = curves.get(c.metric);
      chart.setEpochs(epochs);
      if (tracks.some((t) => t.epoch > 0)) chart.setEmptyText("not recorded by these jobs");
      else if (known.length) chart.setEmptyText(emptyText(c, known[0].job));
    }
  }
  showAll.addEventListener("change", renderTable);

  const tick = async () => {
    await Promise.all(tracks.filter((t) => !t.done).map(poll));
    renderLegend();
    renderTable();
  };
  await tick();
  every(3000, () => { if (tracks.some((t) => !t.done)) tick(); });
}
