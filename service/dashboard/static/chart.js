// A small SVG line chart: several series of (epoch, value) points on shared axes, redrawn whole on each update
// (a few hundred points at most: simpler than patching the DOM, and fast enough).

const SVG = "http://www.w3.org/2000/svg";
const W = 560, H = 260;
const M = { left: 56, right: 14, top: 12, bottom: 34 };
export const PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"];

function el(name, attrs = {}, text) {
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

function fmt(v, step) {
  if (Math.abs(v) >= 1e4 || (Math.abs(v) > 0 && Math.abs(v) < 1e-3)) return v.toExponential(1);
  const digits = Math.max(0, Math.min(6, -Math.floor(Math.log10(step || 1))));
  return v.toFixed(digits);
}

export class LineChart {
  // `figure` is an element to draw into; options: title, unit (shown on the y axis).
  constructor(figure, { title, unit = "" } = {}) {
    this.figure = figure;
    this.title = title;
    this.unit = unit;
    this.series = new Map(); // id → {label, color, points: Map(epoch → value)}
    figure.classList.add("chart");
    const caption = document.createElement("figcaption");
    caption.textContent = title;
    this.svg = el("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": title });
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

  schedule() {
    if (this.pending) return;
    this.pending = true;
    const run = () => { this.pending = false; this.draw(); };
    if (document.hidden) setTimeout(run, 0); else requestAnimationFrame(run);
  }

  draw() {
    const svg = this.svg;
    svg.replaceChildren();
    const all = [...this.series.values()].flatMap((s) => [...s.points.entries()]);
    const pw = W - M.left - M.right, ph = H - M.top - M.bottom;
    svg.append(el("rect", { x: M.left, y: M.top, width: pw, height: ph, class: "plot" }));
    this.figure.dataset.points = String(all.length);
    if (all.length === 0) {
      svg.append(el("text", { x: M.left + pw / 2, y: M.top + ph / 2, class: "empty", "text-anchor": "middle" },
                    "no data yet"));
      this.drawLegend();
      return;
    }
    const xs = all.map(([x]) => x), ys = all.map(([, y]) => y);
    const xLo = Math.min(0, ...xs), xHi = Math.max(1, ...xs);
    const yt = niceTicks(Math.min(...ys), Math.max(...ys));
    const yLo = yt.ticks[0], yHi = yt.ticks[yt.ticks.length - 1];
    const xt = niceTicks(xLo, xHi, Math.min(8, Math.max(1, xHi - xLo)));
    const xStep = Math.max(1, xt.step);
    const sx = (x) => M.left + ((x - xLo) / (xHi - xLo)) * pw;
    const sy = (y) => M.top + ph - ((y - yLo) / (yHi - yLo || 1)) * ph;

    const grid = el("g", { class: "grid" });
    for (const t of yt.ticks) {
      grid.append(el("line", { x1: M.left, x2: M.left + pw, y1: sy(t), y2: sy(t) }));
      grid.append(el("text", { x: M.left - 6, y: sy(t) + 4, "text-anchor": "end" }, fmt(t, yt.step)));
    }
    for (let t = Math.ceil(xLo / xStep) * xStep; t <= xHi; t += xStep) {
      grid.append(el("line", { x1: sx(t), x2: sx(t), y1: M.top, y2: M.top + ph, class: "x" }));
      grid.append(el("text", { x: sx(t), y: M.top + ph + 16, "text-anchor": "middle" }, String(t)));
    }
    grid.append(el("text", { x: M.left + pw / 2, y: H - 4, "text-anchor": "middle", class: "axis-label" }, "epoch"));
    if (this.unit) {
      grid.append(el("text", { x: 12, y: M.top + ph / 2, "text-anchor": "middle", class: "axis-label",
                               transform: `rotate(-90 12 ${M.top + ph / 2})` }, this.unit));
    }
    svg.append(grid);

    for (const [id, s] of this.series) {
      const pts = [...s.points.entries()].sort((a, b) => a[0] - b[0]);
      if (pts.length === 0) continue;
      const d = pts.map(([x, y], i) => `${i ? "L" : "M"}${sx(x).toFixed(1)},${sy(y).toFixed(1)}`).join(" ");
      svg.append(el("path", { d, stroke: s.color, class: "line", "data-series": id, "data-points": pts.length }));
      if (pts.length <= 60) {
        const dots = el("g", { fill: s.color });
        for (const [x, y] of pts) {
          const c = el("circle", { cx: sx(x).toFixed(1), cy: sy(y).toFixed(1), r: 2.6 });
          c.append(el("title", {}, `${s.label} · epoch ${x}: ${y.toPrecision(5)}`));
          dots.append(c);
        }
        svg.append(dots);
      }
    }
    this.drawLegend();
  }

  drawLegend() {
    this.legend.replaceChildren();
    if (this.series.size < 2) return;
    for (const s of this.series.values()) {
      const li = document.createElement("li");
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = s.color;
      li.append(swatch, document.createTextNode(s.label));
      this.legend.append(li);
    }
  }
}
