// Curves: a job's metric series (GET /v1/jobs/{id}/metrics, then live events) and the
// chart library, plotly.js, served by this service from the `plotly` Python package.
let loading = null;
export function loadPlotly() {
  if (window.Plotly) return Promise.resolve(window.Plotly);
  if (!loading) {
    loading = new Promise((resolve, reject) => {
      const s = document.createElement("script");
      s.src = "/dashboard/lib/plotly.min.js";
      s.onload = () => resolve(window.Plotly);
      s.onerror = () => { loading = null; reject(new Error("the chart library did not load")); };
      document.head.append(s);
    });
  }
  return loading;
}

export const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"];
export const X_TITLES = { step: "step", tokens: "tokens", time: "wall time (s since start)" };

// Exponential moving average, debiased as TensorBoard's smoothing (weight 0: the raw values).
export function ema(values, weight) {
  if (!(weight > 0)) return values.slice();
  const out = [];
  let last = 0;
  values.forEach((v, i) => {
    last = last * weight + (1 - weight) * v;
    out.push(last / (1 - weight ** (i + 1)));
  });
  return out;
}

function stageSteps(stage) {
  if (typeof stage.steps === "number") return stage.steps;
  const phases = stage.phases || [];
  return (stage.cycles || 1) * phases.reduce((n, p) => n + (p.steps || 0), 0);
}

// One job's curves, by series name (`train.loss`, `eval.<data>.<metric>`, ...), each point
// {step, value}, with what turns a step into tokens or seconds.
export class Run {
  constructor(job) {
    this.job = job;
    this.series = new Map();
    this.stepTime = new Map(); // step -> ms, from the events
    this.boundaries = []; // {step, index, name}
    this.start = job.started_at ? Date.parse(job.started_at) : null;
    this.version = 0; // bumped on every change (redraw when it moved)
    this.setStages(job);
  }

  setStages(job) {
    const stages = (job.spec && job.spec.stages) || [];
    const sizes = stages.map((s) => stageSteps(s) * (s.batch_size || 1) * (s.grad_accum || 1));
    const total = sizes.reduce((a, b) => a + b, 0);
    const block = total && job.estimates ? job.estimates.tokens / total : 0;
    let first = 0;
    this.stageRanges = stages.map((s, i) => {
      const steps = stageSteps(s);
      const r = { index: i, name: s.name, type: s.type, first, steps, perStep: block * (sizes[i] / (steps || 1)) };
      first += steps;
      return r;
    });
  }

  loadMetrics(metrics) {
    for (const [name, points] of Object.entries(metrics.series || {})) {
      this.series.set(name, points.map(([step, value]) => ({ step, value })));
    }
    this.version++;
  }

  add(name, step, value) {
    if (typeof value !== "number") return;
    let s = this.series.get(name);
    if (!s) this.series.set(name, (s = []));
    const last = s[s.length - 1];
    if (last && step < last.step) return;
    if (last && step === last.step) { last.value = value; return; }
    s.push({ step, value });
  }

  // An event, from the history pages or the live stream.
  addEvent(e) {
    const t = Date.parse(e.time);
    if (e.type === "job.started" && this.start === null) this.start = t;
    if (e.type === "train.step") {
      this.stepTime.set(e.step, t);
      for (const k of ["loss", "lr", "grad_norm", "tokens_per_s"]) this.add(`train.${k}`, e.step, e.data[k]);
    } else if (e.type === "eval") {
      if (!this.stepTime.has(e.step)) this.stepTime.set(e.step, t);
      const data = e.data.data || "data";
      for (const [k, v] of Object.entries(e.data)) if (k !== "data" && typeof v === "number") this.add(`eval.${data}.${k}`, e.step, v);
    } else if (e.type === "stage.started" && e.stage) {
      this.boundaries = this.boundaries.filter((b) => b.index !== e.stage.index);
      this.boundaries.push({ step: e.step, index: e.stage.index, name: e.stage.name });
    } else if (e.type === "job.restarted") {
      const from = e.data.from_step;
      for (const [name, points] of this.series) this.series.set(name, points.filter((p) => p.step <= from));
    }
    this.version++;
  }

  tokensAt(step) {
    let n = 0;
    for (const r of this.stageRanges) {
      if (step <= r.first) break;
      n += Math.min(step - r.first, r.steps) * r.perStep;
    }
    return n;
  }

  secondsAt(step) {
    if (this.start === null) return null;
    let t = this.stepTime.get(step);
    if (t === undefined) { // the nearest known step before it
      let best = -1;
      for (const s of this.stepTime.keys()) if (s <= step && s > best) best = s;
      if (best < 0) return null;
      t = this.stepTime.get(best);
    }
    return (t - this.start) / 1000;
  }

  x(step, mode) {
    if (mode === "tokens") return this.tokensAt(step);
    if (mode === "time") return this.secondsAt(step);
    return step;
  }

  points(name, mode) {
    const s = this.series.get(name) || [];
    const xs = [], ys = [];
    for (const p of s) {
      const x = this.x(p.step, mode);
      if (x === null) continue;
      xs.push(x); ys.push(p.value);
    }
    return { x: xs, y: ys };
  }

  // The evaluation series: {metric: [data names]} (`eval.pairs.translate.chrf` is data
  // `pairs`, metric `translate.chrf`).
  evalMetrics() {
    const out = {};
    for (const name of this.series.keys()) {
      if (!name.startsWith("eval.")) continue;
      const rest = name.slice(5);
      const dot = rest.indexOf(".");
      if (dot < 0) continue;
      (out[rest.slice(dot + 1)] ||= []).push(rest.slice(0, dot));
    }
    return out;
  }

  // Vertical lines where stages start (after the first), with their names.
  stageMarks(mode) {
    const shapes = [], annotations = [];
    for (const b of [...this.boundaries].sort((a, c) => a.index - c.index)) {
      const x = this.x(b.step, mode);
      if (x === null) continue;
      if (b.index > 0) {
        shapes.push({ type: "line", xref: "x", yref: "paper", x0: x, x1: x, y0: 0, y1: 1,
          line: { color: "#8b949e", width: 1, dash: "dot" } });
      }
      annotations.push({ x, y: 1, xref: "x", yref: "paper", text: b.name, showarrow: false,
        xanchor: "left", yanchor: "bottom", font: { size: 10, color: "#57606a" } });
    }
    return { shapes, annotations };
  }
}

const CONFIG = { displaylogo: false, responsive: true, modeBarButtonsToRemove: ["lasso2d", "select2d"] };

export function layout(title, xTitle, extra = {}) {
  return {
    title: { text: title, font: { size: 14 }, x: 0.01, xanchor: "left" },
    margin: { l: 55, r: 15, t: 44, b: 40 },
    height: 300,
    xaxis: { title: { text: xTitle }, zeroline: false },
    yaxis: { zeroline: false, automargin: true },
    legend: { orientation: "h", y: -0.25, font: { size: 11 } },
    showlegend: true,
    hovermode: "x unified",
    paper_bgcolor: "#fff",
    plot_bgcolor: "#fff",
    ...extra,
  };
}

export async function draw(div, traces, lay) {
  try {
    const Plotly = await loadPlotly();
    if (!div.isConnected) return; // the view was left meanwhile
    await Plotly.react(div, traces, lay, CONFIG);
  } catch (err) {
    div.textContent = `The chart was not drawn: ${err.message}`;
  }
}

// Calls fn at most every `ms` however often it is asked for.
export function throttled(fn, ms = 400) {
  let pending = false, last = 0;
  return () => {
    if (pending) return;
    pending = true;
    const wait = Math.max(0, last + ms - Date.now());
    setTimeout(() => { pending = false; last = Date.now(); fn(); }, wait);
  };
}
