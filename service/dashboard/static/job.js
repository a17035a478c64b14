// One job: what it is and how far it got (epoch k / N, ETA, the teacher's accuracy as soon as it is measured), its
// curves live from the event stream on an x axis to the planned epochs with the teacher as reference lines, its log
// as it is written, its state history, checkpoints and spec, a cancel button, and why it failed if it did.
import { api, FINAL, followEvents, getJson, jobPath, logFrom } from "./api.js";
import { LineChart, PALETTE } from "./chart.js";
import {
  archText, durationSeconds, every, h, hms, inEpoch, lossText, num, onCancel, onStop, pct, plannedEpochs, size,
  stateBadge, when,
} from "./ui.js";

// The charts of a job and of a comparison: the trainer's metric names (ttm/train.py), and the teacher's metric
// (recorded at epoch 0, before training) drawn as a reference line on the chart of the same quantity.
export const CURVES = [
  { metric: "test/top1", title: "Test top-1", unit: "%", reference: "teacher/top1" },
  { metric: "test/top5", title: "Test top-5", unit: "%", reference: "teacher/top5" },
  { metric: "train/loss", title: "Train loss", unit: "loss" },
  { metric: "test/entropy", title: "Entropy H(q) of the student", unit: "nats", reference: "teacher/entropy" },
  { metric: "test/kl", title: "KL(p\u209c\u1d40 \u2016 q)", unit: "nats", needsTeacher: true },
  { metric: "test/u", title: "U\u1d67(p\u209c) of the teacher", unit: "U\u1d67", needsTeacher: true },
  { metric: "lr", title: "Learning rate", unit: "lr" },
];
export const REFERENCE_OF = Object.fromEntries(CURVES.filter((c) => c.reference).map((c) => [c.reference, c.metric]));
const SUFFIX = { pt: ".pt", safetensors: ".safetensors", torchscript: ".torchscript.pt", onnx: ".onnx", pt2: ".pt2" };  // ttm/registry.py CHECKPOINT_SUFFIXES
const LOG_LINES = 5000; // the page keeps the newest lines of a long log

function errorBox(err) {
  return h("p", { class: "error", role: "alert" }, err.status === 404 ? "No such job (or not yours)." : err.message);
}

// What a chart with no points says, by the job's state.
export function emptyText(curve, job) {
  if (curve.needsTeacher && !(job.spec && job.spec.teacher)) return "measured only with a teacher";
  if (["waiting", "queued"].includes(job.state)) return "starts when a worker takes the job";
  if (["running", "cancelling"].includes(job.state)) return "waiting for epoch 1";
  if (job.state === "failed") return "no epoch finished: the job failed";
  return "no epochs recorded";
}

export async function jobPage(main, jobId) {
  let job;
  try {
    job = await getJson(jobPath(jobId));
  } catch (err) {
    if (err.status !== 401) main.replaceChildren(h("h1", {}, jobId), errorBox(err));
    return;
  }
  document.title = `${job.name} · ttm`;
  const epochs = plannedEpochs(job.spec);
  const title = h("h1", { id: "job-name" }, job.name);
  const badge = h("span", { id: "job-state" });
  const cancel = h("button", { type: "button", id: "cancel", class: "danger" }, "Cancel job");
  const notice = h("p", { class: "error", id: "job-error", role: "alert" });
  const failure = h("div", { class: "banner bad", id: "failure", role: "alert", hidden: true });
  // a trial of a sweep is named <sweep>-t<trial> (ttm/sweeps.py trial_spec)
  const suffix = `-t${job.trial}`;
  const sweepLine = h("p", { id: "job-sweep", hidden: !job.sweep_id }, `Trial ${job.trial} of sweep `,
    job.sweep_id ? h("a", { href: `/ui/sweeps/${encodeURIComponent(job.sweep_id)}` },
      job.name.endsWith(suffix) ? job.name.slice(0, -suffix.length) : job.sweep_id) : "");
  const meta = h("dl", { class: "meta", id: "meta" });
  const historyList = h("ol", { id: "history", class: "history" });
  const checkpoints = h("tbody", { id: "checkpoints" });

  // progress: epoch k / N with a bar, the ETA, and the teacher's accuracy (known before epoch 1)
  const bar = h("span");
  const progressEpoch = h("strong", { id: "progress-epoch" });
  const progressStep = h("span", { id: "progress-step", class: "muted" });
  const progressEta = h("span", { id: "progress-eta" });
  const progressRate = h("span", { id: "progress-rate", class: "muted" });
  const teacherLine = h("span", { id: "teacher-metrics", class: "muted" });
  const progress = h("section", { class: "progress-card", id: "progress" }, progressEpoch,
    h("span", { class: "bar", role: "progressbar", "aria-label": "epochs done" }, bar), progressStep, progressEta,
    progressRate,
    teacherLine);

  const charts = h("div", { class: "charts", id: "charts" });
  const curves = new Map(CURVES.map((c) => {
    const fig = h("figure", { dataset: { metric: c.metric } });
    charts.append(fig);
    fig.hidden = Boolean(c.needsTeacher && !(job.spec && job.spec.teacher)); // shown if rows come all the same
    const chart = new LineChart(fig, { ...c, epochs, empty: emptyText(c, job) });
    chart.ensureSeries(job.id, { label: job.name, color: PALETTE[0] });
    return [c.metric, chart];
  }));

  const logBox = h("div", { id: "log", class: "log", tabindex: "0", "aria-label": "the trainer's log" });
  const logStatus = h("span", { class: "muted", id: "log-status" }, "reading…");
  const follow = h("input", { type: "checkbox", id: "log-follow", checked: true });

  main.replaceChildren(
    h("div", { class: "toolbar" }, title, badge, h("span", { class: "spacer" }),
      h("a", { href: `/ui/compare?jobs=${encodeURIComponent(job.id)}`, class: "button" }, "Compare…"), cancel),
    sweepLine, failure, notice, progress, meta, h("h2", {}, "Curves"), charts,
    h("h2", {}, "Log ", logStatus, h("label", { class: "follow" }, follow, " follow")), logBox,
    h("div", { class: "columns" },
      h("section", {}, h("h2", {}, "State history"), historyList),
      h("section", {}, h("h2", {}, "Checkpoints"),
        h("table", { class: "checkpoints" }, h("thead", {}, h("tr", {}, ...["Which", "Format", "Epoch", "Top-1", "Size",
          "sha256", ""].map((c) => h("th", {}, c)))), checkpoints))),
    h("h2", {}, "Spec"), h("pre", { id: "spec", class: "spec" }, JSON.stringify(job.spec, null, 2)));

  // what the metric rows say so far
  const seen = { epoch: 0, eta: null, etaAt: null, rate: null, teacher: {} };

  function renderProgress() {
    const done = Math.min(seen.epoch, epochs || seen.epoch);
    const current = inEpoch(job, done); // the trainer's step within the epoch it is in
    progressEpoch.textContent = `Epoch ${done} / ${epochs || "?"}`;
    progressStep.textContent = current ? `epoch ${current.epoch}: step ${current.step} / ${current.steps}` : "";
    const fraction = epochs ? Math.min(1, (current ? current.epoch - 1 + current.step / current.steps : done) / epochs)
      : 0;
    bar.style.width = `${Math.round(100 * fraction)}%`; // CSSOM: the CSP allows no style attributes
    const running = ["running", "cancelling"].includes(job.state);
    const elapsed = durationSeconds(job);
    if (running && seen.eta !== null) {
      const left = Math.max(0, seen.eta - (Date.now() - seen.etaAt) / 1000);
      progressEta.textContent = `ETA ${hms(left)} · running ${hms(elapsed)}`;
    } else if (running) {
      progressEta.textContent = `ETA after epoch 1 · running ${hms(elapsed)}`;
    } else if (FINAL.has(job.state)) {
      progressEta.textContent = elapsed === null ? job.state : `${job.state} after ${hms(elapsed)}`;
    } else if (job.waits_for) {
      progressEta.replaceChildren("waiting for its teacher, job ",
        h("a", { href: `/ui/jobs/${encodeURIComponent(job.waits_for)}`, class: "mono" }, job.waits_for));
    } else {
      progressEta.textContent = job.queue_position ? `queued · position ${job.queue_position}` : job.state;
    }
    progressRate.textContent = seen.rate ? `${Math.round(seen.rate)} images/s` : "";
    const t = seen.teacher;
    teacherLine.textContent = t["teacher/top1"] === undefined ? "" : `teacher: test top-1 ${pct(t["teacher/top1"])}`
      + (t["teacher/top5"] !== undefined ? ` · top-5 ${pct(t["teacher/top5"])}` : "")
      + (t["teacher/entropy"] !== undefined ? ` · entropy ${num(t["teacher/entropy"])} nats` : "");
  }

  function render() {
    badge.replaceChildren(stateBadge(job.state));
    cancel.hidden = !["waiting", "queued", "running"].includes(job.state);
    failure.hidden = job.state !== "failed";
    failure.replaceChildren(h("strong", {}, "This job failed: "),
      h("span", { id: "failure-reason" }, job.reason || "no reason was recorded"),
      job.attempts > 1 ? h("span", { class: "muted" }, ` (after ${job.attempts} attempts)`) : "");
    const spec = job.spec || {};
    const teacher = spec.teacher ? (spec.teacher.job ? `job ${spec.teacher.job}` : spec.teacher.zoo ?
      `zoo ${spec.teacher.zoo}` : `${spec.teacher.arch || "TorchScript"} (${spec.teacher.weights ||
      spec.teacher.torchscript})`) : "–";
    const rows = [
      ["ID", job.id], ["Owner", job.owner],
      ["Queue", job.queue + (job.queue_position ? ` · position ${job.queue_position}` : "")],
      ["Architecture", archText(spec)], ["Loss", lossText(spec)], ["Teacher", teacher],
      ["Dataset", spec.dataset ? spec.dataset.name : "–"], ["Epochs", epochs || "–"], ["Attempts", job.attempts],
      ["Created", when(job.created_at)], ["Started", when(job.started_at)], ["Finished", when(job.finished_at)],
      ["Best top-1", pct(job.best_top1)], ["Reason", job.reason || "–"],
      ["Tags", (job.tags || []).join(", ") || "–"], ["Note", job.note || "–"],
    ];
    meta.replaceChildren(...rows.flatMap(([k, v]) => [
      h("dt", {}, k), h("dd", { dataset: { field: k.toLowerCase() } }, String(v))]));
    for (const c of CURVES) curves.get(c.metric).setEmptyText(emptyText(c, job));
    renderProgress();
  }
  render();

  async function reloadJob() {
    try {
      job = await getJson(jobPath(jobId));
      render();
    } catch { /* the next event or tick tries again */ }
  }

  async function reloadCheckpoints() {
    let items;
    try {
      items = await getJson(jobPath(jobId, "/checkpoints"));
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
        FINAL.has(job.state) ? "None." : "None yet: one appears after each epoch.")));
    }
  }

  // A replayed stream brings many epochs at once: their checkpoints are read once, shortly after.
  let checkpointTimer = null;
  function soonReloadCheckpoints() {
    if (checkpointTimer === null) {
      checkpointTimer = setTimeout(() => { checkpointTimer = null; reloadCheckpoints(); }, 500);
    }
  }
  onStop(() => clearTimeout(checkpointTimer));

  // The log, read on from where the last read ended; each line is a text node.
  let logOffset = 0, logPartial = "", logCount = 0, logDone = false, logBusy = false;
  function appendLog(text, flush) {
    const lines = (logPartial + text).split("\n");
    logPartial = flush ? "" : lines.pop();
    if (flush && lines[lines.length - 1] === "") lines.pop();
    for (const line of lines) logBox.append(h("div", { class: "log-line" }, line.replace(/\r$/, "")));
    logCount += lines.length;
    while (logBox.childElementCount > LOG_LINES) logBox.firstElementChild.remove();
  }
  async function readLog() {
    if (logBusy || logDone) return;
    logBusy = true;
    const final = FINAL.has(job.state); // the log is complete once the job has ended: this read is the last
    try {
      const atBottom = logBox.scrollHeight - logBox.scrollTop - logBox.clientHeight < 24;
      const { text, offset } = await logFrom(job.id, logOffset);
      logOffset = offset;
      if (text || final) appendLog(text, final);
      if (follow.checked && atBottom) logBox.scrollTop = logBox.scrollHeight;
      logDone = final;
      const kept = logBox.childElementCount;
      logStatus.textContent = logCount === 0
        ? (final ? "(none: the trainer wrote nothing)" : job.started_at ? "(nothing yet)" : "(starts with the job)")
        : `${logCount} line${logCount === 1 ? "" : "s"}${kept < logCount ? `, the last ${kept} shown` : ""}` +
          (final ? "" : " · live");
    } catch (err) {
      if (err.status !== 401) logStatus.textContent = `(could not read: ${err.message})`;
    } finally {
      logBusy = false;
    }
  }

  onCancel(cancel, notice, () => `Cancel job ${job.name} (${job.id})?`,
    async () => (await api(jobPath(jobId, "/cancel"), { method: "POST" })).json(),
    (out) => { job = out; render(); });

  const controller = new AbortController();
  onStop(() => controller.abort());
  const onEvent = (type, data) => {
    if (type === "metric") {
      const ref = data.epoch === 0 ? REFERENCE_OF[data.name] : undefined;
      if (data.name.startsWith("teacher/")) {
        seen.teacher[data.name] = data.value;
        if (ref) curves.get(ref).setReference("teacher", data.value, { label: "teacher" });
      } else {
        const chart = curves.get(data.name);
        if (chart) {
          chart.add(job.id, data.epoch, data.value);
          chart.figure.hidden = false;
        }
      }
      if (data.name === "eta_s" && data.epoch >= seen.epoch) {
        seen.eta = data.value;
        seen.etaAt = Date.parse(data.at);
      }
      if (data.name === "images_per_s") seen.rate = data.value;
      if (data.epoch > seen.epoch) {
        seen.epoch = data.epoch;
        soonReloadCheckpoints();
      }
      renderProgress();
    } else if (type === "state") {
      historyList.append(h("li", { dataset: { state: data.state } }, h("time", {}, when(data.at)), " ",
        stateBadge(data.state), data.reason ? ` ${data.reason}` : ""));
      if (data.state !== job.state) reloadJob();
      if (FINAL.has(data.state)) soonReloadCheckpoints();
    } else if (type === "progress") { // not stored: the newest only, while the job runs
      job.progress = data;
      renderProgress();
    } else if (data && data.message) {  // a note from the worker or the reconciler ("log" events)
      historyList.append(h("li", { class: "note" }, h("time", {}, when(data.at)), " ", data.message));
    }
  };
  reloadCheckpoints();
  readLog();
  followEvents(job.id, onEvent, controller.signal).then(reloadJob).catch((err) => {
    if (!controller.signal.aborted && err.status !== 401) notice.textContent = `Live updates stopped: ${err.message}`;
  });
  every(5000, () => { if (!FINAL.has(job.state)) reloadJob(); });
  every(2000, readLog);
  every(1000, renderProgress);
}

// A checkpoint through the API with the token, saved as <job or sweep id>-<which><suffix> (a sweep's page too).
export async function downloadCheckpoint(c, button) {
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
