// Collaborative drawing: our strokes go to /draw/ws at most every 50 ms;
// others' strokes and pointers come back as "moving" events.
import { connect } from "./realtime.js";
import { showStatus } from "./status.js";

const $ = (id) => document.getElementById(id);
const canvas = $("board");
const context = canvas.getContext("2d");
const COLORS = ["#d2691e", "#2e8b57", "#6a5acd", "#c71585", "#1e90ff", "#b8860b"];
const others = new Map(); // id -> {x, y, drawing, label, color}
let segments = [];        // [x0, y0, x1, y1] as fractions: redrawn on resize
let socket = null;
let myId = null;

function resize() {
  canvas.width = innerWidth;
  canvas.height = innerHeight;
  context.lineWidth = 2;
  context.lineCap = "round";
  for (const s of segments) stroke(s, "#1d2330");
}
addEventListener("resize", resize);

function stroke([x0, y0, x1, y1], color) {
  context.strokeStyle = color;
  context.beginPath();
  context.moveTo(x0 * canvas.width, y0 * canvas.height);
  context.lineTo(x1 * canvas.width, y1 * canvas.height);
  context.stroke();
}

function pointerFor(id) {
  let other = others.get(id);
  if (!other) {
    const label = document.createElement("div");
    label.className = "pointer";
    label.dataset.id = id;
    const color = COLORS[others.size % COLORS.length];
    label.style.background = color;
    label.textContent = `user ${id}`;
    document.body.append(label);
    other = { label, color, drawing: false, x: 0, y: 0 };
    others.set(id, other);
    $("count").textContent = String(others.size);
  }
  return other;
}

function onMessage(message) {
  switch (message.type) {
    case "welcome":
      myId = message.id;
      $("error").textContent = "";
      segments = message.segments;
      resize();
      break;
    case "moving": {
      const other = pointerFor(message.id);
      if (message.drawing && other.drawing) {
        const s = [other.x, other.y, message.x, message.y];
        segments.push(s);
        stroke(s, other.color);
      }
      Object.assign(other, { x: message.x, y: message.y, drawing: message.drawing });
      other.label.style.left = `${message.x * canvas.width}px`;
      other.label.style.top = `${message.y * canvas.height}px`;
      break;
    }
    case "clientdisconnect": {
      others.get(message.id)?.label.remove();
      others.delete(message.id);
      $("count").textContent = String(others.size);
      break;
    }
    case "clear":
      segments = [];
      context.clearRect(0, 0, canvas.width, canvas.height);
      break;
    case "error":
      $("error").textContent = message.reason;
      break;
  }
}

// Our own pointer: draw locally at once, send at most every 50 ms (~20 Hz).
let drawing = false, last = null, pending = null, lastSent = 0;
function position(event) { return { x: event.clientX / canvas.width, y: event.clientY / canvas.height }; }
function flush() {
  if (!pending || !socket || socket.readyState !== WebSocket.OPEN) return;
  socket.send(JSON.stringify(pending));
  pending = null;
  lastSent = performance.now();
}
canvas.addEventListener("pointerdown", (event) => { drawing = true; last = position(event); move(event); });
addEventListener("pointerup", (event) => { move(event); drawing = false; flush(); });
canvas.addEventListener("pointermove", move);
function move(event) {
  const here = position(event);
  if (drawing && last) {
    const s = [last.x, last.y, here.x, here.y];
    segments.push(s);
    stroke(s, "#1d2330");
  }
  last = here;
  pending = { x: Math.min(Math.max(here.x, 0), 1), y: Math.min(Math.max(here.y, 0), 1), drawing };
  if (performance.now() - lastSent >= 50) flush();
  else setTimeout(flush, 50);
}

$("clear").addEventListener("click", () => socket?.send(JSON.stringify({ type: "clear" })));

function connectForever() {
  connect("/draw/ws", {
    onOpen: (opened) => { socket = opened; },
    onMessage,
    onClose: (event) => {
      // 1008: the server refused what we sent (e.g. too many moves); say why.
      if (event.code === 1008 && event.reason) $("error").textContent = event.reason;
      for (const other of others.values()) other.label.remove();
      others.clear();
    },
    onStatus: showStatus($("status"), "live"),
  });
}

resize();
connectForever();
