// The dashboard: pages drawn from the same /v1 API every client uses, with the token kept in localStorage.
// Text from the server is always set as text (textContent, text nodes), never parsed as HTML.
//   app.js      sign-in, the lab queue page, and which page a path draws
//   jobs.js     the jobs page (sortable, searchable)      job.js      one job
//   compare.js  several jobs side by side                 chart.js    the SVG line chart
//   sweeps.js   the sweeps, and one sweep                 scatter.js  the SVG scatter of a sweep's trials
//   api.js      the /v1 API, the event stream, the log    ui.js       elements and how values are written
import { api, clearToken, getJson, setToken, token } from "./api.js";
import { comparePage } from "./compare.js";
import { jobPage } from "./job.js";
import { jobsPage } from "./jobs.js";
import { sweepPage, sweepsPage } from "./sweeps.js";
import { every, h, hms, stopPage } from "./ui.js";

const main = document.getElementById("main");

// ------------------------------------------------------------------------------------------ sign-in
function showLogin(message) {
  stopPage();
  document.getElementById("logout").hidden = true;
  const input = h("input", { type: "password", id: "token", name: "token", autocomplete: "current-password",
                             placeholder: "API token", required: true, size: 44 });
  const error = h("p", { class: "error", id: "login-error", role: "alert" }, message || "");
  const form = h("form", { id: "login", class: "card narrow" },
    h("h1", {}, "Sign in"),
    h("p", { class: "muted" }, "Paste an API token (", h("code", {}, "ttm admin user create NAME"), " prints one)."),
    h("label", { for: "token" }, "Token"), input,
    h("button", { type: "submit", class: "primary" }, "Sign in"), error);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    setToken(input.value.trim());
    try {
      await api("/v1/jobs?limit=1");
      route();
    } catch (err) {
      if (!(err.status === 401)) error.textContent = `Cannot reach the server: ${err.message}`;
    }
  });
  main.replaceChildren(form);
  input.focus();
}

window.addEventListener("ttm:unauthorized", () => showLogin("The server refused the token: sign in again."));
window.addEventListener("ttm:route", () => route());
document.getElementById("logout").addEventListener("click", () => {
  clearToken();
  showLogin("Signed out.");
});

// ------------------------------------------------------------------------------------------ the lab queue
// Each queue's queued jobs in the order they will start (GET /v1/queue), why they stand there, and a bar per row
// of the owner's recent usage over their share (what orders users within a class).
function startsIn(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 60) return "now";
  const m = Math.round(seconds / 60);
  return m < 90 ? `${m} min` : `${(m / 60).toFixed(1)} h`;
}

async function labQueuePage() {
  const params = new URLSearchParams(location.search);
  const name = params.get("queue") === "cpu" ? "cpu" : "gpu";
  const select = h("select", { id: "queue-name", "aria-label": "queue" },
    ...["gpu", "cpu"].map((q) => h("option", { value: q, selected: q === name }, `${q} queue`)));
  select.addEventListener("change", () => {
    history.replaceState(null, "", `/ui/queue?queue=${select.value}`);
    route();
  });
  const summary = h("p", { class: "muted", id: "lab-summary" });
  const tbody = h("tbody", { id: "lab-queue" });
  main.replaceChildren(
    h("div", { class: "toolbar" }, h("h1", {}, "Queue"), h("span", { class: "spacer" }), select),
    summary,
    h("table", { class: "jobs" },
      h("thead", {}, h("tr", {}, ...["#", "Job", "Owner", "Class", "Owner's usage / share", "", "Starts in"]
        .map((c) => h("th", {}, c)))),
      tbody),
    h("p", { class: "muted" }, "Order: class (high, normal, low), then the owner's decayed GPU-hours over their " +
      "share, then submit time. Others' jobs show their place only."));

  async function refresh() {
    let q;
    try {
      q = await getJson(`/v1/queue?queue=${name}&limit=200`);
    } catch (err) {
      if (err.status !== 401) summary.textContent = `Could not load the queue: ${err.message}`;
      return;
    }
    const loads = q.items.map((e) => e.owner_usage_hours / (e.owner_share || 1));
    const top = Math.max(1e-9, ...loads);
    tbody.replaceChildren(...q.items.map((e, i) => {
      const load = loads[i];
      const fill = h("span");
      fill.style.width = `${Math.max(2, Math.round(100 * load / top))}%`; // CSSOM: the CSP allows no style attributes
      const bar = h("span", { class: "usage-bar", role: "img", "aria-label": `${load.toFixed(2)} h per share` }, fill);
      const job = e.id ? h("a", { href: `/ui/jobs/${encodeURIComponent(e.id)}` }, e.name || e.id) :
        h("span", { class: "muted" }, "another user's job");
      return h("tr", { dataset: { position: String(e.position), jobId: e.id || "" } },
        h("td", { class: "num" }, String(e.position)), h("td", {}, job), h("td", {}, e.owner || "–"),
        h("td", {}, h("span", { class: `state prio-${e.priority}` }, e.priority)),
        h("td", { class: "num" }, `${e.owner_usage_hours.toFixed(2)} h / ${e.owner_share}`),
        h("td", { class: "bar-cell" }, bar),
        h("td", { title: e.eta_seconds === null ? "" : hms(e.eta_seconds) },
          e.held_back ? "held back (owner at max-running)" : startsIn(e.eta_seconds)));
    }));
    if (!q.items.length) tbody.append(h("tr", {}, h("td", { colspan: 7, class: "muted" }, "Nothing queued.")));
    summary.textContent = `${q.queued} queued · ${q.running} running · ${q.workers} worker` +
      `${q.workers === 1 ? "" : "s"} · updated ${new Date().toLocaleTimeString()}`;
  }
  await refresh();
  every(3000, refresh);
}

// ------------------------------------------------------------------------------------------ routing
let authOff = null; // a server started with TTM_AUTH=off (loopback only) needs no token

async function route() {
  stopPage();
  document.title = "ttm · distillation jobs";
  if (!token() && authOff === null) {
    const probe = await fetch("/v1/jobs?limit=1", { headers: { Accept: "application/json" } }).catch(() => null);
    authOff = probe !== null && probe.ok;
  }
  if (!token() && !authOff) {
    showLogin();
    return;
  }
  document.getElementById("logout").hidden = authOff && !token();
  const path = location.pathname;
  const job = path.match(/^\/ui\/jobs\/([^/]+)$/);
  const sweep = path.match(/^\/ui\/sweeps\/([^/]+)$/);
  for (const a of document.querySelectorAll("header nav a")) a.classList.remove("active");
  if (job) {
    jobPage(main, decodeURIComponent(job[1]));
  } else if (sweep || path === "/ui/sweeps") {
    document.getElementById("nav-sweeps").classList.add("active");
    if (sweep) sweepPage(main, decodeURIComponent(sweep[1])); else sweepsPage(main);
  } else if (path === "/ui/compare") {
    document.getElementById("nav-compare").classList.add("active");
    comparePage(main);
  } else if (path === "/ui/queue") {
    document.getElementById("nav-lab-queue").classList.add("active");
    labQueuePage();
  } else {
    document.getElementById("nav-queue").classList.add("active");
    jobsPage(main);
  }
}

route();
