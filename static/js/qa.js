// Q&A board: one EventSource for updates, fetch() for changes, X-Client-Id for identity.
import { setStatus, sleep } from "./status.js";

const $ = (id) => document.getElementById(id);
let clientId = null;
let selected = null;

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

function renderAnswers(question, answers) {
  selected = question;
  $("selected-title").textContent = question;
  $("answer").disabled = $("answer-button").disabled = false;
  $("answers").replaceChildren(...answers.map((text) => {
    const item = document.createElement("li");
    item.textContent = text;
    return item;
  }));
  for (const button of $("questions").querySelectorAll("button")) {
    button.className = button.textContent === selected ? "picked" : "";
  }
}

async function send(path, body, errorId) {
  $(errorId).textContent = "";
  const response = await fetch(path, {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-Client-Id": clientId },
    body: JSON.stringify(body),
  });
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

// One stream at a time; on failure reconnect with our id so the selection survives.
async function streamForever() {
  let backoff = 1000;
  for (;;) {
    const url = "/qa/stream" + (clientId ? `?client=${encodeURIComponent(clientId)}` : "");
    const source = new EventSource(url);
    await new Promise((resolve) => {
      source.addEventListener("login", (event) => {
        clientId = JSON.parse(event.data).id;
        backoff = 1000;
        setStatus($("status"), "ok", "live");
      });
      source.addEventListener("questions", (event) => renderQuestions(JSON.parse(event.data).questions));
      source.addEventListener("answers", (event) => {
        const { question, answers } = JSON.parse(event.data);
        renderAnswers(question, answers);
      });
      source.addEventListener("ping", () => setStatus($("status"), "ok", "live"));
      source.addEventListener("error", () => { source.close(); resolve(); });
      source.addEventListener("close", () => { source.close(); resolve(); });
    });
    setStatus($("status"), "warn", "reconnecting…");
    await sleep(backoff);
    backoff = Math.min(backoff * 2, 15000);
  }
}

streamForever();
