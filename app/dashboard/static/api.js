// Every call the dashboard makes goes through here: the /v1 API with the signed-in key as
// `Authorization: Bearer`. The key lives in this tab's sessionStorage only.
const KEY = "stagecraft.key";
export const FINAL = new Set(["job.succeeded", "job.failed", "job.cancelled"]);
export const ACTIVE = new Set(["queued", "running", "cancelling"]);

export function getKey() { return sessionStorage.getItem(KEY); }
export function setKey(key) { sessionStorage.setItem(KEY, key); }
export function clearKey() { sessionStorage.removeItem(KEY); }

// An error answer of the API: {status, code, message, details} (docs/api.md, "Errors").
export class ApiError extends Error {
  constructor(status, body) {
    const err = (body && body.error) || {};
    super(err.message || `HTTP ${status}`);
    this.status = status;
    this.code = err.code || "http_" + status;
    this.details = err.details || [];
  }
}

let onUnauthorized = () => {};
export function whenUnauthorized(fn) { onUnauthorized = fn; }

function headers(extra) {
  return { Authorization: `Bearer ${getKey() || ""}`, ...extra };
}

async function failure(r) {
  let body = null;
  try { body = await r.json(); } catch { /* not JSON */ }
  const err = new ApiError(r.status, body);
  if (r.status === 401) onUnauthorized(err);
  return err;
}

// A JSON call: api("/v1/jobs"), api("/v1/jobs", {method: "POST", body: {...}}).
export async function api(path, { method = "GET", body, headers: extra, signal, raw } = {}) {
  const init = { method, headers: headers(extra), signal };
  if (body !== undefined) {
    if (typeof body === "string") init.body = body;
    else { init.body = JSON.stringify(body); init.headers["Content-Type"] = "application/json"; }
  }
  const r = await fetch(path, init);
  if (!r.ok) throw await failure(r);
  if (raw) return r;
  return r.status === 204 ? null : r.json();
}

// Server-Sent Events, parsed by hand: EventSource cannot send an Authorization header, so
// the dashboard reads the stream with fetch() and a ReadableStream reader.
export class SseParser {
  constructor() { this.buf = ""; this.reset(); }
  reset() { this.event = ""; this.data = []; this.id = null; }
  // Feed decoded text; returns the complete messages: {event, data, id, retry}.
  push(text) {
    this.buf += text;
    const out = [];
    let nl;
    while ((nl = this.buf.search(/\r\n|\r|\n/)) >= 0) {
      if (this.buf[nl] === "\r" && nl === this.buf.length - 1) break; // a \r\n may be split
      const line = this.buf.slice(0, nl);
      this.buf = this.buf.slice(nl + (this.buf.startsWith("\r\n", nl) ? 2 : 1));
      if (line === "") {
        if (this.data.length || this.event || this.id !== null) {
          out.push({ event: this.event || "message", data: this.data.join("\n"), id: this.id });
        }
        this.reset();
        continue;
      }
      if (line.startsWith(":")) continue; // a comment: the keep-alive
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "data") this.data.push(value);
      else if (field === "event") this.event = value;
      else if (field === "id") this.id = value;
      else if (field === "retry" && /^\d+$/.test(value)) out.push({ retry: Number(value) });
    }
    return out;
  }
}

function sleep(ms, signal) {
  return new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => { clearTimeout(t); resolve(); }, { once: true });
  });
}

// POST a JSON body and read the SSE answer: onMessage({event, data}) per message.
export async function postStream(path, body, onMessage, signal) {
  const r = await fetch(path, {
    method: "POST", signal,
    headers: headers({ "Content-Type": "application/json", Accept: "text/event-stream" }),
    body: JSON.stringify(body),
  });
  if (!r.ok) throw await failure(r);
  const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
  const parser = new SseParser();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    for (const msg of parser.push(value)) if (!("retry" in msg)) onMessage(msg);
  }
}

// Follow a job's events from `after` (a seq) for as long as `signal` allows: each event once,
// in order, to onEvent. A dropped connection is resumed with Last-Event-ID (and `after`), so
// nothing is lost or repeated; the server's `retry:` sets the wait. Ends after a final event,
// or when the job has ended and nothing more comes. `follower.drop()` cuts the current
// connection (as a network failure would).
export function followEvents(jobId, after, { onEvent, onState = () => {}, signal }) {
  const follower = { last: after, connections: 0, conn: null };
  follower.drop = () => follower.conn?.abort();
  follower.done = (async () => {
    let retry = 1000;
    while (!signal.aborted) {
      const conn = new AbortController();
      follower.conn = conn;
      const stop = () => conn.abort();
      signal.addEventListener("abort", stop, { once: true });
      let received = 0;
      try {
        const r = await fetch(`/v1/jobs/${encodeURIComponent(jobId)}/events?after=${follower.last}`, {
          headers: headers({ Accept: "text/event-stream", "Last-Event-ID": String(follower.last) }),
          signal: conn.signal,
        });
        if (!r.ok) {
          const err = await failure(r);
          if (r.status < 500 && r.status !== 429) { onState("error", err); return; }
          throw err;
        }
        follower.connections += 1;
        onState("live");
        const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
        const parser = new SseParser();
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          for (const msg of parser.push(value)) {
            if ("retry" in msg) { retry = msg.retry; continue; }
            const event = JSON.parse(msg.data);
            if (event.seq <= follower.last) continue; // never twice
            follower.last = event.seq;
            received += 1;
            onEvent(event);
            if (FINAL.has(event.type)) { onState("ended"); return; }
          }
        }
        if (received === 0) { // closed at once: the job may have ended before `after`
          const job = await api(`/v1/jobs/${encodeURIComponent(jobId)}`);
          if (!ACTIVE.has(job.status)) { onState("ended"); return; }
        }
      } catch (err) {
        if (signal.aborted) return;
        if (err instanceof ApiError && err.status < 500 && err.status !== 429) { onState("error", err); return; }
      } finally {
        signal.removeEventListener("abort", stop);
      }
      if (signal.aborted) return;
      onState("reconnecting");
      await sleep(retry, signal);
    }
  })();
  return follower;
}

// Every event of a job from `after` on, by JSON pages (1000 a page), oldest first.
export async function allEvents(jobId, after = 0, signal) {
  const out = [];
  for (;;) {
    const page = await api(`/v1/jobs/${encodeURIComponent(jobId)}/events?limit=1000&after=${after}`, { signal });
    out.push(...page.data);
    if (!page.has_more || !page.data.length) return out;
    after = page.data[page.data.length - 1].seq;
  }
}

// A download of a route that needs the key (an <a href> cannot send it): fetched, then saved.
export async function download(path, fallbackName) {
  const r = await api(path, { raw: true });
  const disposition = r.headers.get("content-disposition") || "";
  const m = /filename\*?=(?:UTF-8'')?"?([^";]+)"?/i.exec(disposition);
  const name = m ? decodeURIComponent(m[1]) : fallbackName;
  const url = URL.createObjectURL(await r.blob());
  const a = document.createElement("a");
  a.href = url; a.download = name;
  document.body.append(a); a.click(); a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
  return name;
}
