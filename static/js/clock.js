import { setStatus } from "./status.js";

const status = document.getElementById("status");
const clock = document.getElementById("clock");
const pid = document.getElementById("pid");
const ticks = document.getElementById("ticks");
let count = 0;

const source = new EventSource("/sse/clock");
source.addEventListener("open", () => setStatus(status, "ok", "streaming"));
source.addEventListener("error", () => setStatus(status, "warn", "reconnecting…"));
source.addEventListener("message", (event) => {
  const tick = JSON.parse(event.data);
  clock.textContent = new Date(tick.epoch_ms).toLocaleTimeString();
  pid.textContent = String(tick.pid);
  ticks.textContent = String(++count);
});
