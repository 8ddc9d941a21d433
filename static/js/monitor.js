// The monitor page (administrators): every process's vital signs from an SSE
// stream, charted: gunicorn's web workers and the RQ job workers side by side,
// and, under `make run`, supervisord's view of its programs (a job worker that
// gave up shows FATAL).
import { stream } from "/static/js/realtime.js";
import { showStatus } from "/static/js/status.js";
const $ = (id) => document.getElementById(id);
const POINTS = 60; // reports kept per process: 2 minutes at one report every 2 s
const EVERY = 2; // seconds between reports (core/monitor.py REPORT_SECONDS)
const history = new Map(); // "role host/pid" -> [{rss, cpu, conns}], the last POINTS reports
const COLORS = ["#2f6fdf", "#d2691e", "#2e8b57", "#c71585", "#6a5acd", "#b8860b", "#008b8b", "#8b0000"];
const MARGIN = { left: 52, right: 10, top: 10, bottom: 30 };

function niceTop(value) {
  // 1, 2 or 5 times a power of ten, at or above the largest value
  const power = 10 ** Math.floor(Math.log10(Math.max(value, 1e-9)));
  return [1, 2, 5, 10].map((m) => m * power).find((t) => t >= value);
}

// A line chart with its axes: y in `unit` from 0, x in seconds ago. The
// legend is HTML beside the canvas (`legendId`), so it never covers a line.
function chart(id, legendId, unit, pick, names) {
  const ctx = $(id).getContext("2d"), w = ctx.canvas.width, h = ctx.canvas.height;
  const plotW = w - MARGIN.left - MARGIN.right, plotH = h - MARGIN.top - MARGIN.bottom;
  ctx.clearRect(0, 0, w, h);
  const series = names.map((name) => [name, history.get(name)]);
  const top = niceTop(Math.max(unit === "%" ? 10 : 1, ...series.flatMap(([, points]) => points.map(pick))));
  ctx.font = "11px system-ui";
  ctx.strokeStyle = "#dde1ea";
  ctx.fillStyle = "#5d6677";
  ctx.lineWidth = 1;
  // y axis: 5 gridlines labelled in the unit
  ctx.textAlign = "right";
  ctx.textBaseline = "middle";
  for (let i = 0; i <= 4; i++) {
    const y = MARGIN.top + plotH - (i / 4) * plotH;
    ctx.beginPath();
    ctx.moveTo(MARGIN.left, y);
    ctx.lineTo(w - MARGIN.right, y);
    ctx.stroke();
    const value = (top * i) / 4;
    ctx.fillText(`${Number.isInteger(value) ? value : value.toFixed(1)} ${unit}`.trim(), MARGIN.left - 4, y);
  }
  // x axis: seconds ago, now at the right
  ctx.textAlign = "center";
  ctx.textBaseline = "top";
  const span = (POINTS - 1) * EVERY;
  for (let s = 0; s <= span; s += 30) {
    const x = MARGIN.left + plotW - (s / span) * plotW;
    ctx.fillText(s ? `-${s}` : "now", x, MARGIN.top + plotH + 4);
  }
  ctx.fillText("seconds ago", MARGIN.left + plotW / 2, MARGIN.top + plotH + 16);
  const legend = [];
  series.forEach(([name, points], i) => {
    const color = COLORS[i % COLORS.length];
    ctx.strokeStyle = color;
    ctx.lineWidth = 2;
    ctx.beginPath();
    const offset = POINTS - points.length; // the newest point at the right edge
    points.forEach((p, j) => {
      const x = MARGIN.left + ((offset + j) / (POINTS - 1)) * plotW;
      const y = MARGIN.top + plotH - (Math.min(pick(p), top) / top) * plotH;
      j ? ctx.lineTo(x, y) : ctx.moveTo(x, y);
    });
    ctx.stroke();
    const item = document.createElement("li");
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = color;
    item.append(swatch, name);
    legend.push(item);
  });
  $(legendId).replaceChildren(...legend);
}

function cells(row, values) {
  for (const value of values) {
    const cell = document.createElement("td");
    cell.textContent = value === undefined || value === null ? "" : String(value);
    row.append(cell);
  }
  return row;
}

function nameOf(p) {
  if (p.role === "jobs") return `job worker ${p.name || ""} ${p.host}/${p.pid}`.replace("  ", " ");
  return `${p.role} ${p.host}/${p.pid}`;
}

function show(data) {
  const live = new Set();
  const rows = [];
  const programs = [];
  for (const p of data.processes) {
    const name = nameOf(p);
    const conns = p.connections || {};
    if (p.role === "worker" || p.role === "jobs") {
      live.add(name);
      const points = history.get(name) || [];
      points.push({ rss: p.rss / 2 ** 20, cpu: p.cpu, conns: (conns.sse || 0) + (conns.longpoll || 0) + (conns.websocket || 0) });
      if (points.length > POINTS) points.shift();
      history.set(name, points);
    }
    if (p.role === "supervisor") {
      for (const program of p.programs || []) programs.push({ host: p.host, ...program });
    }
    rows.push(cells(document.createElement("tr"), [
      name, p.uptime, p.rss ? (p.rss / 2 ** 20).toFixed(1) : "", p.cpu ?? "", conns.sse ?? "",
      conns.longpoll ?? "", conns.websocket ?? "", p.requests ?? "", p.restarts ?? "", p.job ?? "",
    ]));
  }
  for (const name of [...history.keys()]) if (!live.has(name)) history.delete(name);
  $("table").replaceChildren(...rows);
  $("programs").replaceChildren(...programs.map((p) => {
    const row = cells(document.createElement("tr"), [
      `${p.host} ${p.name}`, p.state, p.pid ?? "", p.uptime ?? "", p.restarts ?? "", p.description,
    ]);
    row.className = `state-${p.state.toLowerCase()}`;
    return row;
  }));
  $("supervised").hidden = programs.length === 0;
  $("restarts").textContent = String(data.restart_count);
  $("exits").replaceChildren(...data.restarts.slice(0, 10).map((r) => {
    const li = document.createElement("li");
    li.textContent = `${new Date(r.at * 1000).toLocaleTimeString()} ${r.host}/${r.pid ?? "-"}: ${r.cause}`;
    return li;
  }));
  const all = [...history.keys()];
  chart("memory", "memory-legend", "MB", (p) => p.rss, all);
  chart("cpu", "cpu-legend", "%", (p) => p.cpu, all);
  chart("connections", "connections-legend", "", (p) => p.conns, all.filter((n) => n.startsWith("worker ")));
}

stream("/admin/monitor/stream", {
  events: { processes: show },
  onStatus: showStatus($("status"), "live"),
});
