// DOM building and formatting. Text always goes in as text (never as HTML): job names,
// prompts and model outputs are anyone's.
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "value") el.value = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

export function replace(el, ...children) { el.replaceChildren(); append(el, children); return el; }

export function fmtNumber(x, digits = 4) {
  if (x === null || x === undefined || Number.isNaN(x)) return "—";
  if (typeof x !== "number") return String(x);
  if (Number.isInteger(x) && Math.abs(x) < 1e6) return x.toLocaleString("en-US");
  const a = Math.abs(x);
  if (a !== 0 && (a < 1e-3 || a >= 1e6)) return x.toExponential(2);
  return Number(x.toPrecision(digits)).toString();
}

// 1234567 -> "1.23M"
export function fmtSI(x) {
  if (x === null || x === undefined) return "—";
  const units = [[1e18, "E"], [1e15, "P"], [1e12, "T"], [1e9, "G"], [1e6, "M"], [1e3, "k"]];
  for (const [v, u] of units) if (Math.abs(x) >= v) return (x / v).toPrecision(3) + u;
  return String(Math.round(x * 100) / 100);
}

export function age(iso, now = Date.now()) {
  if (!iso) return "—";
  const s = Math.max(0, (now - Date.parse(iso)) / 1000);
  if (s < 60) return `${Math.floor(s)} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

export function duration(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  const s = Math.round(seconds);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

export function when(iso) { return iso ? new Date(iso).toLocaleString() : "—"; }

export function statusBadge(status) { return h("span", { class: `badge status-${status}` }, status); }

export function errorBox(err) {
  const box = h("div", { class: "error-box", role: "alert" }, err.message || String(err));
  if (err.details && err.details.length) {
    box.append(h("ul", {}, err.details.map((d) => h("li", {},
      d.loc ? [h("code", {}, d.loc), ": "] : null,
      d.line ? `line ${d.line}${d.column ? `, column ${d.column}` : ""}: ` : null,
      d.message || d.reason || JSON.stringify(d)))));
  }
  return box;
}

export function debounce(fn, ms) {
  let t = null;
  return (...args) => { clearTimeout(t); t = setTimeout(() => fn(...args), ms); };
}

// Random hex (crypto.getRandomValues works on plain http too, unlike randomUUID).
export function randomHex(bytes = 16) {
  return Array.from(crypto.getRandomValues(new Uint8Array(bytes)), (b) => b.toString(16).padStart(2, "0")).join("");
}

export function stageOf(job) {
  if (!job.stage) return "—";
  const n = (job.spec && job.spec.stages) ? job.spec.stages.length : "?";
  return `${job.stage.index + 1}/${n} ${job.stage.name}`;
}

export function progressBar(fraction) {
  const pct = Math.round((fraction || 0) * 1000) / 10;
  return h("div", { class: "progress", title: `${pct}%` },
    h("div", { class: "bar", style: `width:${Math.min(100, pct)}%` }), h("span", {}, `${pct}%`));
}
