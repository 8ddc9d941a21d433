// The SSE clock: one event a second on /sse/clock (realtime.js reconnects it).
import { stream } from "./realtime.js";
import { showStatus } from "./status.js";

const clock = document.getElementById("clock");
const pid = document.getElementById("pid");
const ticks = document.getElementById("ticks");
let count = 0;

stream("/sse/clock", {
  events: {
    message: (tick) => {
      clock.textContent = new Date(tick.epoch_ms).toLocaleTimeString();
      pid.textContent = String(tick.pid);
      ticks.textContent = String(++count);
    },
  },
  onStatus: showStatus(document.getElementById("status"), "streaming"),
});
