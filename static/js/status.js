// Small helpers shared by the demo pages.

export function setStatus(element, kind, text) {
  element.className = `status ${kind}`;
  element.textContent = text;
}

export function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// Keep a WebSocket to `path()` open, reconnecting with backoff (0.5 s to 10 s).
// `path` is called for every attempt, so it can carry resume state (?v=...).
// onOpen(socket) runs on each connection, onMessage(parsed JSON) per frame,
// onClose(event) before the wait to reconnect.
export async function keepWebSocket(path, { onOpen, onMessage, onClose }) {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  let backoff = 500;
  for (;;) {
    const socket = new WebSocket(`${scheme}://${location.host}${path()}`);
    await new Promise((resolve) => {
      socket.addEventListener("open", () => { backoff = 500; onOpen?.(socket); });
      socket.addEventListener("message", (event) => onMessage?.(JSON.parse(event.data)));
      socket.addEventListener("close", (event) => { onClose?.(event); resolve(); });
    });
    await sleep(backoff);
    backoff = Math.min(backoff * 2, 10000);
  }
}
