// The child-process lab (administrators): runs on one WebSocket (blueprints/lab.py).
// The allow-list comes from the server's hello; each run is a box of its output.
import { connect } from "/static/js/realtime.js";
import { setStatus, showStatus } from "/static/js/status.js";
const $ = (id) => document.getElementById(id);
function el(tag, props = {}, ...children) {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children);
  return node;
}
const runs = new Map(); // run id -> {box, log, ended}
let commands = {};

const socket = connect("/admin/lab/ws", {
  onMessage: (event) => handlers[event.type]?.(event),
  onClose: (event) => {
    // Our runs ended with the connection (the server killed them).
    for (const run of runs.values()) if (!run.ended) end(run, "connection closed: killed");
    if (event.code === 1008) { // refused: not an administrator, or a frame outside the allow-list
      socket.close();
      setStatus($("status"), "error", `refused: ${event.reason}`);
    }
  },
  onStatus: showStatus($("status"), "live"),
});

function send(frame) {
  $("refused").textContent = "";
  socket.socket?.send(JSON.stringify(frame));
}

const handlers = {
  hello({ commands: allowed, lines, limits }) {
    commands = allowed;
    $("spawn-command").replaceChildren(...Object.keys(allowed).map((name) => el("option", { value: name, textContent: name })));
    $("exec-line").replaceChildren(...lines.map((line) => el("option", { value: line, textContent: line })));
    $("limits").textContent = `At most ${limits.per_admin} children per administrator and ${limits.per_worker} per worker; each is killed after ${limits.seconds} s, or when this page closes.`;
    showArgument();
  },
  started({ run, kind, pid, argv }) {
    const log = el("pre");
    const box = el("article", { className: "run" }, el("header", { textContent: `#${run} ${kind} · pid ${pid} · ${argv.join(" ")}` }), log);
    box.dataset.run = run;
    box.dataset.kind = kind;
    box.dataset.pid = pid;
    const entry = { box, log, ended: false };
    runs.set(run, entry);
    box.append(controls(run, kind));
    $("runs").prepend(box);
  },
  output({ run, stream, line }) { write(run, line, stream === "stderr" ? "stderr" : ""); },
  message({ run, data }) { write(run, `message: ${JSON.stringify(data)}`, "message"); },
  result({ run, stdout, stderr }) {
    for (const line of stdout.split("\n").filter(Boolean)) write(run, line, "");
    for (const line of stderr.split("\n").filter(Boolean)) write(run, line, "stderr");
  },
  exit({ run, code, signal, reason }) {
    const how = signal ? `killed by ${signal}` : `exited with code ${code}`;
    end(runs.get(run), reason ? `${how} (${reason})` : how);
  },
  refused({ reason }) { $("refused").textContent = reason; },
};

function write(run, text, className) {
  const entry = runs.get(run);
  if (!entry) return;
  entry.log.append(el("div", { className, textContent: text }));
  entry.log.scrollTop = entry.log.scrollHeight;
}

function end(entry, text) {
  if (!entry) return;
  entry.ended = true;
  entry.box.dataset.ended = text;
  entry.box.querySelector(".controls")?.remove();
  entry.box.append(el("p", { className: "ended", textContent: text }));
}

function controls(run, kind) {
  const bar = el("div", { className: "controls" });
  if (kind === "fork") {
    const text = el("input", { type: "text", placeholder: "a message (\"reset\" restarts the count)" });
    const post = el("button", { textContent: "send" });
    post.addEventListener("click", () => {
      if (!text.value) return;
      write(run, `to child: ${text.value}`, "to-child");
      send({ type: "send", run, text: text.value });
      text.value = "";
    });
    const disconnect = el("button", { textContent: "disconnect" });
    disconnect.addEventListener("click", () => send({ type: "disconnect", run }));
    bar.append(text, post, disconnect);
  }
  const kill = el("button", { textContent: "kill" });
  kill.addEventListener("click", () => send({ type: "kill", run }));
  bar.append(kill);
  return bar;
}

function showArgument() {
  const range = commands[$("spawn-command").value];
  $("spawn-arg").hidden = !range;
  if (range) Object.assign($("spawn-arg"), { min: range[0], max: range[1] });
}

$("spawn-command").addEventListener("change", showArgument);
$("spawn").addEventListener("click", () => {
  const command = $("spawn-command").value;
  const range = commands[command];
  if (!range) return send({ type: "spawn", command });
  // kept in range here: the server closes the socket on an argument outside it
  const arg = Math.min(range[1], Math.max(range[0], Math.round(Number($("spawn-arg").value) || range[0])));
  $("spawn-arg").value = arg;
  send({ type: "spawn", command, arg });
});
$("exec").addEventListener("click", () => send({ type: "exec", line: $("exec-line").value }));
$("execFile").addEventListener("click", () => send({ type: "execFile", line: $("exec-line").value }));
$("fork").addEventListener("click", () => send({ type: "fork" }));
