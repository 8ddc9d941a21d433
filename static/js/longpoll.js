// Long-poll loop: GET /sub/broadcast?cursor=<last id>, render, repeat.
import { setStatus, sleep } from "./status.js";

const list = document.getElementById("lines");
const CHANNEL = list.dataset.channel;
const status = document.getElementById("status");

function addLine(text, servedBy, className) {
  const item = document.createElement("li");
  item.textContent = text; // text, never HTML
  if (className) item.className = className;
  if (servedBy) {
    const note = document.createElement("small");
    note.textContent = `via ${servedBy}`;
    item.append(note);
  }
  list.append(item);
}

async function pollForever() {
  // Start where the server was when it rendered the page: nothing sent since is missed.
  let cursor = list.dataset.cursor;
  let backoff = 500;
  for (;;) {
    const url = `/sub/${CHANNEL}?cursor=${encodeURIComponent(cursor)}`;
    try {
      if (backoff === 500) setStatus(status, "ok", "listening");
      const response = await fetch(url, { headers: { Accept: "application/json" }, cache: "no-store" });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const body = await response.json();
      const servedBy = response.headers.get("X-Served-By");
      if (body.reset) addLine("Some lines were missed: the history moved on.", null, "note");
      for (const event of body.events) {
        addLine(typeof event.data === "string" ? event.data : JSON.stringify(event.data), servedBy);
      }
      cursor = body.cursor;
      backoff = 500;
    } catch (error) {
      setStatus(status, "warn", `reconnecting (${error.message})…`);
      await sleep(backoff);
      backoff = Math.min(backoff * 2, 15000);
    }
  }
}

pollForever();
