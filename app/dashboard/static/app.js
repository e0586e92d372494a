// The dashboard: sign-in, then one view per path, drawn here in the browser. Paths:
// /dashboard/jobs (also /), /dashboard/jobs/{id}, /dashboard/compare?jobs=a,b,
// /dashboard/models, /dashboard/models/{id}, /dashboard/submit.
import { api, clearKey, getKey, setKey, whenUnauthorized } from "./api.js";
import { compareView } from "./compare.js";
import { jobView } from "./job.js";
import { jobsView } from "./jobs.js";
import { modelsView, modelView } from "./models.js";
import { submitView } from "./submit.js";
import { errorBox, h, replace } from "./util.js";

const ROUTES = [
  [/^\/(?:dashboard\/?|dashboard\/jobs\/?)?$/, jobsView, "jobs"],
  [/^\/dashboard\/jobs\/([^/]+)\/?$/, jobView, "jobs"],
  [/^\/dashboard\/compare\/?$/, compareView, "compare"],
  [/^\/dashboard\/models\/?$/, modelsView, "models"],
  [/^\/dashboard\/models\/([^/]+)\/?$/, modelView, "models"],
  [/^\/dashboard\/submit\/?$/, submitView, "submit"],
];

const signin = document.getElementById("signin");
const shell = document.getElementById("app");
const view = document.getElementById("view");
let cleanup = null;

export function navigate(url, { replaceState = false } = {}) {
  if (replaceState) history.replaceState(null, "", url);
  else history.pushState(null, "", url);
  render();
}

function render() {
  if (cleanup) { cleanup(); cleanup = null; }
  if (!getKey()) return showSignin();
  signin.hidden = true;
  shell.hidden = false;
  const path = location.pathname;
  const query = new URLSearchParams(location.search);
  for (const [re, mount, nav] of ROUTES) {
    const m = re.exec(path);
    if (!m) continue;
    for (const a of document.querySelectorAll("nav a[data-nav]")) a.classList.toggle("active", a.dataset.nav === nav);
    const controller = new AbortController();
    replace(view);
    const params = m.slice(1).map((p) => { try { return decodeURIComponent(p); } catch { return p; } });
    let own = null;
    Promise.resolve(mount(view, { params, query, navigate, signal: controller.signal }))
      .then((fn) => { own = fn; if (controller.signal.aborted && fn) fn(); })
      .catch((err) => { if (!controller.signal.aborted) view.append(errorBox(err)); });
    cleanup = () => { controller.abort(); if (own) own(); };
    return;
  }
  replace(view, h("h2", {}, "No such page"), h("p", {}, h("a", { href: "/dashboard/jobs", "data-link": true }, "Jobs")));
}

function showSignin(message) {
  shell.hidden = true;
  signin.hidden = false;
  const error = document.getElementById("signin-error");
  error.textContent = message || "";
  document.getElementById("signin-key").focus();
}

document.getElementById("signin-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const input = document.getElementById("signin-key");
  const key = input.value.trim();
  if (!key) return;
  setKey(key);
  try {
    await api("/v1/jobs?limit=1");
  } catch (err) {
    clearKey();
    showSignin(err.status === 401 ? "That key was refused: check it, or make one with `stagecraft keys create`."
      : `Signing in failed: ${err.message}`);
    return;
  }
  input.value = "";
  render();
});

document.getElementById("signout").addEventListener("click", () => {
  clearKey();
  if (cleanup) { cleanup(); cleanup = null; }
  history.pushState(null, "", "/");
  showSignin();
});

whenUnauthorized(() => {
  clearKey();
  if (cleanup) { cleanup(); cleanup = null; }
  showSignin("The key was refused (revoked?): sign in again.");
});

// Links inside the dashboard change the view without reloading the page.
document.addEventListener("click", (e) => {
  const a = e.target.closest("a[href]");
  if (!a || e.defaultPrevented || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || a.target) return;
  const url = new URL(a.href, location.href);
  if (url.origin !== location.origin || !(url.pathname === "/" || url.pathname.startsWith("/dashboard"))) return;
  if (a.hasAttribute("download")) return;
  e.preventDefault();
  navigate(url.pathname + url.search);
});

window.addEventListener("popstate", render);
render();
