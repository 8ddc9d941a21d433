// Background jobs (administrators; blueprints/jobs.py): start a log analysis, watch
// its progress over SSE (realtime.js stream()), see the result, cancel.
import { stream } from "/static/js/realtime.js";
import { setStatus } from "/static/js/status.js";

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
const ENDED = ["done", "failed", "cancelled"];
const shown = new Map(); // job id -> {box, stream}
let csrfToken = null;

function el(tag, props = {}, ...children) {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children);
  return node;
}

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

async function call(method, url, body) {
  $("error").textContent = "";
  const headers = {};
  if (csrfToken) headers["X-CSRF-Token"] = csrfToken;
  if (body && !(body instanceof FormData)) headers["Content-Type"] = "application/json";
  const response = await fetch(url, {
    method, headers, credentials: "same-origin",
    body: body instanceof FormData ? body : body && JSON.stringify(body),
  });
  const answer = await response.json().catch(() => ({}));
  if (!response.ok) {
    $("error").textContent = `${response.status}: ${answer.error ?? response.statusText}`;
    return null;
  }
  return answer;
}

async function load() {
  const me = await fetch("/auth/me", { credentials: "same-origin" });
  if (me.ok) csrfToken = (await me.json()).csrfToken ?? null;
  const listing = await call("GET", "/admin/jobs");
  if (!listing) return;
  $("file").replaceChildren(...listing.files.map(({ name, size }) =>
    el("option", { value: name, textContent: `${name} (${(size / 2 ** 20).toFixed(1)} MB)` })));
  $("procs").max = listing.limits.procs;
  $("upload-limit").textContent = `at most ${(listing.limits.upload_bytes / 2 ** 20).toFixed(0)} MB`;
  setStatus($("workers"), listing.workers ? "ok" : "warn",
    listing.workers ? `${listing.workers} RQ worker(s)` : "no RQ worker running: jobs wait");
  for (const job of listing.jobs.slice().reverse()) show(job);
}

function show(job) {
  let entry = shown.get(job.id);
  if (!entry) {
    const box = el("article", { className: "job" });
    box.dataset.id = job.id;
    entry = { box, stream: null };
    shown.set(job.id, entry);
    $("jobs").prepend(box);
  }
  render(entry, job);
  if (!ENDED.includes(job.state) && !entry.stream) watch(entry, job.id);
}

function watch(entry, id) {
  const update = (patch) => render(entry, { ...entry.job, ...patch });
  entry.stream = stream(`/admin/jobs/${id}/stream`, {
    events: {
      job: (job) => render(entry, job),
      state: (event) => update(event),
      progress: ({ progress }) => update({ progress }),
      result: ({ result }) => update({ state: "done", progress: 1, result }),
      failed: ({ reason }) => update({ state: "failed", reason }),
      cancelled: ({ reason }) => update({ state: "cancelled", reason }),
    },
  });
}

function render(entry, job) {
  const { box } = entry;
  delete job.type;
  entry.job = job;
  box.dataset.state = job.state;
  const cancel = el("button", { textContent: "cancel", disabled: ENDED.includes(job.state) });
  cancel.addEventListener("click", async () => {
    cancel.disabled = true;
    const answer = await call("DELETE", `/admin/jobs/${job.id}`);
    // The answer says what the job was when the request was served ("running", the
    // flag set); the stream may have said "cancelled" since, and an end is final.
    if (answer && !ENDED.includes(entry.job.state)) render(entry, { ...entry.job, ...answer });
  });
  const percent = `${Math.round(job.progress * 100)}%`;
  const children = job.pids ? ` · children ${job.pids.join(", ")}` : "";
  box.replaceChildren(
    el("header", {},
      el("strong", { textContent: job.file ?? job.id }),
      el("span", { className: `status ${{ done: "ok", failed: "error", cancelled: "warn" }[job.state] ?? ""}`, textContent: job.state }),
      el("span", { textContent: `${job.procs ?? "?"} process(es)${children}` }),
      el("span", { textContent: percent }), cancel),
    el("progress", { max: 1, value: job.progress }),
  );
  if (job.reason) box.append(el("p", { className: "reason", textContent: job.reason }));
  if (job.state === "done" && job.result) box.append(...result(job.result));
  if (ENDED.includes(job.state) && entry.stream) {
    entry.stream.close();
    entry.stream = null;
  }
}

function table(className, title, rows) {
  return el("table", { className },
    el("caption", { textContent: title }),
    ...rows.map(([key, value]) => el("tr", {}, el("td", { textContent: key }),
      el("td", { className: "n", textContent: Number(value).toLocaleString() }))));
}

function result(summary) {
  const totals = [["lines", summary.lines], ["requests", summary.requests],
    ["malformed", summary.malformed], ["bytes sent", summary.bytes_sent ?? 0]];
  return [
    el("p", { className: "lead", textContent: `${summary.read}; ${summary.seconds} s` }),
    el("div", {},
      table("totals", "totals", totals),
      table("status", "requests by status", Object.entries(summary.status)),
      table("paths", "top paths", summary.top_paths),
      table("ips", "top client IPs", summary.top_ips)),
    chart(summary.requests_per_minute),
  ];
}

// Requests per minute: a line over time (UTC minutes), with both axes labelled.
function chart(rpm) {
  const W = 800, H = 220, left = 60, right = 10, top = 20, bottom = 40;
  const minutes = Object.entries(rpm.by_minute);
  const node = svg("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img",
    "aria-label": "requests per minute" });
  node.append(svg("text", { x: left, y: 14, "font-size": 12 },
    `requests per minute (peak ${rpm.peak.requests} at ${rpm.peak.minute}, average ${rpm.average})`));
  if (!minutes.length) return node;
  const peak = Math.max(...minutes.map(([, n]) => n));
  const x = (i) => left + (minutes.length === 1 ? 0 : i * (W - left - right) / (minutes.length - 1));
  const y = (n) => H - bottom - n * (H - top - bottom) / peak;
  node.append(
    svg("line", { x1: left, y1: H - bottom, x2: W - right, y2: H - bottom, stroke: "#555" }),
    svg("line", { x1: left, y1: top, x2: left, y2: H - bottom, stroke: "#555" }),
    svg("polyline", { fill: "none", stroke: "#2f6fdf", "stroke-width": 1.5,
      points: minutes.map(([, n], i) => `${x(i).toFixed(1)},${y(n).toFixed(1)}`).join(" ") }));
  for (const n of [0, Math.round(peak / 2), peak]) {
    node.append(svg("text", { x: left - 6, y: y(n) + 4, "text-anchor": "end", "font-size": 11 }, String(n)));
  }
  for (const i of [...new Set([0, Math.floor((minutes.length - 1) / 2), minutes.length - 1])]) {
    node.append(svg("text", { x: x(i), y: H - bottom + 16, "text-anchor": "middle", "font-size": 11 },
      minutes[i][0].replace("T", " ")));
  }
  node.append(
    svg("text", { x: (left + W - right) / 2, y: H - 4, "text-anchor": "middle", "font-size": 11 }, "minute (UTC, from the log)"),
    svg("text", { x: 12, y: (top + H - bottom) / 2, "font-size": 11, "text-anchor": "middle",
      transform: `rotate(-90 12 ${(top + H - bottom) / 2})` }, "requests / min"));
  return node;
}

$("start").addEventListener("click", async () => {
  const procs = Number($("procs").value);
  const answer = await call("POST", "/admin/jobs", { file: $("file").value, procs });
  if (answer) show({ id: answer.id, state: "queued", progress: 0, file: $("file").value, procs });
});

$("upload-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const file = $("upload").files[0];
  if (!file) return;
  const form = new FormData();
  form.append("upload", file);
  form.append("procs", $("procs").value);
  const answer = await call("POST", "/admin/jobs/upload", form);
  if (answer) show({ id: answer.id, state: "queued", progress: 0, file: file.name, procs: Number($("procs").value) });
});

load();
