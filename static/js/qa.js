// Q&A board: one EventSource for updates, fetch() for changes, X-Client-Id for identity.
import { stream } from "./realtime.js";
import { showStatus } from "./status.js";

const $ = (id) => document.getElementById(id);
let clientId = null;
let selected = null;
let csrfToken = null; // a logged-in administrator's, for clearing the board

function renderQuestions(questions) {
  const list = $("questions");
  list.replaceChildren(...questions.map((text) => {
    const item = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = text; // text, never HTML
    button.className = text === selected ? "picked" : "";
    button.addEventListener("click", () => select(text));
    item.append(button);
    return item;
  }));
}

// question null: nothing is followed (the question expired, rolled off or
// the board was cleared).
function renderAnswers(question, answers) {
  selected = question;
  $("selected-title").textContent = question ?? "Pick a question";
  $("answer").disabled = $("answer-button").disabled = question === null;
  $("answers").replaceChildren(...answers.map((text) => {
    const item = document.createElement("li");
    item.textContent = text;
    return item;
  }));
  for (const button of $("questions").querySelectorAll("button")) {
    button.className = button.textContent === selected ? "picked" : "";
  }
}

async function send(path, body, errorId, method = "POST") {
  $(errorId).textContent = "";
  const headers = { "Content-Type": "application/json", "X-Client-Id": clientId };
  if (csrfToken) headers["X-CSRF-Token"] = csrfToken;
  const response = await fetch(path, { method, headers, body: JSON.stringify(body) });
  if (!response.ok) {
    const problem = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
    $(errorId).textContent = problem.error;
    return false;
  }
  return true;
}

function select(question) {
  return send("/qa/select", { question }, "answer-error");
}

$("ask-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  if (await send("/qa/questions", { question: $("question").value }, "ask-error")) {
    $("question").value = "";
  }
});

$("answer-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  if (await send("/qa/answers", { answer: $("answer").value }, "answer-error")) {
    $("answer").value = "";
  }
});

// Administrators (logged in on /auth/) get a button that clears the board.
async function showAdminTools() {
  const response = await fetch("/auth/me", { credentials: "same-origin" });
  if (!response.ok) return;
  const me = await response.json();
  if (!me.user.roles.includes("admin")) return;
  csrfToken = me.csrfToken ?? null;
  $("admin-tools").hidden = false;
}

$("clear-board").addEventListener("click", () => {
  if (confirm("Remove every question and answer from the board?")) {
    send("/qa/questions", {}, "ask-error", "DELETE");
  }
});

// One stream; realtime.js reconnects it with our id, so the selection survives.
stream(() => "/qa/stream" + (clientId ? `?client=${encodeURIComponent(clientId)}` : ""), {
  events: {
    login: ({ id }) => { clientId = id; },
    questions: ({ questions }) => renderQuestions(questions),
    answers: ({ question, answers }) => renderAnswers(question, answers),
  },
  onStatus: showStatus($("status"), "live"),
});

showAdminTools();
