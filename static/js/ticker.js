// Poll /ticker/quote at the pace the server asks for (callIn).
const $ = (id) => document.getElementById(id);
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
  let callIn = 10000;
  try {
    const response = await fetch(`/ticker/quote?symbol=${encodeURIComponent(watching)}`, { cache: "no-store" });
    const body = await response.json();
    callIn = body.callIn;
    $("polls").textContent = String(++polls);
    if (body.quote) {
      $("error").textContent = "";
      render(body.quote);
    } else {
      $("error").textContent = body.error;
    }
  } catch (error) {
    $("error").textContent = `network error: ${error.message}`;
  }
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
