// The long-poll broadcast: realtime.js holds GET /sub/broadcast?cursor=<last id>
// open, and asks again from the last line it has.
import { subscribe } from "./realtime.js";
import { showStatus } from "./status.js";

const list = document.getElementById("lines");

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

subscribe(list.dataset.channel, {
  transport: "longpoll",
  // Start where the server was when it rendered the page: nothing sent since is missed.
  since: list.dataset.cursor,
  onMessage: ({ data, servedBy }) => addLine(data, servedBy),
  onReset: () => addLine("Some lines were missed: the history moved on.", null, "note"),
  onStatus: showStatus(document.getElementById("status"), "listening"),
});
