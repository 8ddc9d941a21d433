// Any channel over any transport, with realtime.js. The query string says
// which: ?channel=chat.demo&transport=auto (and since=<id>; retry_better_after=<ms>;
// pause_when_hidden=1).
import { publish, subscribe } from "./realtime.js";
import { showStatus } from "./status.js";

const $ = (id) => document.getElementById(id);
const query = new URLSearchParams(location.search);
const channel = query.get("channel") || "chat.demo";
const transport = query.get("transport") || "auto";
$("channel").value = channel;
$("transport").value = transport;

function add(text, className, dataset = {}) {
  const item = document.createElement("li");
  item.textContent = text; // text, never HTML
  if (className) item.className = className;
  Object.assign(item.dataset, dataset);
  $("messages").append(item);
}

try {
  subscribe(channel, {
    transport,
    since: query.get("since") ?? undefined,
    retryBetterAfter: Number(query.get("retry_better_after")) || undefined,
    pauseWhenHidden: query.get("pause_when_hidden") === "1",
    onMessage: ({ id, data, transport: via, servedBy }) =>
      add(data, "", { id, via, servedBy: servedBy ?? "" }),
    onReset: ({ cursor }) => add(`Messages were missed: the channel goes on from ${cursor}.`,
      "note", { reset: cursor }),
    onStatus: showStatus($("status"), "live", { withTransport: true }),
  });
} catch (error) { // a transport that does not exist
  $("error").textContent = error.message;
}

// Publishing needs a logged-in user who may publish on the channel (the session
// cookie, with its CSRF token).
$("send").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("error").textContent = "";
  try {
    const me = await fetch("/auth/me", { credentials: "same-origin" });
    const csrfToken = me.ok ? (await me.json()).csrfToken : undefined;
    await publish(channel, $("message").value, { csrfToken });
    $("message").value = "";
  } catch (error) {
    $("error").textContent = error.reason ?? error.message;
  }
});
