// The job page's panels below the curves: the stage timeline, checkpoints, the evaluation
// report with sample generations, and the events list.
import { duration, fmtNumber, h, replace, when } from "./util.js";

// One segment per stage, as wide as its steps: done, active (filled to the step), pending.
export function timeline(el, run, job) {
  const cur = job.stage ? job.stage.index : -1;
  const ended = !["queued", "running", "cancelling"].includes(job.status);
  const started = new Map(run.boundaries.map((b) => [b.index, b]));
  replace(el, run.stageRanges.map((r) => {
    let state = "pending", fill = 0;
    if (job.status === "succeeded" || r.index < cur) { state = "done"; fill = 1; }
    else if (r.index === cur) {
      fill = Math.max(0, Math.min(1, (job.step - r.first) / (r.steps || 1)));
      state = ended ? "stopped" : "active";
    }
    const b = started.get(r.index);
    const at = b && run.stepTime.size ? run.secondsAt(b.step) : null;
    return h("div", { class: `seg seg-${state}`, style: `flex-grow:${Math.max(1, r.steps)}`,
      "data-state": state, "data-index": r.index, title: `${r.name}: ${r.type}, steps ${r.first + 1}-${r.first + r.steps}` },
    h("div", { class: "fill", style: `width:${(fill * 100).toFixed(1)}%` }),
    h("div", { class: "label" }, h("strong", {}, r.name), ` ${r.type} · ${r.steps} steps`,
      at !== null ? h("span", { class: "muted" }, ` · from ${duration(at)}`) : null));
  }));
}

function metricSummary(metrics) {
  const keys = Object.keys(metrics || {}).filter((k) => k === "train.loss" || /^eval\.[^.]+\.loss$/.test(k));
  return keys.map((k) => `${k} ${fmtNumber(metrics[k])}`).join(" · ") || "—";
}

export function checkpoints(el, list) {
  if (!list.length) return replace(el, h("p", { class: "muted" }, "No checkpoint kept yet."));
  replace(el, h("table", { class: "compact", id: "checkpoints-table" },
    h("thead", {}, h("tr", {}, ["checkpoint", "step", "stage", "metrics then", "saved", ""].map((c) => h("th", {}, c)))),
    h("tbody", {}, list.map((c) => h("tr", {},
      h("td", { class: "mono small" }, c.id), h("td", { class: "num" }, c.step), h("td", {}, c.stage || "—"),
      h("td", { class: "small" }, metricSummary(c.metrics)), h("td", { class: "small" }, when(c.created_at)),
      h("td", {}, h("a", { href: `/dashboard/models/${c.id}`, "data-link": true }, "try it")))))));
}

export function evaluation(el, report) {
  const rows = [];
  for (const s of report.stages || []) {
    for (const [data, metrics] of Object.entries(s.metrics || {})) rows.push({ stage: s.name, step: s.step, data, metrics });
  }
  for (const [data, metrics] of Object.entries(report.final || {})) rows.push({ stage: "final", step: null, data, metrics });
  const names = [...new Set(rows.flatMap((r) => Object.keys(r.metrics)))];
  const parts = [];
  if (rows.length) {
    parts.push(h("table", { class: "compact", id: "evaluation-table" },
      h("thead", {}, h("tr", {}, ["stage", "step", "data", ...names].map((c) => h("th", {}, c)))),
      h("tbody", {}, rows.map((r) => h("tr", {}, h("td", {}, r.stage), h("td", { class: "num" }, r.step ?? "—"),
        h("td", {}, r.data), names.map((n) => h("td", { class: "num" }, fmtNumber(r.metrics[n]))))))));
  } else {
    parts.push(h("p", { class: "muted" }, "No evaluation yet (one runs at each stage's end and every `evaluation.every_steps`)."));
  }
  const samples = [...(report.samples || [])].reverse().slice(0, 24);
  if (samples.length) {
    parts.push(h("h4", {}, "Sample generations"), h("table", { class: "compact samples", id: "samples-table" },
      h("thead", {}, h("tr", {}, ["stage", "step", "data", "task", "prompt", "reference", "prediction"].map((c) => h("th", {}, c)))),
      h("tbody", {}, samples.map((s) => h("tr", {}, h("td", {}, s.stage ?? "final"), h("td", { class: "num" }, s.step),
        h("td", {}, s.data), h("td", {}, s.task), h("td", { class: "pre" }, s.prompt),
        h("td", { class: "pre" }, s.reference), h("td", { class: "pre" }, s.prediction))))));
  }
  replace(el, parts);
}

function summary(e) {
  const d = { ...(e.data || {}) };
  delete d.samples;
  return Object.entries(d).map(([k, v]) => `${k}=${typeof v === "number" ? fmtNumber(v) : JSON.stringify(v)}`).join("  ");
}

export function eventsList(el, events, withSteps) {
  const shown = events.filter((e) => withSteps || e.type !== "train.step").slice(-300).reverse();
  replace(el, h("table", { class: "compact events", id: "events-table" },
    h("thead", {}, h("tr", {}, ["seq", "time", "type", "stage", "step", "data"].map((c) => h("th", {}, c)))),
    h("tbody", {}, shown.map((e) => h("tr", { "data-seq": e.seq, class: `ev-${e.type.replace(".", "-")}` },
      h("td", { class: "num" }, e.seq), h("td", { class: "small" }, new Date(e.time).toLocaleTimeString()),
      h("td", {}, e.type), h("td", {}, e.stage ? e.stage.name : "—"), h("td", { class: "num" }, e.step),
      h("td", { class: "small mono wrap" }, summary(e)))))));
}
