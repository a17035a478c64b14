// The /v1 API as the pages call it: the token kept in localStorage and sent as a Bearer header, errors as ApiError,
// a job's event stream read with fetch() (EventSource cannot send the header), and its log read on from an offset.

const TOKEN_KEY = "ttm.token";
export const FINAL = new Set(["succeeded", "failed", "cancelled"]);

export const token = () => localStorage.getItem(TOKEN_KEY);
export const setToken = (value) => localStorage.setItem(TOKEN_KEY, value);
export const clearToken = () => localStorage.removeItem(TOKEN_KEY);

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// A 401 signs the user out: app.js listens for this event and shows the sign-in form.
export async function api(path, options = {}) {
  const headers = { Accept: "application/json", ...(options.headers || {}) };
  if (token()) headers.Authorization = `Bearer ${token()}`;
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401) {
    clearToken();
    window.dispatchEvent(new CustomEvent("ttm:unauthorized"));
    throw new ApiError(401, "unauthorized", "signed out");
  }
  if (!response.ok) {
    const body = await response.json().catch(() => null);
    const err = (body && body.error) || {};
    throw new ApiError(response.status, err.code || `http_${response.status}`, err.message || response.statusText);
  }
  return response;
}
export const getJson = async (path) => (await api(path)).json();
export const jobPath = (jobId, rest = "") => `/v1/jobs/${encodeURIComponent(jobId)}${rest}`;

// Every metric row of a job after `after` (all pages of them): {items, next_after}.
export async function metricsAfter(jobId, after) {
  const items = [];
  for (;;) {
    const page = await getJson(jobPath(jobId, `/metrics?after=${after}&limit=10000`));
    items.push(...page.items);
    if (page.items.length < 10000 || page.next_after === after) return { items, after: page.next_after };
    after = page.next_after;
  }
}

// The trainer's log from byte `offset` on: {text, offset} (the offset to read from next time).
const LOG_CHUNK = 4 * 1024 * 1024; // what the server sends at most per request
export async function logFrom(jobId, offset, maxChunks = 8) {
  let text = "";
  for (let i = 0; i < maxChunks; i++) {
    const response = await api(jobPath(jobId, `/log?offset=${offset}`), { headers: { Accept: "text/plain" } });
    const chunk = await response.text();
    const next = Number(response.headers.get("X-TTM-Log-Next-Offset"));
    if (!Number.isFinite(next) || next <= offset) break;
    text += chunk;
    const full = next - offset >= LOG_CHUNK;
    offset = next;
    if (!full) break;
  }
  return { text, offset };
}

// Server-Sent Events over fetch(). Calls onEvent(type, data) for each event; resumes after a dropped connection with
// Last-Event-ID; returns once the job has ended.
export async function followEvents(jobId, onEvent, signal) {
  let lastId = null, finished = false, failures = 0;
  while (!finished && !signal.aborted) {
    try {
      const headers = { Accept: "text/event-stream" };
      if (lastId) headers["Last-Event-ID"] = lastId;
      const response = await api(jobPath(jobId, "/events"), { headers, signal });
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let cut;
        while ((cut = buffer.search(/\r?\n\r?\n/)) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut).replace(/^\r?\n\r?\n/, "");
          const ev = parseBlock(block);
          if (!ev) continue;
          failures = 0;
          if (ev.id) lastId = ev.id;
          onEvent(ev.type, ev.data);
          if (ev.type === "state" && FINAL.has(ev.data.state)) finished = true;
        }
      }
      if (!finished) finished = FINAL.has((await getJson(jobPath(jobId))).state);
    } catch (err) {
      if (signal.aborted || (err instanceof ApiError && err.status < 500)) throw err;
      failures += 1;
    }
    if (!finished) await new Promise((r) => setTimeout(r, Math.min(10000, 500 * 2 ** Math.min(failures, 5))));
  }
}

function parseBlock(block) {
  let type = "message", id = null;
  const data = [];
  for (const line of block.split(/\r?\n/)) {
    if (!line || line.startsWith(":")) continue;
    const i = line.indexOf(":");
    const field = i < 0 ? line : line.slice(0, i);
    let value = i < 0 ? "" : line.slice(i + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") type = value;
    else if (field === "data") data.push(value);
    else if (field === "id") id = value;
  }
  if (!data.length) return null;
  try {
    return { type, id, data: JSON.parse(data.join("\n")) };
  } catch {
    return null;
  }
}
