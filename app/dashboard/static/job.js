// A job's page: live curves (history from /metrics and the events pages, then the SSE stream
// followed with fetch()), the stage timeline, checkpoints, evaluation, events, cancel.
import { ACTIVE, FINAL, allEvents, api, followEvents } from "./api.js";
import { COLORS, Run, X_TITLES, draw, ema, layout, throttled } from "./charts.js";
import { checkpoints, evaluation, eventsList, timeline } from "./panels.js";
import { age, debounce, errorBox, h, progressBar, replace, stageOf, statusBadge, when } from "./util.js";

export function axisControls(state, onChange) {
  const axis = h("select", { id: "x-axis", "aria-label": "x axis",
    onchange: () => { state.axis = axis.value; onChange(); } },
  Object.entries(X_TITLES).map(([v, t]) => h("option", { value: v }, `x: ${t}`)));
  axis.value = state.axis;
  const value = h("output", {}, state.smoothing.toFixed(2));
  const smooth = h("input", { id: "smoothing", type: "range", min: "0", max: "0.99", step: "0.01", value: String(state.smoothing),
    "aria-label": "loss smoothing", oninput: () => { state.smoothing = Number(smooth.value); value.textContent = smooth.value; onChange(); } });
  return [axis, h("label", { class: "smooth" }, "loss smoothing (EMA) ", smooth, " ", value)];
}

export async function jobView(root, { params, signal }) {
  const id = params[0];
  let job;
  try {
    job = await api(`/v1/jobs/${encodeURIComponent(id)}`, { signal });
  } catch (err) {
    if (err.status === 404) {
      replace(root, h("h2", {}, "No such job"), h("p", { class: "muted", id: "not-found" }, `There is no job ${id} for this key.`));
      return null;
    }
    throw err;
  }
  const run = new Run(job);
  const state = { axis: "step", smoothing: 0.6, evalMetric: null, withSteps: false, events: [], conn: "loading" };
  const head = h("div", { class: "job-head" });
  const line = h("div", { id: "timeline", class: "timeline" });
  const live = h("span", { id: "live", class: "live" });
  const evalSel = h("select", { id: "eval-metric", "aria-label": "evaluation metric",
    onchange: () => { state.evalMetric = evalSel.value; redraw(); } });
  const charts = Object.fromEntries(["loss", "eval", "lr", "tps"].map((k) => [k, h("div", { id: `chart-${k}`, class: "chart" })]));
  const ckpts = h("div"), evals = h("div"), evList = h("div");
  const steps = h("input", { type: "checkbox", id: "show-steps",
    onchange: () => { state.withSteps = steps.checked; drawEvents(); } });
  replace(root, head,
    h("section", {}, h("h3", {}, "Stages"), line),
    h("section", {}, h("div", { class: "toolbar" }, h("h3", {}, "Curves"), live, h("span", { class: "spacer" }),
      axisControls(state, () => redraw()), evalSel),
    h("div", { class: "charts" }, Object.values(charts))),
    h("section", {}, h("h3", {}, "Checkpoints"), ckpts),
    h("section", {}, h("h3", {}, "Evaluation"), evals),
    h("section", {}, h("div", { class: "toolbar" }, h("h3", {}, "Events"), h("label", {}, steps, " train.step events")), evList));

  // The header is built once; drawHead() updates what changes.
  const cancel = h("button", { type: "button", id: "cancel", class: "danger", onclick: cancelJob }, "Cancel job");
  const badge = h("span"), facts = h("div", { class: "facts" }), notes = h("div");
  replace(head,
    h("div", { class: "view-head" }, h("h2", { id: "job-name" }, job.name || job.id), badge, h("span", { class: "spacer" }),
      h("a", { href: `/dashboard/compare?jobs=${job.id}`, "data-link": true, class: "button" }, "Compare with…"), cancel),
    facts, notes);
  let shown = "";
  function drawHead() {
    const key = JSON.stringify([job.status, job.step, job.stage, job.model_id, job.waiting, job.error, job.finished_at]);
    if (key === shown) return;
    shown = key;
    cancel.hidden = !ACTIVE.has(job.status) || job.status === "cancelling";
    replace(badge, statusBadge(job.status));
    replace(facts,
      h("span", { class: "mono" }, job.id),
      h("span", {}, "stage ", h("strong", { id: "job-stage" }, stageOf(job))),
      h("span", {}, "step ", h("strong", { id: "job-step" }, `${job.step}/${job.total_steps}`)),
      progressBar(job.progress),
      h("span", { title: job.created_at }, "created ", age(job.created_at)),
      job.started_at ? h("span", {}, "started ", when(job.started_at)) : null,
      job.finished_at ? h("span", {}, "finished ", when(job.finished_at)) : null,
      job.attempt > 1 ? h("span", {}, `attempt ${job.attempt}`) : null,
      job.model_id ? h("a", { href: `/dashboard/models/${job.model_id}`, "data-link": true, id: "model-link" }, "open the model") : null);
    replace(notes, job.waiting ? h("p", { class: "muted" }, job.waiting) : null,
      job.error ? h("div", { class: "error-box" }, `${job.error.code}: ${job.error.message}`) : null);
  }

  async function cancelJob() {
    if (!confirm(`Cancel ${job.name || job.id}? A running job stops at its next step and keeps a checkpoint.`)) return;
    try {
      job = await api(`/v1/jobs/${job.id}/cancel`, { method: "POST", signal });
      run.job = job;
      drawHead(); timeline(line, run, job);
    } catch (err) {
      notes.append(errorBox(err));
    }
  }

  function redraw() {
    const x = X_TITLES[state.axis];
    const marks = run.stageMarks(state.axis);
    const loss = run.points("train.loss", state.axis);
    draw(charts.loss, [
      { ...loss, name: "raw", mode: "lines", line: { color: COLORS[0], width: 1 }, opacity: 0.25 },
      { x: loss.x, y: ema(loss.y, state.smoothing), name: `EMA ${state.smoothing.toFixed(2)}`, mode: "lines", line: { color: COLORS[0], width: 2 } },
    ], layout("training loss", x, marks));
    const metrics = run.evalMetrics();
    const names = Object.keys(metrics).sort((a, b) => (a === "loss" ? -1 : b === "loss" ? 1 : a.localeCompare(b)));
    if (!state.evalMetric || !metrics[state.evalMetric]) state.evalMetric = names[0] || null;
    if (evalSel.options.length !== names.length || [...evalSel.options].some((o, i) => o.value !== names[i])) {
      replace(evalSel, names.map((n) => h("option", { value: n }, `eval: ${n}`)));
    }
    evalSel.value = state.evalMetric || "";
    const evalTraces = (metrics[state.evalMetric] || []).map((data, i) => ({
      ...run.points(`eval.${data}.${state.evalMetric}`, state.axis), name: data, mode: "lines+markers", line: { color: COLORS[(i + 1) % COLORS.length] } }));
    draw(charts.eval, evalTraces, layout(`evaluation: ${state.evalMetric || "none yet"}`, x, marks));
    draw(charts.lr, [{ ...run.points("train.lr", state.axis), name: "learning rate", mode: "lines", line: { color: COLORS[2] } }],
      layout("learning rate", x, { ...marks, showlegend: false }));
    draw(charts.tps, [{ ...run.points("train.tokens_per_s", state.axis), name: "tokens/s", mode: "lines", line: { color: COLORS[3] } }],
      layout("throughput (tokens/s)", x, { ...marks, showlegend: false }));
  }

  const drawEvents = () => eventsList(evList, state.events, state.withSteps);
  const refreshCheckpoints = debounce(async () => {
    try { checkpoints(ckpts, await api(`/v1/jobs/${job.id}/checkpoints`, { signal })); } catch { /* next time */ }
  }, 500);
  const refreshEvaluation = debounce(async () => {
    try { evaluation(evals, await api(`/v1/jobs/${job.id}/evaluation`, { signal })); } catch { /* next time */ }
  }, 800);
  const refreshJob = async () => {
    try { job = await api(`/v1/jobs/${job.id}`, { signal }); run.job = job; drawHead(); timeline(line, run, job); } catch { /* next time */ }
  };
  const soon = throttled(() => {
    if (signal.aborted) return; // the page was left
    redraw(); drawEvents(); drawHead(); timeline(line, run, job);
  }, 500);

  function onEvent(e) {
    state.events.push(e);
    run.addEvent(e);
    if (e.stage) job.stage = e.stage;
    if (e.type === "train.step" || e.type === "stage.started") {
      job.step = Math.max(job.step, e.step);
      job.progress = job.total_steps ? job.step / job.total_steps : 0;
    }
    if (e.type === "job.started" || e.type === "train.step") job.status = job.status === "queued" ? "running" : job.status;
    if (e.type === "checkpoint.saved") refreshCheckpoints();
    if (e.type === "eval") refreshEvaluation();
    // The final event is listed at once: the stream is marked ended right after this returns.
    if (FINAL.has(e.type)) { drawEvents(); refreshJob(); refreshCheckpoints(); refreshEvaluation(); }
    soon();
  }

  const [metrics, ckptList, report, history] = await Promise.all([
    api(`/v1/jobs/${job.id}/metrics`, { signal }), api(`/v1/jobs/${job.id}/checkpoints`, { signal }),
    api(`/v1/jobs/${job.id}/evaluation`, { signal }), allEvents(job.id, 0, signal)]);
  run.loadMetrics(metrics);
  for (const e of history) { state.events.push(e); run.addEvent(e); }
  drawHead(); timeline(line, run, job); checkpoints(ckpts, ckptList); evaluation(evals, report); drawEvents();
  await redraw();

  const last = history.length ? history[history.length - 1] : null;
  let follower = null;
  const setLive = (s, err) => {
    state.conn = s;
    live.dataset.state = s;
    live.textContent = { live: "● live", reconnecting: "● reconnecting…", ended: "ended", error: `stream: ${err?.message}` }[s] || s;
  };
  if (ACTIVE.has(job.status) || (last && !FINAL.has(last.type))) {
    follower = followEvents(job.id, last ? last.seq : 0, { onEvent, onState: setLive, signal });
  } else setLive("ended");
  const poll = setInterval(() => { if (ACTIVE.has(job.status) && !document.hidden) refreshJob(); }, 5000);
  window.stagecraftDashboard = { run, follower, events: state.events, job: () => job };
  return () => { clearInterval(poll); window.stagecraftDashboard = null; };
}
