// The SVG scatter of a sweep's trials: x and y the first two searched numeric fields (a log axis for a log_uniform
// range), each point coloured by the sweep's metric on a scale shown beside it; with one numeric field, that field
// against the metric. Pruned trials are rings, failed ones crosses, running ones grey; the best trial is circled.
// Each point is a link to its trial's job, with its parameters and metric as its title. Redrawn whole on each update
// (a sweep has at most a few hundred trials); its texts go in with textContent.
import { el, formatValue, niceTicks } from "./chart.js";
import { paramText } from "./ui.js";

const W = 560, H = 300;
const M = { left: 60, right: 92, top: 12, bottom: 38 }; // the right margin holds the colour scale
// viridis at five stops: ordered in lightness, readable by the colour-blind and in grey
const RAMP = [[0x44, 0x01, 0x54], [0x3b, 0x52, 0x8b], [0x21, 0x91, 0x8c], [0x5e, 0xc9, 0x62], [0xfd, 0xe7, 0x25]];
const NO_VALUE = "#98a2b3";

// The colour of t in [0, 1] along the ramp.
export function rampColor(t) {
  const x = Math.min(1, Math.max(0, Number.isFinite(t) ? t : 0.5)) * (RAMP.length - 1);
  const i = Math.min(RAMP.length - 2, Math.floor(x)), f = x - i;
  const c = RAMP[i].map((a, k) => Math.round(a + (RAMP[i + 1][k] - a) * f));
  return `rgb(${c.join(",")})`;
}

// The searched fields a scatter can put on an axis: ranges, and lists of numbers only. {field, lo, hi, log}
export function numericFields(space) {
  const out = [];
  for (const [field, dim] of Object.entries(space || {})) {
    if (Array.isArray(dim)) {
      if (dim.length && dim.every((v) => typeof v === "number")) {
        out.push({ field, lo: Math.min(...dim), hi: Math.max(...dim), log: false });
      }
    } else if (dim && (dim.uniform || dim.int)) {
      const [lo, hi] = dim.uniform || dim.int;
      out.push({ field, lo, hi, log: false });
    } else if (dim && dim.log_uniform) {
      out.push({ field, lo: dim.log_uniform[0], hi: dim.log_uniform[1], log: true });
    }
  }
  return out;
}

// An axis over [lo, hi] and a little more (no point on the plot's edge): its ticks, their labels, and where a value
// goes on [0, 1].
function axis(lo, hi, log) {
  if (log && lo > 0) {
    const f = hi > lo ? (hi / lo) ** 0.04 : 1.5;
    [lo, hi] = [lo / f, hi * f];
    const ticks = [];
    const steps = Math.log10(hi / lo) > 3 ? [1] : [1, 2, 5]; // many decades: their powers of ten only
    for (let e = Math.floor(Math.log10(lo)); e <= Math.ceil(Math.log10(hi)); e++) {
      for (const m of steps) {
        const t = m * 10 ** e;
        if (t >= lo * 0.999 && t <= hi * 1.001) ticks.push(Number(t.toPrecision(6)));
      }
    }
    const a = Math.log10(lo), b = Math.log10(hi);
    const at = (v) => (b > a ? (Math.log10(v) - a) / (b - a) : 0.5);
    return { ticks, labels: ticks.map((t) => String(t)), at };
  }
  const pad = hi > lo ? (hi - lo) * 0.04 : 0;
  const { ticks, step } = niceTicks(lo - pad, hi + pad, 5);
  const a = ticks[0], b = ticks[ticks.length - 1];
  return { ticks, labels: ticks.map((t) => formatValue(t, step)), at: (v) => (b > a ? (v - a) / (b - a) : 0.5) };
}

// Draw the sweep's trials into `figure` (a <figure>): replaces what was there.
export function drawScatter(figure, sweep) {
  const fields = numericFields(sweep.spec && sweep.spec.space).slice(0, 2);
  const metric = sweep.metric;
  const trials = sweep.trials.filter((t) => t.job_id || t.value !== null);
  const values = trials.map((t) => t.value).filter((v) => v !== null && v !== undefined);
  const vLo = values.length ? Math.min(...values) : 0, vHi = values.length ? Math.max(...values) : 1;
  const colorOf = (v) => (v === null || v === undefined ? NO_VALUE : rampColor(vHi > vLo ? (v - vLo) / (vHi - vLo) : 0.5));

  const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": `trials by ${metric}` });
  const caption = document.createElement("figcaption");
  figure.replaceChildren(caption, svg);
  figure.classList.add("chart", "scatter");
  figure.dataset.points = "0";
  const pw = W - M.left - M.right, ph = H - M.top - M.bottom;
  svg.append(el("rect", { x: M.left, y: M.top, width: pw, height: ph, class: "plot" }));
  if (!fields.length) {
    caption.textContent = "Trials";
    svg.append(el("text", { x: M.left + pw / 2, y: M.top + ph / 2, class: "empty", "text-anchor": "middle" },
      "no numeric field searched: see the table"));
    return;
  }
  const [fx, fy] = fields;
  caption.textContent = fy ? `${fy.field} against ${fx.field}, coloured by ${metric}` : `${metric} against ${fx.field}`;
  const xs = axis(fx.lo, fx.hi, fx.log);
  const ys = fy ? axis(fy.lo, fy.hi, fy.log) : axis(values.length ? vLo : 0, values.length ? vHi : 100, false);
  figure.dataset.xField = fx.field;
  figure.dataset.yField = fy ? fy.field : metric;
  figure.dataset.xScale = fx.log ? "log" : "linear";
  const sx = (v) => M.left + xs.at(v) * pw, sy = (v) => M.top + ph - ys.at(v) * ph;

  const grid = el("g", { class: "grid" });
  xs.ticks.forEach((t, i) => {
    grid.append(el("line", { x1: sx(t), x2: sx(t), y1: M.top, y2: M.top + ph, class: "x" }));
    grid.append(el("text", { x: sx(t), y: M.top + ph + 16, "text-anchor": "middle", class: "x-tick" }, xs.labels[i]));
  });
  ys.ticks.forEach((t, i) => {
    grid.append(el("line", { x1: M.left, x2: M.left + pw, y1: sy(t), y2: sy(t) }));
    grid.append(el("text", { x: M.left - 6, y: sy(t) + 4, "text-anchor": "end", class: "y-tick" }, ys.labels[i]));
  });
  grid.append(el("text", { x: M.left + pw / 2, y: H - 4, "text-anchor": "middle", class: "axis-label" },
    fx.field + (fx.log ? " (log)" : "")));
  const yLabel = fy ? fy.field + (fy.log ? " (log)" : "") : metric;
  grid.append(el("text", { x: 12, y: M.top + ph / 2, "text-anchor": "middle", class: "axis-label",
                           transform: `rotate(-90 12 ${M.top + ph / 2})` }, yLabel));
  svg.append(grid);

  const points = el("g", { class: "points" });
  let drawn = 0;
  for (const t of trials) {
    const x = t.params[fx.field];
    if (typeof x !== "number") continue;
    const yValue = fy ? t.params[fy.field] : t.value;
    const onAxis = !fy && (yValue === null || yValue === undefined); // no metric yet: on the bottom edge
    if (!onAxis && typeof yValue !== "number") continue;
    const px = sx(x), py = onAxis ? M.top + ph : sy(yValue);
    const [cx, cy] = [px.toFixed(1), py.toFixed(1)];
    const color = colorOf(t.value);
    const best = Boolean(sweep.best && sweep.best.number === t.number);
    const link = el("a", { class: `point point-${t.state}`, "data-trial": t.number, "data-state": t.state,
                           "data-best": best ? "true" : "false" });
    if (t.job_id) link.setAttribute("href", `/ui/jobs/${encodeURIComponent(t.job_id)}`);
    if (best) link.append(el("circle", { cx, cy, r: 10, class: "best-mark" }));
    if (t.state === "failed") {
      const [l, r, t0, b] = [px - 4, px + 4, py - 4, py + 4].map((v) => v.toFixed(1));
      const d = `M${l},${t0} L${r},${b} M${l},${b} L${r},${t0}`;
      link.append(el("path", { d, stroke: NO_VALUE, class: "mark" }));
    } else if (t.state === "pruned") {
      link.append(el("circle", { cx, cy, r: 5, fill: "#fff", stroke: color, "stroke-width": 2, class: "mark" }));
    } else {
      link.append(el("circle", { cx, cy, r: 5.5, fill: t.state === "running" ? NO_VALUE : color, class: "mark" }));
    }
    const params = Object.entries(t.params).map(([k, v]) => `${k} = ${paramText(v)}`).join(", ");
    const value = t.value === null || t.value === undefined ? "no value yet" : `${metric} ${t.value.toFixed(2)}`;
    link.append(el("title", {}, `trial ${t.number}${best ? " (best)" : ""}: ${params} · ${value} · ${t.state}`));
    points.append(link);
    drawn += 1;
  }
  svg.append(points);
  figure.dataset.points = String(drawn);
  drawScale(svg, metric, values.length ? [vLo, vHi] : null);
}

// The colour scale at the right: a gradient from the lowest metric to the highest, and the marks' meanings.
function drawScale(svg, metric, range) {
  const x = W - M.right + 18, top = M.top + 14, height = 120;
  const g = el("g", { class: "scale" });
  g.append(el("text", { x, y: M.top + 4, class: "axis-label" }, metric));
  if (range) {
    const defs = el("defs");
    const gradient = el("linearGradient", { id: "scatter-scale", x1: 0, y1: 1, x2: 0, y2: 0 });
    RAMP.forEach((_, i) => gradient.append(el("stop", { offset: i / (RAMP.length - 1),
                                                        "stop-color": rampColor(i / (RAMP.length - 1)) })));
    defs.append(gradient);
    g.append(defs, el("rect", { x, y: top, width: 12, height, fill: "url(#scatter-scale)", class: "ramp" }));
    g.append(el("text", { x: x + 16, y: top + 8, class: "scale-hi" }, range[1].toFixed(2)));
    g.append(el("text", { x: x + 16, y: top + height, class: "scale-lo" }, range[0].toFixed(2)));
  }
  const keys = [["●", "complete"], ["○", "pruned"], ["×", "failed"], ["◎", "best"]];
  keys.forEach(([mark, text], i) => g.append(el("text", { x, y: top + height + 22 + 14 * i, class: "key" },
    `${mark} ${text}`)));
  svg.append(g);
}
