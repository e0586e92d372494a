// Submit a job: paste or upload a spec (JSON, or YAML converted by the service's
// /dashboard/yaml), see every validation error with its field path and the estimates
// (POST /v1/jobs/validate), then submit (POST /v1/jobs).
import { api } from "./api.js";
import { debounce, errorBox, fmtNumber, fmtSI, h, randomHex, replace } from "./util.js";

const DRAFT = "stagecraft.draft";

async function specOf(text) {
  try { return JSON.parse(text); } catch { /* YAML, then */ }
  const r = await api("/dashboard/yaml", { method: "POST", body: text, headers: { "Content-Type": "application/yaml" } });
  return r.spec;
}

export async function submitView(root, { navigate, signal }) {
  const area = h("textarea", { id: "spec-text", rows: 24, spellcheck: "false", class: "mono",
    placeholder: "name: my-job\nmodel: {arch: gpt, n_layer: 2, ...}\n... (YAML or JSON: docs/spec.md)" });
  area.value = sessionStorage.getItem(DRAFT) || "";
  const file = h("input", { type: "file", id: "spec-file", accept: ".yaml,.yml,.json,application/json,text/yaml" });
  const result = h("div", { id: "validation" });
  const submit = h("button", { type: "button", class: "primary", id: "submit-job", disabled: true }, "Submit job");
  const datasets = h("div", { class: "small" });
  const state = { spec: null, text: null, key: randomHex() };

  replace(root, h("div", { class: "view-head" }, h("h2", {}, "Submit a job")),
    h("div", { class: "split" },
      h("div", {}, h("div", { class: "toolbar" }, h("label", {}, "Upload a spec file ", file),
        h("button", { type: "button", id: "validate", onclick: () => validate() }, "Validate"), submit), area),
      h("aside", {}, h("h3", {}, "Check"), result, h("h3", {}, "Your datasets"), datasets)));

  file.addEventListener("change", async () => {
    if (!file.files.length) return;
    area.value = await file.files[0].text();
    validate();
  });
  const later = debounce(() => validate(), 700);
  area.addEventListener("input", () => { sessionStorage.setItem(DRAFT, area.value); submit.disabled = true; later(); });

  async function validate() {
    const text = area.value;
    if (!text.trim()) { replace(result, h("p", { class: "muted" }, "Paste a spec, or upload one.")); return; }
    if (text !== state.text) state.key = randomHex(); // a new spec, a new Idempotency-Key
    state.text = text;
    submit.disabled = true;
    replace(result, h("p", { class: "muted" }, "checking…"));
    let spec;
    try { spec = await specOf(text); } catch (err) {
      if (text === area.value) replace(result, h("p", {}, "The text is neither JSON nor YAML:"), errorBox(err));
      return;
    }
    try {
      const ok = await api("/v1/jobs/validate", { method: "POST", body: spec, signal });
      if (text !== area.value) return;
      state.spec = spec;
      const e = ok.estimates;
      replace(result, h("p", { class: "valid", id: "spec-valid" }, "✓ The spec is valid."),
        h("table", { class: "compact", id: "estimates" }, h("tbody", {},
          h("tr", {}, h("th", {}, "parameters"), h("td", { class: "num" }, fmtSI(e.parameters))),
          h("tr", {}, h("th", {}, "tokens"), h("td", { class: "num" }, fmtSI(e.tokens))),
          h("tr", {}, h("th", {}, "steps"), h("td", { class: "num" }, fmtNumber(e.total_steps))),
          h("tr", {}, h("th", {}, "FLOPs"), h("td", { class: "num" }, e.flops.toExponential(2))))));
      submit.disabled = false;
    } catch (err) {
      if (text !== area.value || signal.aborted) return;
      const details = err.details || [];
      replace(result, h("p", { class: "error", id: "spec-invalid" }, `${details.length || 1} problem(s):`),
        details.length ? h("ul", { class: "problems" }, details.map((d) => h("li", {},
          d.loc ? h("code", {}, d.loc) : null, d.loc ? ": " : null, d.message || JSON.stringify(d)))) : errorBox(err));
    }
  }

  submit.addEventListener("click", async () => {
    if (!state.spec) return;
    submit.disabled = true;
    try {
      const job = await api("/v1/jobs", { method: "POST", body: state.spec, headers: { "Idempotency-Key": state.key } });
      sessionStorage.removeItem(DRAFT);
      navigate(`/dashboard/jobs/${job.id}`);
    } catch (err) {
      submit.disabled = false;
      result.append(errorBox(err));
    }
  });

  api("/v1/datasets?limit=100", { signal }).then((page) => replace(datasets, page.data.length
    ? h("table", { class: "compact" }, h("tbody", {}, page.data.map((d) => h("tr", {},
      h("td", {}, d.name), h("td", { class: "mono" }, d.id), h("td", {}, d.kind)))))
    : h("p", { class: "muted" }, "None yet: upload with `stagecraft datasets upload FILE` or POST /v1/datasets."))).catch(() => {});
  if (area.value.trim()) validate();
}
