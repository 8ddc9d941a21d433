// The mouse-tracking visitor page: one position per animation frame over a WebSocket.
import { connect } from "/static/js/realtime.js";
import { showStatus } from "/static/js/status.js";
const $ = (id) => document.getElementById(id);
let socket = null, pending = null, scheduled = false, sent = 0;
addEventListener("mousemove", (event) => {
  pending = { x: event.clientX / innerWidth, y: event.clientY / innerHeight };
  if (scheduled) return;
  scheduled = true;
  requestAnimationFrame(() => { // one message per frame, whatever the mouse does
    scheduled = false;
    if (pending && socket?.readyState === WebSocket.OPEN) {
      socket.send(JSON.stringify(pending));
      $("sent").textContent = String(++sent);
    }
    pending = null;
  });
});
connect("/track/ws", {
  onOpen: (opened) => { socket = opened; },
  onMessage: (message) => { $("me").textContent = message.id; },
  onStatus: showStatus($("status"), "tracked"),
});
