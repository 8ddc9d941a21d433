// The monitor page (administrators): the workers' vital signs from an SSE stream, charted.
import { stream } from "/static/js/realtime.js";
import { showStatus } from "/static/js/status.js";
const $ = (id) => document.getElementById(id);
const history = new Map(); // "host/pid" -> [{rss, cpu, conns}], the last 60 reports
const COLORS = ["#2f6fdf", "#d2691e", "#2e8b57", "#c71585", "#6a5acd", "#b8860b"];

function chart(id, title, unit, pick) {
  const ctx = $(id).getContext("2d"), w = ctx.canvas.width, h = ctx.canvas.height;
  ctx.clearRect(0, 0, w, h);
  const series = [...history.entries()];
  const top = Math.max(1, ...series.flatMap(([, points]) => points.map(pick)));
  series.forEach(([name, points], i) => {
    ctx.strokeStyle = COLORS[i % COLORS.length];
    ctx.lineWidth = 2;
    ctx.beginPath();
    points.forEach((p, j) => {
      const x = (j / 59) * w, y = h - 6 - (pick(p) / top) * (h - 30);
      j ? ctx.lineTo(x, y) : ctx.moveTo(x, y);
    });
    ctx.stroke();
    ctx.fillStyle = COLORS[i % COLORS.length];
    ctx.fillText(name, 8, 32 + i * 13);
  });
  ctx.fillStyle = "#5d6677";
  ctx.font = "12px system-ui";
  ctx.fillText(`${title} (max ${Math.round(top)} ${unit})`, 8, 16);
}

function show(data) {
  const live = new Set();
  const rows = [];
  for (const p of data.processes) {
    const name = `${p.role} ${p.host}/${p.pid}`;
    const conns = p.connections || {};
    if (p.role === "worker") {
      live.add(name);
      const points = history.get(name) || [];
      points.push({ rss: p.rss / 2 ** 20, cpu: p.cpu, conns: (conns.sse || 0) + (conns.longpoll || 0) + (conns.websocket || 0) });
      if (points.length > 60) points.shift();
      history.set(name, points);
    }
    const row = document.createElement("tr");
    for (const value of [name, p.uptime, (p.rss / 2 ** 20).toFixed(1), p.cpu ?? "", conns.sse ?? "",
                         conns.longpoll ?? "", conns.websocket ?? "", p.requests ?? ""]) {
      const cell = document.createElement("td");
      cell.textContent = String(value);
      row.append(cell);
    }
    rows.push(row);
  }
  for (const name of [...history.keys()]) if (!live.has(name)) history.delete(name);
  $("table").replaceChildren(...rows);
  $("restarts").textContent = String(data.restart_count);
  $("exits").replaceChildren(...data.restarts.slice(0, 10).map((r) => {
    const li = document.createElement("li");
    li.textContent = `${new Date(r.at * 1000).toLocaleTimeString()} ${r.host}/${r.pid}: ${r.cause}`;
    return li;
  }));
  chart("memory", "memory per worker", "MB", (p) => p.rss);
  chart("cpu", "CPU per worker", "%", (p) => p.cpu);
  chart("connections", "connections per worker", "", (p) => p.conns);
}

stream("/admin/monitor/stream", {
  events: { processes: show },
  onStatus: showStatus($("status"), "live"),
});
