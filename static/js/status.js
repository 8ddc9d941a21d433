// Small helpers shared by the demo pages.

export function setStatus(element, kind, text) {
  element.className = `status ${kind}`;
  element.textContent = text;
}

export function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
