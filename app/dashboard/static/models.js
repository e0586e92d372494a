// Models: the list, and a model's page with a box to chat, generate, translate, answer or
// summarize with it (or one of its adapters), streamed where the API streams, and exports.
import { api, download, postStream } from "./api.js";
import { age, errorBox, fmtSI, h, replace } from "./util.js";

async function allModels(signal, pages = 5) {
  const out = [];
  let after = null;
  for (let i = 0; i < pages; i++) {
    const page = await api(`/v1/models?limit=100${after ? "&after=" + after : ""}`, { signal });
    out.push(...page.data);
    if (!page.has_more) break;
    after = page.next_cursor;
  }
  return out;
}

export async function modelsView(root, { signal }) {
  const models = await allModels(signal);
  replace(root, h("div", { class: "view-head" }, h("h2", {}, "Models")),
    models.length ? h("table", { id: "models-table" },
      h("thead", {}, h("tr", {}, ["name", "id", "source", "base", "parameters", "steps", "age"].map((c) => h("th", {}, c)))),
      h("tbody", {}, models.map((m) => h("tr", {},
        h("td", {}, h("a", { href: `/dashboard/models/${m.id}`, "data-link": true }, m.name)),
        h("td", { class: "mono small" }, m.id), h("td", {}, m.source),
        h("td", { class: "mono small" }, m.base || "—"), h("td", { class: "num" }, fmtSI(m.parameters)),
        h("td", { class: "num" }, m.steps ?? "—"), h("td", {}, age(m.created_at))))))
      : h("p", { class: "muted" }, "No models yet: a job that succeeds makes one."));
}

const MODES = {
  chat: "Chat", generate: "Generate", translate: "Translate", answer: "Answer", summarize: "Summarize",
};

export async function modelView(root, { params, signal }) {
  const id = params[0];
  let model;
  try {
    model = await api(`/v1/models/${encodeURIComponent(id)}`, { signal });
  } catch (err) {
    if (err.status === 404) {
      replace(root, h("h2", {}, "No such model"), h("p", { class: "muted", id: "not-found" }, `There is no model ${id} for this key.`));
      return null;
    }
    throw err;
  }
  const isCkpt = model.object === "checkpoint";
  const adapters = isCkpt || model.base ? [] : (await allModels(signal)).filter((m) => m.base === model.id);
  const target = h("select", { id: "model-target", "aria-label": "serve" },
    h("option", { value: model.id }, isCkpt ? `checkpoint ${model.id}` : `${model.name} (the model)`),
    adapters.map((a) => h("option", { value: a.id }, `${a.name} (adapter)`)));
  const state = { mode: "chat", messages: [], controller: null };
  const tabs = h("div", { class: "tabs", role: "tablist" });
  const form = h("form", { class: "model-box", id: "model-form" });
  const output = h("div", { id: "model-output", class: "output", "aria-live": "polite" });
  const info = h("div", { class: "muted small", id: "model-info" });
  const maxTokens = h("input", { id: "max-tokens", type: "number", min: "1", max: "2048", value: "64", "aria-label": "max new tokens" });
  const temperature = h("input", { id: "temperature", type: "number", min: "0", max: "2", step: "0.1", value: "0", "aria-label": "temperature" });
  const exportMsg = h("span", { class: "muted small" });
  const exportBtn = (archive) => h("button", { type: "button", id: `export-${archive.replace(".", "")}`, onclick: async () => {
    exportMsg.textContent = "exporting…";
    try { exportMsg.textContent = `saved ${await download(`/v1/models/${target.value}/export?format=hf&archive=${archive}`, `${target.value}.${archive}`)}`; }
    catch (err) { exportMsg.textContent = err.message; }
  } }, `Export (Hugging Face, .${archive})`);

  replace(root,
    h("div", { class: "view-head" }, h("h2", { id: "model-name" }, isCkpt ? model.id : model.name), h("span", { class: "spacer" }),
      exportBtn("tar.gz"), exportBtn("zip"), exportMsg),
    h("div", { class: "facts" },
      h("span", { class: "mono" }, model.id),
      isCkpt ? h("span", {}, `step ${model.step} of `, h("a", { href: `/dashboard/jobs/${model.job_id}`, "data-link": true }, model.job_id))
        : [h("span", {}, `${model.source}`), h("span", {}, `${fmtSI(model.parameters)} parameters`),
          model.steps ? h("span", {}, `${model.steps} steps`) : null,
          model.job_id ? h("a", { href: `/dashboard/jobs/${model.job_id}`, "data-link": true }, "its job") : null,
          model.base ? h("span", {}, "adapter of ", h("a", { href: `/dashboard/models/${model.base}`, "data-link": true }, model.base)) : null,
          model.config ? h("span", { class: "small" }, Object.entries(model.config).map(([k, v]) => `${k} ${v}`).join(" · ")) : null]),
    h("section", {}, h("div", { class: "toolbar" }, h("h3", {}, "Try it"), h("span", { class: "spacer" }), target,
      h("label", {}, "max tokens ", maxTokens), h("label", {}, "temperature ", temperature)), tabs, form, output, info));

  function sampling() {
    return { temperature: Number(temperature.value) || 0, ...(state.mode === "chat" ? { max_tokens: Number(maxTokens.value) || 64 }
      : { max_new_tokens: Number(maxTokens.value) || 64 }) };
  }

  function field(name, label, { area = false, value = "" } = {}) {
    const input = area ? h("textarea", { id: `in-${name}`, name, rows: 3, value }) : h("input", { id: `in-${name}`, name, value });
    return h("label", { class: "field" }, label, input);
  }

  function drawChat() {
    replace(output, state.messages.map((m) => h("div", { class: `msg msg-${m.role}` }, h("strong", {}, m.role), h("div", { class: "pre" }, m.content))));
  }

  function setMode(mode) {
    state.mode = mode;
    replace(tabs, Object.entries(MODES).map(([m, label]) => h("button", { type: "button", role: "tab", "aria-selected": String(m === mode),
      class: m === mode ? "tab active" : "tab", "data-mode": m, onclick: () => setMode(m) }, label)));
    const submit = h("button", { type: "submit", class: "primary", id: "model-send" }, mode === "chat" ? "Send" : "Run");
    const stop = h("button", { type: "button", onclick: () => state.controller?.abort() }, "Stop");
    const fields = {
      chat: [field("message", "Message", { area: true })],
      generate: [field("prompt", "Prompt", { area: true })],
      translate: [field("text", "Text", { area: true }), field("source_lang", "from", { value: "en" }), field("target_lang", "to", { value: "fr" })],
      answer: [field("question", "Question"), field("context", "Context", { area: true })],
      summarize: [field("text", "Text", { area: true })],
    }[mode];
    const extra = mode === "chat" ? h("button", { type: "button", onclick: () => { state.messages = []; drawChat(); } }, "New conversation") : null;
    replace(form, fields, h("div", { class: "row" }, submit, stop, extra));
    replace(output); replace(info);
    if (mode === "chat") drawChat();
  }

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const values = Object.fromEntries(new FormData(form).entries());
    state.controller?.abort();
    const controller = state.controller = new AbortController();
    signal.addEventListener("abort", () => controller.abort(), { once: true });
    const model = target.value;
    replace(info, "…");
    try {
      if (state.mode === "chat") await chat(model, values.message, controller.signal);
      else if (state.mode === "generate") await generate(model, values.prompt, controller.signal);
      else await task(model, values, controller.signal);
    } catch (err) {
      if (!controller.signal.aborted) replace(info, errorBox(err));
      else replace(info, "stopped");
    }
  });

  async function generate(model, prompt, sig) {
    const text = h("span", { class: "generated" });
    replace(output, h("div", { class: "pre" }, h("span", { class: "prompt" }, prompt), text));
    await postStream(`/v1/models/${model}/generate`, { prompt, stream: true, ...sampling() }, (msg) => {
      const data = JSON.parse(msg.data);
      if (msg.event === "token") text.append(data.text);
      else if (msg.event === "done") replace(info, `${data.finish_reason} · ${data.usage.completion_tokens} tokens`);
      else if (msg.event === "error") throw Object.assign(new Error(data.error.message), data.error);
    }, sig);
  }

  async function chat(model, message, sig) {
    if (!message || !message.trim()) return;
    state.messages.push({ role: "user", content: message });
    const reply = { role: "assistant", content: "" };
    state.messages.push(reply);
    form.querySelector("textarea").value = "";
    drawChat();
    const body = { model, messages: state.messages.slice(0, -1), stream: true, ...sampling() };
    let finish = null;
    await postStream("/v1/chat/completions", body, (msg) => {
      if (msg.data === "[DONE]") return;
      const data = JSON.parse(msg.data);
      if (data.error) throw Object.assign(new Error(data.error.message), data.error);
      const choice = (data.choices || [])[0];
      if (!choice) return;
      if (choice.delta && choice.delta.content) { reply.content += choice.delta.content; drawChat(); }
      if (choice.finish_reason) finish = choice.finish_reason;
    }, sig);
    replace(info, finish ? `finish: ${finish}` : "");
  }

  async function task(model, values, sig) {
    const body = { ...values, ...sampling() };
    const answer = await api(`/v1/models/${model}/${state.mode}`, { method: "POST", body, signal: sig });
    const key = { translate: "translation", answer: "answer", summarize: "summary" }[state.mode];
    replace(output, h("div", { class: "pre" }, answer[key]));
    replace(info, `${answer.finish_reason} · ${answer.usage.completion_tokens} tokens`);
  }

  setMode("chat");
  return () => state.controller?.abort();
}

