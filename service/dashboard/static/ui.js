// What every page shares: building elements (text always as text nodes, never parsed as HTML), how jobs, losses,
// times and numbers are written, and the timers and streams a page stops when another one is drawn.

export const STATES = ["waiting", "queued", "running", "cancelling", "succeeded", "failed", "cancelled"];

export function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "dataset") Object.assign(node.dataset, v);
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) if (c !== undefined && c !== null) node.append(c); // strings become text nodes
  return node;
}

// ------------------------------------------------------------------------------------------ the page's lifetime
let cleanup = [];
export function onStop(fn) {
  cleanup.push(fn);
}
export function stopPage() {
  for (const stop of cleanup) stop();
  cleanup = [];
}
// Run `fn` every `ms` while the tab is visible, until the page changes.
export function every(ms, fn) {
  const id = setInterval(() => { if (!document.hidden) fn(); }, ms);
  onStop(() => clearInterval(id));
}

// ------------------------------------------------------------------------------------------ how things are written
export const size = (n) => (n < 1024 ? `${n} B`
  : n < 1048576 ? `${(n / 1024).toFixed(1)} KiB` : `${(n / 1048576).toFixed(1)} MiB`);
export const pct = (v) => (v === null || v === undefined ? "–" : `${v.toFixed(2)} %`);
export const when = (t) => (t ? new Date(t).toLocaleString() : "–");
export const num = (v) => (v === null || v === undefined ? "–" : Number(v.toPrecision(5)).toString());
// a searched field's value (a sweep's trial): a number as `num` writes it, anything else as it is
export const paramText = (v) => (typeof v === "number" ? num(v) : String(v));

// 0:04:10, as `ttm` prints durations
export function hms(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "–";
  const s = Math.max(0, Math.round(seconds));
  const two = (n) => String(n).padStart(2, "0");
  return `${Math.floor(s / 3600)}:${two(Math.floor(s / 60) % 60)}:${two(s % 60)}`;
}

export const stateBadge = (state) => h("span", { class: `state state-${state}`, dataset: { state } }, state);

export const plannedEpochs = (spec) => Number((spec && spec.train && spec.train.epochs) || 0);

// Where the teacher comes from, in a few words: its architecture, a zoo name, a job, or a TorchScript file.
export function teacherText(spec) {
  const t = spec && spec.teacher;
  if (!t) return null;
  if (t.arch) return t.arch;
  if (t.zoo) return `zoo:${t.zoo}`;
  if (t.job) return t.job;
  if (t.torchscript) return "TorchScript";
  return "?";
}
export function archText(spec) {
  const student = (spec && spec.student && spec.student.arch) || "?";
  const teacher = teacherText(spec);
  return teacher ? `${teacher} → ${student}` : student;
}

export function lossName(spec) {
  const loss = (spec && spec.loss) || {};
  const features = loss.features && loss.features.kind ? ` + ${loss.features.kind.toUpperCase()}` : "";
  return `${(loss.kind || "?").toUpperCase()}${features}`;
}
// [γ, β] for the sort; a loss with a temperature T has γ = 1/T
export function gammaBeta(spec) {
  const loss = (spec && spec.loss) || {};
  const gamma = loss.gamma ?? (loss.temperature ? 1 / loss.temperature : null);
  return [gamma, loss.beta ?? null];
}
export function lossParams(spec) {
  const loss = (spec && spec.loss) || {};
  if (loss.gamma !== undefined) return `γ ${loss.gamma} · β ${loss.beta}`;
  if (loss.temperature !== undefined) {
    return `T ${loss.temperature}${loss.beta !== undefined ? ` · β ${loss.beta}` : ""}`;
  }
  return "–";
}
export const lossText = (spec) => {
  const params = lossParams(spec);
  return params === "–" ? lossName(spec) : `${lossName(spec)} (${params})`;
};

// How long a job has run: from its start to its end, or to now while it runs.
export function durationSeconds(job, now = Date.now()) {
  if (!job.started_at) return null;
  const end = job.finished_at ? Date.parse(job.finished_at) : now;
  return Math.max(0, (end - Date.parse(job.started_at)) / 1000);
}

// The epoch a running job is in, and its step there ({epoch, step, steps}), if its trainer said so since its last
// finished epoch (GET /v1/jobs and the event stream carry it).
export function inEpoch(job, epochsDone) {
  const p = job.progress;
  return p && ["running", "cancelling"].includes(job.state) && p.epoch > epochsDone && p.steps > 0 ? p : null;
}

// A Cancel button: asks `question()` first, then `send()` (the POST, resolving to the new state), hands the result
// to `done`; a refusal is said in `notice`. The button is disabled while the request is out.
export function onCancel(button, notice, question, send, done) {
  button.addEventListener("click", async () => {
    if (!confirm(question())) return;
    button.disabled = true;
    try {
      const out = await send();
      notice.textContent = "";
      done(out);
    } catch (err) {
      notice.textContent = `Cancel failed: ${err.message}`;
    } finally {
      button.disabled = false;
    }
  });
}
