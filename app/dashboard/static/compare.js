// Several jobs' curves on the same axes (e.g. one spec with two learning rates), and the
// spec fields in which they differ.
import { ACTIVE, allEvents, api } from "./api.js";
import { COLORS, Run, X_TITLES, draw, ema, layout } from "./charts.js";
import { axisControls } from "./job.js";
import { errorBox, fmtNumber, h, replace, statusBadge } from "./util.js";

function flatten(value, prefix = "", out = {}) {
  if (value && typeof value === "object" && !Array.isArray(value)) {
    for (const [k, v] of Object.entries(value)) flatten(v, prefix ? `${prefix}.${k}` : k, out);
  } else if (Array.isArray(value) && value.some((v) => v && typeof v === "object")) {
    value.forEach((v, i) => flatten(v, `${prefix}.${i}`, out));
  } else out[prefix] = typeof value === "number" ? String(Number(value.toPrecision(12))) : JSON.stringify(value);
  return out;
}

export async function compareView(root, { query, signal }) {
  const ids = (query.get("jobs") || "").split(",").map((s) => s.trim()).filter(Boolean);
  const state = { axis: "step", smoothing: 0.6, evalName: null, runs: new Map(), last: new Map(), problems: [] };
  const picker = h("input", { id: "compare-add", list: "compare-jobs", placeholder: "job id or name", "aria-label": "add a job" });
  const options = h("datalist", { id: "compare-jobs" });
  const chips = h("div", { class: "chips" });
  const problems = h("div");
  const evalSel = h("select", { id: "cmp-eval-metric", "aria-label": "evaluation series", onchange: () => { state.evalName = evalSel.value; redraw(); } });
  const charts = { loss: h("div", { id: "cmp-loss", class: "chart" }), eval: h("div", { id: "cmp-eval", class: "chart" }),
    lr: h("div", { id: "cmp-lr", class: "chart" }) };
  const diff = h("div", { id: "spec-diff" });
  let recent = [];
  replace(root,
    h("div", { class: "view-head" }, h("h2", {}, "Compare jobs")),
    h("form", { class: "toolbar", onsubmit: (e) => { e.preventDefault(); add(picker.value); } },
      picker, options, h("button", { type: "submit" }, "Add"), chips),
    problems,
    h("div", { class: "toolbar" }, axisControls(state, () => redraw()), evalSel),
    h("div", { class: "charts" }, Object.values(charts)),
    h("section", {}, h("h3", {}, "Where the specs differ"), diff));

  function setUrl() {
    history.replaceState(null, "", `/dashboard/compare${ids.length ? "?jobs=" + ids.join(",") : ""}`);
  }

  function add(text) {
    const t = text.trim();
    const found = recent.find((j) => j.id === t || j.name === t);
    const id = found ? found.id : t;
    if (!id || ids.includes(id)) return;
    ids.push(id);
    picker.value = "";
    setUrl();
    loadAll();
  }

  async function load(id) {
    const job = await api(`/v1/jobs/${encodeURIComponent(id)}`, { signal });
    const metrics = await api(`/v1/jobs/${encodeURIComponent(id)}/metrics`, { signal });
    const events = await allEvents(id, 0, signal);
    const run = new Run(job);
    run.loadMetrics(metrics);
    events.forEach((e) => run.addEvent(e));
    state.runs.set(id, run);
    state.last.set(id, events.length ? events[events.length - 1].seq : 0);
  }

  async function loadAll() {
    state.problems = [];
    for (const id of ids) {
      if (state.runs.has(id)) continue;
      try { await load(id); } catch (err) {
        if (signal.aborted) return;
        state.problems.push(err.status === 404 ? new Error(`There is no job ${id} for this key.`) : err);
      }
    }
    drawAll();
  }

  // Running jobs: new events since the last seen, new metrics.
  async function refresh() {
    for (const [id, run] of state.runs) {
      if (!ACTIVE.has(run.job.status)) continue;
      try {
        const events = await allEvents(id, state.last.get(id), signal);
        events.forEach((e) => run.addEvent(e));
        if (events.length) state.last.set(id, events[events.length - 1].seq);
        run.job = await api(`/v1/jobs/${encodeURIComponent(id)}`, { signal });
      } catch { /* next time */ }
    }
    drawAll();
  }

  function drawAll() {
    replace(problems, state.problems.map(errorBox));
    const shown = ids.filter((id) => state.runs.has(id));
    replace(chips, shown.map((id, i) => {
      const run = state.runs.get(id);
      return h("span", { class: "chip", style: `border-color:${COLORS[i % COLORS.length]}` },
        h("a", { href: `/dashboard/jobs/${id}`, "data-link": true }, run.job.name || id), " ", statusBadge(run.job.status),
        h("button", { type: "button", class: "link", "aria-label": `remove ${id}`, onclick: () => {
          ids.splice(ids.indexOf(id), 1); state.runs.delete(id); setUrl(); drawAll(); } }, "✕"));
    }));
    drawDiff(shown.map((id) => state.runs.get(id).job));
    redraw();
  }

  function drawDiff(jobs) {
    if (jobs.length < 2) return replace(diff, h("p", { class: "muted" }, "Add two jobs or more."));
    const flat = jobs.map((j) => flatten(j.spec || {}));
    const keys = [...new Set(flat.flatMap(Object.keys))].filter((k) => k !== "name" && new Set(flat.map((f) => f[k])).size > 1);
    if (!keys.length) return replace(diff, h("p", { class: "muted" }, "The specs are the same (but for their names)."));
    replace(diff, h("table", { class: "compact" },
      h("thead", {}, h("tr", {}, h("th", {}, "field"), jobs.map((j) => h("th", {}, j.name || j.id)))),
      h("tbody", {}, keys.map((k) => h("tr", {}, h("td", { class: "mono" }, k), flat.map((f) => h("td", { class: "mono" }, f[k] ?? "—")))))));
  }

  function redraw() {
    const x = X_TITLES[state.axis];
    const shown = ids.filter((id) => state.runs.has(id)).map((id) => state.runs.get(id));
    const loss = [], evals = [], lr = [];
    const evalNames = [...new Set(shown.flatMap((r) => [...r.series.keys()].filter((n) => n.startsWith("eval."))))].sort();
    if (!evalNames.includes(state.evalName)) state.evalName = evalNames.find((n) => n.endsWith(".loss")) || evalNames[0] || null;
    replace(evalSel, evalNames.map((n) => h("option", { value: n }, n)));
    evalSel.value = state.evalName || "";
    shown.forEach((run, i) => {
      const color = COLORS[i % COLORS.length], name = run.job.name || run.job.id, group = run.job.id;
      const p = run.points("train.loss", state.axis);
      loss.push({ ...p, name: `${name} (raw)`, legendgroup: group, showlegend: false, mode: "lines", opacity: 0.2, line: { color, width: 1 } });
      loss.push({ x: p.x, y: ema(p.y, state.smoothing), name, legendgroup: group, mode: "lines", line: { color, width: 2 } });
      if (state.evalName) evals.push({ ...run.points(state.evalName, state.axis), name, legendgroup: group, mode: "lines+markers", line: { color } });
      lr.push({ ...run.points("train.lr", state.axis), name, legendgroup: group, mode: "lines", line: { color } });
    });
    draw(charts.loss, loss, layout("training loss", x));
    draw(charts.eval, evals, layout(state.evalName || "evaluation", x));
    draw(charts.lr, lr, layout("learning rate", x));
  }

  api("/v1/jobs?limit=100", { signal }).then((page) => {
    recent = page.data;
    replace(options, recent.map((j) => h("option", { value: j.id }, `${j.name} (${j.status}, lr ${fmtNumber(j.spec?.stages?.[0]?.optimizer?.lr)})`)));
  }).catch(() => {});
  await loadAll();
  const timer = setInterval(() => { if (!document.hidden) refresh(); }, 4000);
  return () => clearInterval(timer);
}
