// The job list: status, stage, progress, age; a status filter (the API's `status`), a search
// by name or id, refreshed every few seconds; tick jobs to compare them.
import { api } from "./api.js";
import { age, errorBox, h, progressBar, replace, stageOf, statusBadge } from "./util.js";

const STATUSES = ["", "queued", "running", "cancelling", "succeeded", "failed", "cancelled"];
const REFRESH_MS = 3000;

export async function jobsView(root, { query, navigate, signal }) {
  const state = { status: query.get("status") || "", search: query.get("q") || "", jobs: [], more: false,
    pages: 1, selected: new Set(), found: null };
  const statusSel = h("select", { id: "job-status", "aria-label": "status",
    onchange: () => { state.status = statusSel.value; state.pages = 1; sync(); load(); } },
  STATUSES.map((s) => h("option", { value: s }, s || "any status")));
  statusSel.value = state.status;
  const search = h("input", { id: "job-search", type: "search", placeholder: "search by name or id", value: state.search,
    oninput: () => { state.search = search.value.trim(); sync(); draw(); lookup(); } });
  const auto = h("input", { type: "checkbox", id: "job-auto", checked: true });
  const compare = h("button", { type: "button", id: "compare-selected", disabled: true,
    onclick: () => navigate(`/dashboard/compare?jobs=${[...state.selected].join(",")}`) }, "Compare selected");
  const body = h("tbody");
  const more = h("button", { type: "button", hidden: true, onclick: () => { state.pages++; load(); } }, "Load more");
  const problem = h("div");
  replace(root,
    h("div", { class: "view-head" }, h("h2", {}, "Jobs"), h("span", { class: "spacer" }),
      h("a", { href: "/dashboard/submit", "data-link": true, class: "button primary" }, "Submit a job")),
    h("div", { class: "toolbar" }, statusSel, search, h("label", {}, auto, " auto-refresh"), compare),
    problem,
    h("table", { class: "jobs", id: "jobs-table" },
      h("thead", {}, h("tr", {}, ["", "name", "id", "status", "stage", "progress", "steps", "age"].map((c) => h("th", {}, c)))),
      body),
    more);

  function sync() {
    const q = new URLSearchParams();
    if (state.status) q.set("status", state.status);
    if (state.search) q.set("q", state.search);
    history.replaceState(null, "", `/dashboard/jobs${q.toString() ? "?" + q : ""}`);
  }

  async function load() {
    try {
      const jobs = [];
      let after = null, hasMore = false;
      for (let i = 0; i < state.pages; i++) {
        const q = new URLSearchParams({ limit: "100" });
        if (state.status) q.set("status", state.status);
        if (after) q.set("after", after);
        const page = await api(`/v1/jobs?${q}`, { signal });
        jobs.push(...page.data);
        hasMore = page.has_more;
        after = page.next_cursor;
        if (!hasMore) break;
      }
      state.jobs = jobs;
      state.more = hasMore;
      replace(problem);
      draw();
    } catch (err) {
      if (!signal.aborted) replace(problem, errorBox(err));
    }
  }

  // A search that is a whole job id finds the job even beyond the loaded pages.
  async function lookup() {
    state.found = null;
    if (!/^job_[0-9a-f]+$/.test(state.search) || state.jobs.some((j) => j.id === state.search)) return;
    try { state.found = await api(`/v1/jobs/${state.search}`, { signal }); } catch { state.found = null; }
    draw();
  }

  function draw() {
    const q = state.search.toLowerCase();
    let rows = state.jobs.filter((j) => !q || j.id.toLowerCase().includes(q) || (j.name || "").toLowerCase().includes(q));
    if (state.found && !rows.some((j) => j.id === state.found.id)) rows = [state.found, ...rows];
    const now = Date.now();
    replace(body, rows.length ? rows.map((j) => h("tr", { "data-job": j.id, "data-status": j.status },
      h("td", {}, h("input", { type: "checkbox", "aria-label": `select ${j.id}`, checked: state.selected.has(j.id),
        onchange: (e) => { if (e.target.checked) state.selected.add(j.id); else state.selected.delete(j.id); tick(); } })),
      h("td", {}, h("a", { href: `/dashboard/jobs/${j.id}`, "data-link": true }, j.name || "(unnamed)")),
      h("td", { class: "mono small" }, j.id),
      h("td", {}, statusBadge(j.status), j.waiting ? h("div", { class: "muted small" }, j.waiting) : null),
      h("td", {}, stageOf(j)),
      h("td", {}, progressBar(j.progress)),
      h("td", { class: "num" }, `${j.step}/${j.total_steps}`),
      h("td", { title: j.created_at }, age(j.created_at, now)),
    )) : h("tr", {}, h("td", { colspan: 8, class: "muted" },
      state.jobs.length ? "No job matches the search." : "No jobs yet: submit one.")));
    more.hidden = !state.more;
  }

  function tick() {
    compare.disabled = state.selected.size < 2;
    compare.textContent = `Compare selected (${state.selected.size})`;
  }

  tick();
  await load();
  lookup();
  const timer = setInterval(() => {
    if (auto.checked && !document.hidden) load();
  }, REFRESH_MS);
  return () => clearInterval(timer);
}
