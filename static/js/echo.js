// The echo page: a WebSocket that answers every frame (subprotocol "json" when offered).
import { setStatus } from "/static/js/status.js";
const $ = (id) => document.getElementById(id);
let socket = null;
function log(text) { const li = document.createElement("li"); li.textContent = text; $("log").append(li); }
$("connect").addEventListener("click", () => {
  socket?.close();
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  socket = $("json").checked ? new WebSocket(`${scheme}://${location.host}/ws/echo`, ["json"])
                             : new WebSocket(`${scheme}://${location.host}/ws/echo`);
  socket.addEventListener("open", () => {
    setStatus($("status"), "ok", `open (subprotocol: ${socket.protocol || "none"})`);
    $("message").disabled = $("send").disabled = false;
  });
  socket.addEventListener("message", (event) => log(`← ${event.data}`));
  socket.addEventListener("close", (event) => {
    setStatus($("status"), "warn", `closed ${event.code} ${event.reason}`);
    $("message").disabled = $("send").disabled = true;
  });
});
$("form").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("message").value;
  socket.send($("json").checked ? JSON.stringify({ text }) : text);
  log(`→ ${text}`);
  $("message").value = "";
});
