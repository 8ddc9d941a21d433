// realtime.js: the browser client of this server. An ES module, no dependency.
//
//   import { subscribe, publish } from "/static/js/realtime.js";
//   const news = subscribe("news", {
//     onMessage: ({ id, data }) => show(data),       // every message once, in order
//     onReset: () => reload(),                       // messages were missed: re-read
//     onStatus: ({ state, transport }) => badge(state, transport),
//   });
//   await publish("news", "hello", { token });       // its id
//   news.close();
//
// `subscribe(channel, options)` keeps one channel open over WebSocket, SSE or
// long-poll (`transport: "auto"` tries them in that order). It carries one
// cursor, the id of the last message delivered, across every reconnect and
// every switch of transport, so nothing is lost or repeated: each connection
// resumes after that id, and a message at or before it is never delivered
// twice. When the server no longer has that id, `onReset` says so and
// delivery goes on. `stream()` (an app's event stream) and `connect()` (an
// app's WebSocket) reconnect the same way, for the demos that speak their own
// protocol.
//
// Options of subscribe:
//   transport        "auto" (default), "websocket", "sse" or "longpoll"
//   since            where to start: an id (after it), "0" (the oldest kept),
//                    undefined (from now)
//   onMessage({id, data, transport, servedBy})  data: the text as published
//                    (a JSON message: its JSON text)
//   onReset({cursor}), onStatus({state, transport, detail})
//                    state: "connecting", "live", "reconnecting", "paused",
//                    "refused" (for good: detail says why) or "closed"
//   accessToken      a bearer token, for private-* channels
//   pauseWhenHidden  close while the page is hidden, resume when it is shown
//   retryBetterAfter ms on a fallback transport before trying the preferred
//                    one again (default 30,000)
//   connectTimeout   ms a WebSocket or event stream may take to say it is
//                    subscribed before it counts as failed (default 10,000: a
//                    proxy may accept a connection and pass nothing)

const ORDER = ["websocket", "sse", "longpoll"];
const FAILURES_BEFORE_FALLBACK = 2;
const SHORT_LIVED_MS = 2000; // a connection that drops sooner counts as a failure

export function subscribe(channel, options = {}) {
  return new Subscription(channel, options);
}

// Publish `data` on `channel`: its id. `json`: send it as JSON (a value is
// stringified). Credentials: `token` (bearer), or the page's session cookie
// with its `csrfToken`. Throws a RealtimeError with the server's reason.
export async function publish(channel, data, { json = false, token, csrfToken, base = "" } = {}) {
  const headers = { "Content-Type": json ? "application/json" : "text/plain; charset=utf-8" };
  if (token) headers.Authorization = `Bearer ${token}`;
  if (csrfToken) headers["X-CSRF-Token"] = csrfToken;
  const body = json && typeof data !== "string" ? JSON.stringify(data) : String(data);
  const response = await fetch(`${base}/pub/${encodeURIComponent(channel)}`,
    { method: "POST", headers, body, credentials: "same-origin" });
  const answer = await response.json().catch(() => ({}));
  if (!response.ok) throw new RealtimeError(response.status, answer.error ?? `HTTP ${response.status}`);
  return answer.id;
}

export class RealtimeError extends Error {
  constructor(status, reason) {
    super(`${status}: ${reason}`);
    this.status = status;
    this.reason = reason;
  }
}

// -- reconnecting, shared by every kind of connection -------------------------------------

// Runs `attempt()` (a connection's whole life: resolves with how it ended,
// {live, fatal, error, retrySoon}) again and again, backing off with jitter
// after failures, pausing while the page is hidden if asked, until close().
class Reconnector {
  constructor(attempt, { onStatus, pauseWhenHidden = false, describe = () => ({}) }) {
    this.attempt = attempt;
    this.onStatus = onStatus;
    this.describe = describe;
    this.closed = false;
    this.failures = 0;
    this.current = null; // {close()} of the open connection
    this.wake = null;
    if (pauseWhenHidden) {
      this.onVisibility = () => {
        if (document.hidden) this.current?.close();
        this.wake?.();
      };
      document.addEventListener("visibilitychange", this.onVisibility);
    }
    this.pauseWhenHidden = pauseWhenHidden;
    queueMicrotask(() => this.run()); // once the owner has finished setting up
  }

  status(state, detail) {
    this.onStatus?.({ state, detail, ...this.describe() });
  }

  async run() {
    while (!this.closed) {
      if (this.pauseWhenHidden && document.hidden) {
        this.status("paused");
        await this.sleep(Infinity);
        continue;
      }
      this.status(this.failures ? "reconnecting" : "connecting");
      const began = Date.now();
      const end = await this.attempt(this);
      this.current = null;
      if (this.closed) break;
      if (this.pauseWhenHidden && document.hidden) continue; // let go on purpose: pause now
      if (end.fatal) {
        this.status("refused", end.fatal);
        this.close(false);
        return;
      }
      const failed = !end.live || (end.error && Date.now() - began < SHORT_LIVED_MS);
      this.failures = failed ? this.failures + 1 : 0;
      this.afterEnd?.(end, failed);
      if (end.switching) continue;
      this.status("reconnecting", end.error);
      // A server that is restarting asks to be called back at once (with a
      // little jitter: every client it had comes back at the same moment).
      const backoff = end.retrySoon && !failed ? 250
        : Math.min(500 * 2 ** Math.max(this.failures - 1, 0), 15000);
      await this.sleep(backoff * (0.5 + Math.random() / 2));
    }
  }

  sleep(ms) {
    return new Promise((resolve) => {
      const timer = ms === Infinity ? null : setTimeout(done, ms);
      const self = this;
      function done() { clearTimeout(timer); self.wake = null; resolve(); }
      this.wake = done;
    });
  }

  close(say = true) {
    if (this.closed) return;
    this.closed = true;
    if (this.onVisibility) document.removeEventListener("visibilitychange", this.onVisibility);
    this.current?.close();
    this.wake?.();
    if (say) this.status("closed");
  }
}

// -- channels: one cursor over three transports -------------------------------------------

class Subscription {
  constructor(channel, { transport = "auto", since, onMessage, onReset, onStatus, accessToken,
    pauseWhenHidden = false, retryBetterAfter = 30000, connectTimeout = 10000, base = "" } = {}) {
    if (transport !== "auto" && !ORDER.includes(transport)) {
      throw new TypeError(`transport must be "auto" or one of ${ORDER.join(", ")}`);
    }
    this.channel = channel;
    this.path = `${base}/sub/${encodeURIComponent(channel)}`;
    this.choices = transport === "auto" ? ORDER : [transport];
    this.level = 0; // index in choices of the transport in use
    this.cursor = since ?? null;
    this.onMessage = onMessage;
    this.onReset = onReset;
    this.accessToken = accessToken;
    this.retryBetterAfter = retryBetterAfter;
    this.connectTimeout = connectTimeout;
    this.servedBy = null;
    this.keeper = new Reconnector((keeper) => this.connect(keeper),
      { onStatus, pauseWhenHidden, describe: () => ({ transport: this.transport }) });
    this.keeper.afterEnd = (end, failed) => this.fallBack(end, failed);
  }

  get transport() { return this.choices[this.level]; }

  close() { this.keeper.close(); }

  connect(keeper) {
    const run = { websocket: viaWebSocket, sse: viaEventSource, longpoll: viaLongPoll }[this.transport];
    return run(this, keeper);
  }

  // A transport that cannot connect, or keeps failing, gives way to the next.
  fallBack(end, failed) {
    if (failed && this.keeper.failures >= FAILURES_BEFORE_FALLBACK
        && this.level < this.choices.length - 1) {
      this.level += 1;
      this.keeper.failures = 0;
      end.switching = true;
    }
  }

  // Called by a transport once it is live: after `retryBetterAfter` on a
  // fallback, it ends (as if switching) and the preferred transport is tried.
  live(keeper, end) {
    keeper.status("live");
    if (this.level === 0) return () => {};
    const timer = setTimeout(() => {
      this.level = 0;
      end.switching = true;
      keeper.current?.close();
    }, this.retryBetterAfter);
    return () => clearTimeout(timer);
  }

  subscribed(cursor) {
    if (this.cursor === null) this.cursor = cursor; // from now: this is "now"
  }

  deliver(id, data) {
    if (this.cursor !== null && compareIds(id, this.cursor) <= 0) return; // had it
    this.cursor = id;
    this.onMessage?.({ id, data: typeof data === "string" ? data : JSON.stringify(data),
      transport: this.transport, servedBy: this.servedBy });
  }

  // Messages were missed; delivery goes on from `position` (a long-poll's
  // answer carries the messages after the reset with it: from null).
  reset(cursor, position = cursor) {
    this.cursor = position;
    this.onReset?.({ cursor });
  }

  query(cursorName) {
    const params = new URLSearchParams();
    if (this.cursor !== null) params.set(cursorName, this.cursor);
    if (this.accessToken) params.set("access_token", this.accessToken);
    const text = params.toString();
    return text ? `?${text}` : "";
  }
}

function compareIds(a, b) { // "1700000000000-3", or "0"
  const [am, as = 0] = a.split("-").map(Number), [bm, bs = 0] = b.split("-").map(Number);
  return am - bm || as - bs;
}

function viaWebSocket(sub, keeper) {
  return new Promise((resolve) => {
    const end = { live: false };
    let stopTimer = () => {};
    const socket = new WebSocket(webSocketUrl(sub.path + "/ws" + sub.query("last_event_id")));
    keeper.current = { close: () => socket.close(1000) };
    const deadline = setTimeout(() => socket.close(1000), sub.connectTimeout);
    socket.addEventListener("message", (event) => {
      let frame;
      try { frame = JSON.parse(event.data); } catch { socket.close(1003); return; }
      if ("subscribed" in frame) {
        clearTimeout(deadline);
        sub.subscribed(frame.cursor);
        sub.servedBy = frame.served_by ?? null;
        end.live = true;
        stopTimer = sub.live(keeper, end);
      } else if (frame.reset) sub.reset(frame.cursor);
      else if ("id" in frame) sub.deliver(frame.id, frame.data);
    });
    socket.addEventListener("close", (event) => {
      stopTimer();
      clearTimeout(deadline);
      // 1008: refused for good (a bad channel name, no access to it)
      if (event.code === 1008) end.fatal = event.reason || "refused";
      end.error = `closed ${event.code}${event.reason ? `: ${event.reason}` : ""}`;
      end.retrySoon = event.code === 1012; // the server restarts
      resolve(end);
    });
  });
}

function viaEventSource(sub, keeper) {
  return new Promise((resolve) => {
    const end = { live: false };
    let stopTimer = () => {};
    // The cursor goes in the query: EventSource sends Last-Event-ID only on
    // its own reconnects, and this client reconnects itself.
    const source = new EventSource(sub.path + sub.query("last_event_id"));
    const deadline = setTimeout(() => finish("no answer in time"), sub.connectTimeout);
    const finish = (error, retrySoon = false) => {
      source.close();
      stopTimer();
      clearTimeout(deadline);
      Object.assign(end, { error, retrySoon });
      resolve(end);
    };
    keeper.current = { close: () => finish("closed") };
    source.addEventListener("subscribed", (event) => {
      clearTimeout(deadline);
      const hello = JSON.parse(event.data);
      sub.subscribed(hello.cursor);
      sub.servedBy = hello.served_by ?? null;
      end.live = true;
      stopTimer = sub.live(keeper, end);
    });
    source.addEventListener("message", (event) => sub.deliver(event.lastEventId, event.data));
    source.addEventListener("reset", (event) => sub.reset(JSON.parse(event.data).cursor));
    source.addEventListener("close", (event) => finish(JSON.parse(event.data).reason, true));
    source.addEventListener("error", () => finish("the stream failed"));
  });
}

async function viaLongPoll(sub, keeper) {
  const end = { live: false };
  let stopTimer = () => {};
  const headers = { Accept: "application/json" };
  if (sub.accessToken) headers.Authorization = `Bearer ${sub.accessToken}`;
  for (;;) {
    const controller = new AbortController();
    keeper.current = { close: () => controller.abort() };
    let response, answer;
    try {
      response = await fetch(sub.path + sub.query("cursor"),
        { headers, cache: "no-store", signal: controller.signal, credentials: "same-origin" });
      answer = await response.json();
    } catch (error) {
      stopTimer();
      return { ...end, error: controller.signal.aborted ? "closed" : error.message };
    }
    if (!response.ok) {
      stopTimer();
      const reason = answer?.error ?? `HTTP ${response.status}`;
      const forGood = response.status >= 400 && response.status < 500
        && response.status !== 408 && response.status !== 429;
      return { ...end, fatal: forGood ? reason : undefined, error: reason };
    }
    sub.servedBy = response.headers.get("X-Served-By");
    if (!end.live) {
      end.live = true;
      stopTimer = sub.live(keeper, end);
    }
    if (answer.reset) sub.reset(answer.cursor, null);
    for (const item of answer.events) sub.deliver(item.id, item.data);
    sub.subscribed(answer.cursor);
    if (end.switching) return end;
  }
}

function parsed(text) {
  try { return JSON.parse(text); } catch { return text; }
}

function webSocketUrl(path) {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  return `${scheme}://${location.host}${path}`;
}

// -- an app's own stream or socket --------------------------------------------------------

// Keep an EventSource on `url` (or `url()`, called for every attempt, so it
// can carry state) open: `events` maps event names to handlers of the parsed
// JSON data ("message" included). Reconnects with backoff and jitter; an
// `event: close` from the server (a restart) is called back at once.
export function stream(url, { events = {}, onStatus, pauseWhenHidden = false } = {}) {
  const keeper = new Reconnector((keeper) => new Promise((resolve) => {
    const source = new EventSource(typeof url === "function" ? url() : url);
    const end = { live: false };
    const finish = (error, retrySoon = false) => {
      source.close();
      resolve({ ...end, error, retrySoon });
    };
    keeper.current = { close: () => finish("closed") };
    source.addEventListener("open", () => { end.live = true; keeper.status("live"); });
    for (const [name, handle] of Object.entries(events)) {
      source.addEventListener(name, (event) => handle(parsed(event.data), event));
    }
    source.addEventListener("close", (event) => finish(JSON.parse(event.data).reason, true));
    source.addEventListener("error", () => finish("the stream failed"));
  }), { onStatus, pauseWhenHidden });
  return { close: () => keeper.close() };
}

// Keep a WebSocket to `path` (or `path()`, called for every attempt) open:
// onOpen(socket) on each connection, onMessage(parsed JSON) per frame,
// onClose(event) when it ends. Reconnects with backoff and jitter.
export function connect(path, { onOpen, onMessage, onClose, onStatus, pauseWhenHidden = false } = {}) {
  let socket = null;
  const keeper = new Reconnector((keeper) => new Promise((resolve) => {
    socket = new WebSocket(webSocketUrl(typeof path === "function" ? path() : path));
    const end = { live: false };
    keeper.current = { close: () => socket.close(1000) };
    socket.addEventListener("open", () => { end.live = true; keeper.status("live"); onOpen?.(socket); });
    socket.addEventListener("message", (event) => onMessage?.(JSON.parse(event.data)));
    socket.addEventListener("close", (event) => {
      onClose?.(event);
      resolve({ ...end, error: `closed ${event.code}`, retrySoon: event.code === 1012 });
    });
  }), { onStatus, pauseWhenHidden });
  return {
    close: () => keeper.close(),
    get socket() { return socket; },
  };
}
