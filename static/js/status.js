// Small helpers shared by the demo pages.

export function setStatus(element, kind, text) {
  element.className = `status ${kind}`;
  element.textContent = text;
}

// An onStatus for realtime.js's connections: shows their state in `element`,
// `liveText` while live (and the transport, when `withTransport`).
export function showStatus(element, liveText, { withTransport = false } = {}) {
  return ({ state, transport, detail }) => {
    const via = withTransport && transport ? ` (${transport})` : "";
    if (state === "live") setStatus(element, "ok", liveText + via);
    else if (state === "connecting") setStatus(element, "", `connecting${via}…`);
    else if (state === "reconnecting") setStatus(element, "warn", `reconnecting${via}…`);
    else if (state === "paused") setStatus(element, "", "paused while hidden");
    else if (state === "refused") setStatus(element, "error", `refused: ${detail}`);
    else setStatus(element, "", state);
  };
}
