// The collaborative editor's client: local edits become operations, at most one
// in flight with a buffer behind it; remote operations are transformed against
// both, then applied with the caret kept in place. Protocol: blueprints/editor.py.
import * as ot from "./ot.js";
import { connect } from "./realtime.js";
import { setStatus } from "./status.js";

const $ = (id) => document.getElementById(id);
const area = $("text");
const docId = $("editor").dataset.doc;
const COLORS = ["#d2691e", "#2e8b57", "#6a5acd", "#c71585", "#1e90ff", "#b8860b"];

let socket = null;
let ready = false;
let version = null;   // the server version our text is based on
let text = "";        // what the textarea held after the last change we processed
let inflight = null;  // {op, id}: sent, not yet acknowledged
let buffer = null;    // local changes made while waiting for the ack
const carets = new Map(); // src -> {name, caret: [anchor, head], seen, color}

$("name").value = localStorage.getItem("editor-name") || `guest-${Math.floor(Math.random() * 1000)}`;
$("name").addEventListener("change", () => {
  localStorage.setItem("editor-name", $("name").value);
  socket?.close(); // reconnect with the new name
});

const newId = () => crypto.getRandomValues(new Uint32Array(2)).join("-");

function send(message) {
  if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify(message));
}

function submit(op) {
  inflight = { op, id: newId() };
  send({ type: "op", v: version, op: ot.toJSON(op), id: inflight.id });
}

// -- local edits -----------------------------------------------------------------
function onLocalChange() {
  const op = ot.diff(text, area.value);
  text = area.value;
  if (op.length === 0) return;
  for (const entry of carets.values()) { // others' carets shift with our edit
    entry.caret = entry.caret.map((i) => ot.transformIndex(i, op));
  }
  if (inflight === null && ready) submit(op);
  else buffer = buffer === null ? op : ot.compose(buffer, op);
  render();
}

area.addEventListener("input", onLocalChange);
area.addEventListener("keydown", (event) => {
  if (event.key !== "Tab" || event.ctrlKey || event.altKey || event.metaKey) return;
  event.preventDefault(); // Tab indents instead of leaving the editor
  area.setRangeText("    ", area.selectionStart, area.selectionEnd, "end");
  onLocalChange();
});

// -- remote edits ---------------------------------------------------------------------
function applyRemote(op) {
  const anchor = ot.utf16ToCp(text, area.selectionStart);
  const head = ot.utf16ToCp(text, area.selectionEnd);
  text = ot.apply(text, op);
  area.value = text;
  const start = ot.cpToUtf16(text, ot.transformIndex(anchor, op));
  const end = ot.cpToUtf16(text, ot.transformIndex(head, op));
  if (document.activeElement === area) area.setSelectionRange(start, end);
  for (const entry of carets.values()) entry.caret = entry.caret.map((i) => ot.transformIndex(i, op));
}

function onRemoteOp(message) {
  if (inflight && message.id === inflight.id) return onAck(message.v); // ours, seen on catch-up
  let op = ot.fromJSON(message.op);
  if (inflight) [inflight.op, op] = ot.transform(inflight.op, op);
  if (buffer) [buffer, op] = ot.transform(buffer, op);
  applyRemote(op);
  version = message.v;
}

function onAck(v) {
  version = v;
  inflight = null;
  if (buffer !== null && ready) {
    const next = buffer;
    buffer = null;
    submit(next);
  }
  sendPresence();
}

// -- presence ---------------------------------------------------------------------------
let presenceTimer = null;
function sendPresence() {
  if (!ready || inflight || buffer) return; // only in the server's coordinates
  clearTimeout(presenceTimer);
  presenceTimer = setTimeout(() => send({
    type: "presence", v: version,
    caret: [ot.utf16ToCp(text, area.selectionStart), ot.utf16ToCp(text, area.selectionEnd)],
  }), 80);
}
for (const type of ["keyup", "click", "select", "focus"]) area.addEventListener(type, sendPresence);
setInterval(sendPresence, 5000); // a heartbeat: carets of people who left expire
setInterval(() => {
  const now = Date.now();
  for (const [src, entry] of carets) if (now - entry.seen > 15000) carets.delete(src);
  render();
}, 2000);

function onPresence(message) {
  if (message.v !== version || inflight || buffer) return; // stale coordinates: wait for the next
  const entry = carets.get(message.src) || { color: COLORS[carets.size % COLORS.length] };
  Object.assign(entry, { name: message.name || "someone", caret: message.caret, seen: Date.now() });
  carets.set(message.src, entry);
  render();
}

// Draw others' carets in a mirror of the textarea (same font and wrapping).
function render() {
  $("version").textContent = String(version);
  const marks = [...carets.values()]
    .map((entry) => ({ at: Math.min(entry.caret[1], ot.cpLength(text)), entry }))
    .sort((a, b) => a.at - b.at);
  const chars = Array.from(text);
  const parts = [];
  let last = 0;
  for (const { at, entry } of marks) {
    parts.push(document.createTextNode(chars.slice(last, at).join("")));
    const mark = document.createElement("span");
    mark.className = "remote-caret";
    mark.dataset.name = entry.name;
    mark.style.setProperty("--c", entry.color);
    parts.push(mark);
    last = at;
  }
  parts.push(document.createTextNode(chars.slice(last).join("") + "\n"));
  $("mirror").replaceChildren(...parts);
  $("mirror").scrollTop = area.scrollTop;
  const names = [...carets.values()].map((e) => e.name);
  $("people").textContent = names.length ? `you, ${names.join(", ")}` : "just you";
}
area.addEventListener("scroll", () => { $("mirror").scrollTop = area.scrollTop; });

// -- the connection ---------------------------------------------------------------------------
function onMessage(message) {
  switch (message.type) {
    case "snapshot": {
      // `reset`: the server could not catch this client up (away too long, or
      // the server lost its recent history mid-session), or our op was made
      // on a version too far behind to merge (`reason` says so): the
      // document afresh, and we carry on from it.
      if (message.reason) $("notice").textContent = message.reason;
      else if (message.reset && (inflight || buffer)) {
        $("notice").textContent = "The document was reloaded: your unsent edits could not be merged.";
      }
      if (message.reset) carets.clear(); // placed in the old text; they come back with presence
      inflight = buffer = null;
      const anchor = ot.utf16ToCp(text, area.selectionStart);
      const head = ot.utf16ToCp(text, area.selectionEnd);
      text = message.text;
      area.value = text;
      if (document.activeElement === area) { // keep the caret where it was, as far as it fits
        const end = ot.cpLength(text);
        area.setSelectionRange(ot.cpToUtf16(text, Math.min(anchor, end)),
          ot.cpToUtf16(text, Math.min(head, end)));
      }
      version = message.v;
      break;
    }
    case "op": onRemoteOp(message); break;
    case "ack": if (inflight) onAck(message.v); break;
    case "ready":
      ready = true;
      area.disabled = false;
      setStatus($("status"), "ok", "live");
      if (inflight) send({ type: "op", v: version, op: ot.toJSON(inflight.op), id: inflight.id });
      else if (buffer) { const next = buffer; buffer = null; submit(next); }
      sendPresence();
      break;
    case "presence": onPresence(message); break;
    case "leave": carets.delete(message.src); break;
  }
  render();
}

// realtime.js reconnects (with backoff), from the version we have: `path` is
// called for every attempt. "live" is shown once the server says "ready".
function connectForever() {
  connect(() => {
    const params = new URLSearchParams({ name: $("name").value });
    if (version !== null) params.set("v", String(version));
    return `/editor/${docId}/ws?${params}`;
  }, {
    onOpen: (opened) => { socket = opened; },
    onMessage,
    onClose: (event) => {
      if (event.code === 1008) {
        // Refused (an op that does not fit, a quota spent...): resubmitting
        // the same edits would be refused again, forever. Drop them and come
        // back with a fresh snapshot (no ?v=) instead.
        $("notice").textContent = `Server closed: ${event.reason}`;
        if (inflight || buffer) {
          inflight = buffer = null;
          version = null;
        }
      }
      ready = false;
      setStatus($("status"), "warn", "reconnecting… (keep typing: edits are kept)");
    },
  });
}

connectForever();
