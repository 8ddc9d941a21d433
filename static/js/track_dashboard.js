// Live dots with short trails per visitor, the visitor count, and a chart of
// mouse events per second; fed by the SSE stream /admin/track/stream.
import { stream } from "./realtime.js";
import { showStatus } from "./status.js";

const $ = (id) => document.getElementById(id);
const field = $("field").getContext("2d");
const rate = $("rate").getContext("2d");
const TRAIL = 20;
const visitors = new Map(); // id -> {trail: [[x, y], ...], hue}
const perSecond = [];       // [{second, events}], the last 60 s
let total = 0;
const hueOf = (id) => parseInt(id, 16) % 360;

function ensure(id) {
  if (!visitors.has(id)) visitors.set(id, { trail: [], hue: hueOf(id) });
  return visitors.get(id);
}

function countEvents(events) {
  total += events;
  const second = Math.floor(Date.now() / 1000);
  const last = perSecond[perSecond.length - 1];
  if (last && last.second === second) last.events += events;
  else perSecond.push({ second, events });
  while (perSecond.length > 60) perSecond.shift();
}

stream("/admin/track/stream", {
  events: {
    snapshot: ({ users }) => {
      for (const id of [...visitors.keys()]) if (!users.includes(id)) visitors.delete(id);
      for (const id of users) ensure(id);
    },
    join: ({ id }) => ensure(id),
    leave: ({ id }) => visitors.delete(id),
    batch: ({ positions, events }) => {
      for (const [id, point] of Object.entries(positions)) {
        const visitor = ensure(id);
        visitor.trail.push(point);
        if (visitor.trail.length > TRAIL) visitor.trail.shift();
      }
      countEvents(events);
    },
  },
  onStatus: showStatus($("status"), "live"),
});

function draw() {
  const { width, height } = field.canvas;
  field.clearRect(0, 0, width, height);
  for (const [id, { trail, hue }] of visitors) {
    field.strokeStyle = `hsla(${hue}, 70%, 45%, .35)`;
    field.lineWidth = 3;
    field.beginPath();
    trail.forEach(([x, y], i) => (i ? field.lineTo(x * width, y * height) : field.moveTo(x * width, y * height)));
    field.stroke();
    const head = trail[trail.length - 1];
    if (!head) continue;
    field.fillStyle = `hsl(${hue}, 70%, 45%)`;
    field.beginPath();
    field.arc(head[0] * width, head[1] * height, 7, 0, 2 * Math.PI);
    field.fill();
    field.font = "14px system-ui";
    field.fillText(id, head[0] * width + 10, head[1] * height - 10);
  }
  $("users").textContent = String(visitors.size);
  $("total").textContent = String(total);
  const ids = [...visitors.keys()].sort().join(" ");
  if ($("visitors").textContent !== ids) $("visitors").textContent = ids;

  const now = Math.floor(Date.now() / 1000);
  const series = Array.from({ length: 60 }, (_, i) =>
    perSecond.find((p) => p.second === now - 59 + i)?.events ?? 0);
  $("eps").textContent = String(series[58]);
  const w = rate.canvas.width, h = rate.canvas.height, top = Math.max(10, ...series);
  rate.clearRect(0, 0, w, h);
  rate.strokeStyle = "#2f6fdf";
  rate.lineWidth = 2;
  rate.beginPath();
  series.forEach((v, i) => {
    const x = (i / 59) * w, y = h - 8 - (v / top) * (h - 24);
    i ? rate.lineTo(x, y) : rate.moveTo(x, y);
  });
  rate.stroke();
  rate.fillStyle = "#5d6677";
  rate.font = "12px system-ui";
  rate.fillText(`mouse events per second (max ${top}) over the last minute`, 8, 14);
  requestAnimationFrame(draw);
}
requestAnimationFrame(draw);
