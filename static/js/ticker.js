// Poll /ticker/quote at the pace the server asks for (callIn): never faster
// than once a second whatever it answers, and not at all once it refuses.
const $ = (id) => document.getElementById(id);
const MIN_CALL_IN = 1000;
const RETRY_CALL_IN = 10000; // a network error, or an answer without callIn
const FIELDS = ["price", "change", "changePercent", "open", "high", "low", "volume"];
let symbol = null;
let timer = null;
let previous = {};
let polls = 0;

function render(quote) {
  const rows = FIELDS.filter((name) => name in quote).map((name) => {
    const row = document.createElement("tr");
    const label = document.createElement("th");
    label.textContent = name;
    const cell = document.createElement("td");
    cell.id = `field-${name}`;
    cell.textContent = String(quote[name]);
    if (name === "change" || name === "changePercent") cell.classList.add(quote[name] >= 0 ? "up" : "down");
    if (name in previous && previous[name] !== quote[name]) {
      cell.classList.add(quote[name] > previous[name] ? "flash-up" : "flash-down");
    }
    row.append(label, cell);
    return row;
  });
  $("fields").replaceChildren(...rows);
  previous = quote;
}

async function poll(watching) {
  if (watching !== symbol) return; // a newer symbol took over
  let callIn = RETRY_CALL_IN;
  try {
    const response = await fetch(`/ticker/quote?symbol=${encodeURIComponent(watching)}`, { cache: "no-store" });
    const body = await response.json().catch(() => ({}));
    $("polls").textContent = String(++polls);
    if ("callIn" in body) callIn = body.callIn;
    else if (response.status >= 400 && response.status < 500) callIn = null; // refused: asking again will not help
    if (body.quote) {
      $("error").textContent = "";
      render(body.quote);
    } else {
      $("error").textContent = body.error || `HTTP ${response.status}`;
    }
  } catch (error) {
    $("error").textContent = `network error: ${error.message}`;
  }
  if (callIn !== null) callIn = Math.max(MIN_CALL_IN, Number(callIn) || RETRY_CALL_IN);
  $("callin").textContent = callIn === null ? "never (stopped)" : String(callIn);
  if (callIn !== null && watching === symbol) timer = setTimeout(() => poll(watching), callIn);
}

$("symbol-form").addEventListener("submit", (event) => {
  event.preventDefault();
  clearTimeout(timer);
  symbol = $("symbol").value.trim().toUpperCase();
  previous = {};
  poll(symbol);
});

symbol = $("symbol").value.trim().toUpperCase();
poll(symbol);
