// A small SVG line chart: several series of (epoch, value) points on shared axes, horizontal reference lines (the
// teacher's accuracy, its entropy), an x axis that runs to the planned number of epochs, and a hover readout.
// Redrawn whole on each update: a few hundred points at most, simpler than patching the DOM, and fast enough.
// Every text it draws (labels, values) goes in with textContent: series labels are job names, untrusted.

const SVG = "http://www.w3.org/2000/svg";
const W = 560, H = 260;
const M = { left: 56, right: 14, top: 12, bottom: 34 }; // the left one grows to fit long tick labels
export const PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"];
export const REFERENCE_COLOR = "#5b6270";

// An SVG element with attributes and, if given, its text (as text). The scatter (scatter.js) draws with it too.
export function el(name, attrs = {}, text) {
  const node = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

// "Nice" tick values (1, 2, 5 × 10^k) covering [lo, hi] with about `count` steps.
export function niceTicks(lo, hi, count = 5) {
  if (!(hi > lo)) {
    const pad = Math.abs(lo) > 0 ? Math.abs(lo) * 0.1 : 1;
    lo -= pad;
    hi += pad;
  }
  const raw = (hi - lo) / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((f) => f * mag).find((s) => s >= raw);
  const start = Math.floor(lo / step) * step;
  const ticks = [];
  for (let v = start; v <= hi + step * 0.5; v += step) ticks.push(Number(v.toPrecision(12)));
  if (ticks[ticks.length - 1] < hi) ticks.push(Number((ticks[ticks.length - 1] + step).toPrecision(12)));
  return { ticks, step };
}

// Integer epoch ticks from 0 to `hi` (about 8 of them), always ending on `hi` itself: the planned last epoch.
function epochTicks(hi) {
  const { step } = niceTicks(0, hi, Math.min(8, Math.max(1, hi)));
  const s = Math.max(1, Math.round(step));
  const ticks = [];
  for (let t = 0; t < hi; t += s) ticks.push(t);
  if (ticks.length > 1 && hi - ticks[ticks.length - 1] < s * 0.4) ticks.pop(); // no label crowding the last one
  ticks.push(hi);
  return ticks;
}

export function formatValue(v, step) {
  if (Math.abs(v) >= 1e4 || (Math.abs(v) > 0 && Math.abs(v) < 1e-3)) return v.toExponential(1);
  const digits = Math.max(0, Math.min(6, -Math.floor(Math.log10(step || 1))));
  return v.toFixed(digits);
}

export class LineChart {
  // `figure` is an element to draw into. Options: title, unit (the y axis), epochs (the x axis runs to it),
  // legend (false: a page that shows one legend for all its charts), empty (the text while there is no data).
  constructor(figure, { title, unit = "", epochs = 0, legend = true, empty = "no data yet" } = {}) {
    this.figure = figure;
    this.title = title;
    this.unit = unit;
    this.epochs = epochs;
    this.showLegend = legend;
    this.emptyText = empty;
    this.series = new Map(); // id → {label, color, points: Map(epoch → value)}
    this.references = new Map(); // id → {label, color, value}
    this.hover = null; // the epoch under the pointer, or null
    figure.classList.add("chart");
    const caption = document.createElement("figcaption");
    this.readout = document.createElement("span");
    this.readout.className = "readout";
    caption.append(document.createTextNode(title), this.readout);
    this.svg = el("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": title });
    this.svg.addEventListener("pointermove", (e) => this.pointer(e));
    this.svg.addEventListener("pointerleave", () => this.pointer(null));
    this.legend = document.createElement("ul");
    this.legend.className = "legend";
    figure.append(caption, this.svg, this.legend);
    this.pending = false;
    this.draw();
  }

  // Add or update a point; redraws on the next animation frame (a burst of events draws once).
  add(seriesId, epoch, value, { label, color } = {}) {
    let s = this.series.get(seriesId);
    if (!s) {
      s = { label: label || seriesId, color: color || PALETTE[this.series.size % PALETTE.length], points: new Map() };
      this.series.set(seriesId, s);
    }
    if (label) s.label = label;
    s.points.set(epoch, value);
    this.schedule();
  }

  setLabel(seriesId, label) {
    const s = this.series.get(seriesId);
    if (s && s.label !== label) {
      s.label = label;
      this.schedule();
    }
  }

  ensureSeries(seriesId, { label, color } = {}) {
    if (!this.series.has(seriesId)) {
      this.series.set(seriesId, { label: label || seriesId, color: color || PALETTE[this.series.size % PALETTE.length],
                                  points: new Map() });
      this.schedule();
    }
  }

  // A horizontal line at `value` across the whole plot, e.g. the teacher's test accuracy.
  setReference(id, value, { label = "", color = REFERENCE_COLOR } = {}) {
    this.references.set(id, { value, label, color });
    this.schedule();
  }

  setEpochs(epochs) {
    if (epochs !== this.epochs) {
      this.epochs = epochs;
      this.schedule();
    }
  }

  setEmptyText(text) {
    if (text !== this.emptyText) {
      this.emptyText = text;
      this.schedule();
    }
  }

  schedule() {
    if (this.pending) return;
    this.pending = true;
    const run = () => { this.pending = false; this.draw(); };
    if (document.hidden) setTimeout(run, 0); else requestAnimationFrame(run);
  }

  pointer(event) {
    let epoch = null;
    if (event && this.scale) {
      const box = this.svg.getBoundingClientRect();
      const x = ((event.clientX - box.left) / box.width) * W;
      const { xLo, xHi, left } = this.scale;
      const e = Math.round(xLo + ((x - left) / (W - left - M.right)) * (xHi - xLo));
      if (e >= xLo && e <= xHi) epoch = e;
    }
    if (epoch !== this.hover) {
      this.hover = epoch;
      this.draw();
    }
  }

  draw() {
    const svg = this.svg;
    svg.replaceChildren();
    this.scale = null;
    const all = [...this.series.values()].flatMap((s) => [...s.points.entries()]);
    const refs = [...this.references.values()];
    const ys = [...all.map(([, y]) => y), ...refs.map((r) => r.value)];
    const yt = ys.length ? niceTicks(Math.min(...ys), Math.max(...ys)) : null;
    const yLabels = yt ? yt.ticks.map((t) => formatValue(t, yt.step)) : [];
    const left = Math.max(M.left, 16 + 6.6 * Math.max(0, ...yLabels.map((l) => l.length)));
    const pw = W - left - M.right, ph = H - M.top - M.bottom;
    svg.append(el("rect", { x: left, y: M.top, width: pw, height: ph, class: "plot" }));
    this.figure.dataset.points = String(all.length);
    this.figure.dataset.references = String(refs.length);
    if (all.length === 0 && refs.length === 0) {
      this.figure.dataset.xMax = "";
      svg.append(el("text", { x: left + pw / 2, y: M.top + ph / 2, class: "empty", "text-anchor": "middle" },
                    this.emptyText));
      this.readout.textContent = "";
      this.drawLegend();
      return;
    }
    const xs = all.map(([x]) => x);
    const xLo = 0, xHi = Math.max(1, this.epochs || 0, ...xs);
    const yLo = yt.ticks[0], yHi = yt.ticks[yt.ticks.length - 1];
    const sx = (x) => left + ((x - xLo) / (xHi - xLo)) * pw;
    const sy = (y) => M.top + ph - ((y - yLo) / (yHi - yLo || 1)) * ph;
    this.scale = { xLo, xHi, left };
    this.figure.dataset.xMax = String(xHi);

    const grid = el("g", { class: "grid" });
    yt.ticks.forEach((t, i) => {
      grid.append(el("line", { x1: left, x2: left + pw, y1: sy(t), y2: sy(t) }));
      grid.append(el("text", { x: left - 6, y: sy(t) + 4, "text-anchor": "end" }, yLabels[i]));
    });
    for (const t of epochTicks(xHi)) {
      grid.append(el("line", { x1: sx(t), x2: sx(t), y1: M.top, y2: M.top + ph, class: "x" }));
      grid.append(el("text", { x: sx(t), y: M.top + ph + 16, "text-anchor": "middle", class: "x-tick" }, String(t)));
    }
    grid.append(el("text", { x: left + pw / 2, y: H - 4, "text-anchor": "middle", class: "axis-label" }, "epoch"));
    if (this.unit) {
      grid.append(el("text", { x: 12, y: M.top + ph / 2, "text-anchor": "middle", class: "axis-label",
                               transform: `rotate(-90 12 ${M.top + ph / 2})` }, this.unit));
    }
    svg.append(grid);

    // reference lines: several at one value (jobs with the same teacher) draw once, in the neutral colour
    const byValue = new Map();
    for (const [id, r] of this.references) {
      const key = r.value.toPrecision(6);
      const seen = byValue.get(key);
      if (seen) seen.color = REFERENCE_COLOR; else byValue.set(key, { ...r, id });
    }
    for (const r of byValue.values()) {
      const y = sy(r.value).toFixed(1);
      const text = `${r.label ? `${r.label} ` : ""}${Number(r.value.toPrecision(4))}`;
      const line = el("line", { x1: left, x2: left + pw, y1: y, y2: y, stroke: r.color, class: "reference",
                                "data-reference": r.id, "data-value": r.value });
      line.append(el("title", {}, text));
      svg.append(line, el("text", { x: left + pw - 4, y: Number(y) - 4, "text-anchor": "end", fill: r.color,
                                    class: "reference-label" }, text));
    }

    for (const [id, s] of this.series) {
      const pts = [...s.points.entries()].sort((a, b) => a[0] - b[0]);
      if (pts.length === 0) continue;
      const d = pts.map(([x, y], i) => `${i ? "L" : "M"}${sx(x).toFixed(1)},${sy(y).toFixed(1)}`).join(" ");
      svg.append(el("path", { d, stroke: s.color, class: "line", "data-series": id, "data-points": pts.length }));
      if (pts.length <= 60) {
        const dots = el("g", { fill: s.color, class: "dots" });
        for (const [x, y] of pts) {
          const c = el("circle", { cx: sx(x).toFixed(1), cy: sy(y).toFixed(1), r: 2.6 });
          c.append(el("title", {}, `${s.label} · epoch ${x}: ${y.toPrecision(5)}`));
          dots.append(c);
        }
        svg.append(dots);
      }
    }
    if (all.length === 0) {
      svg.append(el("text", { x: left + pw / 2, y: M.top + ph / 2 + 20, class: "empty", "text-anchor": "middle" },
                    this.emptyText));
    }
    this.drawHover(sx, sy);
    this.drawLegend();
  }

  // A vertical line at the epoch under the pointer, and the series' values there in the caption.
  drawHover(sx, sy) {
    const e = this.hover;
    const values = e === null ? [] : [...this.series.values()].filter((s) => s.points.has(e))
      .map((s) => ({ s, v: s.points.get(e) }));
    if (!values.length) {
      this.readout.textContent = "";
      return;
    }
    this.svg.append(el("line", { x1: sx(e), x2: sx(e), y1: M.top, y2: H - M.bottom, class: "hover" }));
    for (const { s, v } of values) {
      this.svg.append(el("circle", { cx: sx(e), cy: sy(v), r: 4.5, fill: "none", stroke: s.color, "stroke-width": 2 }));
    }
    const text = values.map(({ s, v }) => (this.series.size > 1 ? `${s.label}: ` : "") + v.toPrecision(5));
    this.readout.textContent = ` · epoch ${e}: ${text.join(" · ")}`;
  }

  drawLegend() {
    this.legend.replaceChildren();
    if (!this.showLegend || this.series.size < 2) return;
    for (const s of this.series.values()) this.legend.append(legendItem(s.label, s.color));
  }
}

export function legendItem(label, color) {
  const li = document.createElement("li");
  const swatch = document.createElement("span");
  swatch.className = "swatch";
  swatch.style.background = color; // CSSOM: the CSP allows no style attributes
  li.append(swatch, document.createTextNode(label));
  return li;
}
