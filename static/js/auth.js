// The four login flows of /auth/, with what each sends shown on the page.
import { setStatus } from "./status.js";

const $ = (id) => document.getElementById(id);
const utf8 = new TextEncoder();
let token = null;

function credentials() {
  return { username: $("username").value, password: $("password").value };
}

function show(logId, lines) {
  $(logId).textContent = lines.join("\n");
}

async function call(method, url, { body, headers = {} } = {}) {
  const init = { method, headers: { ...headers }, credentials: "same-origin" };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(url, init);
  const text = await response.text();
  let data = null;
  try { data = JSON.parse(text); } catch { data = text; }
  return { status: response.status, data, headers: response.headers };
}

function describe(method, url, headers, body) {
  const lines = [`→ ${method} ${url}`];
  for (const [name, value] of Object.entries(headers || {})) lines.push(`  ${name}: ${value}`);
  if (body !== undefined) lines.push(`  ${JSON.stringify(body)}`);
  return lines;
}

function answer(result) {
  return [`← ${result.status}`, `  ${JSON.stringify(result.data)}`];
}

async function refreshWhoami() {
  const me = await call("GET", "/auth/me");
  if (me.status === 200) setStatus($("whoami"), "ok", `${me.data.user.name} (${me.data.auth})`);
  else setStatus($("whoami"), "", "not logged in");
}

// -- 1. Basic -----------------------------------------------------------------
$("basic-go").addEventListener("click", async () => {
  const { username, password } = credentials();
  const value = "Basic " + btoa(String.fromCharCode(...utf8.encode(`${username}:${password}`)));
  const headers = { Authorization: value };
  const result = await call("GET", "/auth/basic", { headers });
  show("basic-log", [...describe("GET", "/auth/basic", headers), ...answer(result)]);
});

// -- 2. SCRAM-style challenge/response with WebCrypto ---------------------------
const b64 = {
  encode: (bytes) => btoa(String.fromCharCode(...bytes)),
  decode: (text) => Uint8Array.from(atob(text), (c) => c.charCodeAt(0)),
};

async function hmac(keyBytes, message) {
  const key = await crypto.subtle.importKey("raw", keyBytes, { name: "HMAC", hash: "SHA-256" },
    false, ["sign"]);
  const data = typeof message === "string" ? utf8.encode(message) : message;
  return new Uint8Array(await crypto.subtle.sign("HMAC", key, data));
}

async function sha256(bytes) {
  return new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
}

export async function scramProof(username, password, challenge) {
  const material = await crypto.subtle.importKey("raw", utf8.encode(password), "PBKDF2", false,
    ["deriveBits"]);
  const salted = new Uint8Array(await crypto.subtle.deriveBits(
    { name: "PBKDF2", hash: "SHA-256", salt: b64.decode(challenge.salt),
      iterations: challenge.iterations }, material, 256));
  const clientKey = await hmac(salted, "Client Key");
  const storedKey = await sha256(clientKey);
  const serverKey = await hmac(salted, "Server Key");
  const authMessage = `${username}:${challenge.nonce}`;
  const signature = await hmac(storedKey, authMessage);
  const proof = clientKey.map((byte, i) => byte ^ signature[i]);
  const serverSignature = b64.encode(await hmac(serverKey, authMessage));
  return { proof: b64.encode(proof), serverSignature };
}

$("scram-go").addEventListener("click", async () => {
  const { username, password } = credentials();
  const log = [];
  const challenge = await call("POST", "/auth/challenge", { body: { username } });
  log.push(...describe("POST", "/auth/challenge", null, { username }), ...answer(challenge));
  if (challenge.status !== 200) return show("scram-log", log);
  log.push(`  (PBKDF2-SHA-256 × ${challenge.data.iterations} in this page…)`);
  show("scram-log", log);
  const { proof, serverSignature } = await scramProof(username, password, challenge.data);
  const body = { nonce: challenge.data.nonce, proof };
  const result = await call("POST", "/auth/respond", { body });
  log.push(...describe("POST", "/auth/respond", null, body), ...answer(result));
  if (result.status === 200) {
    const verified = result.data.serverSignature === serverSignature;
    log.push(verified ? "✓ the server proved it holds this user's ServerKey"
                      : "✗ server signature mismatch: do not trust this server");
  }
  show("scram-log", log);
  refreshWhoami();
});

// -- 3. Password + session cookie -------------------------------------------------
$("login-go").addEventListener("click", async () => {
  const body = credentials();
  const result = await call("POST", "/auth/login", { body });
  const shown = { ...body, password: "•".repeat(body.password.length) };
  show("login-log", [...describe("POST", "/auth/login", null, shown), ...answer(result),
    result.status === 200 ? "  + Set-Cookie: session=<signed id>; HttpOnly; SameSite=Lax (not readable here)" : ""]);
  refreshWhoami();
});

$("logout-go").addEventListener("click", async () => {
  const result = await call("POST", "/auth/logout");
  show("login-log", [...describe("POST", "/auth/logout", { Origin: location.origin }), ...answer(result)]);
  refreshWhoami();
});

// -- 4. JWT ---------------------------------------------------------------------------
$("token-go").addEventListener("click", async () => {
  const body = credentials();
  const result = await call("POST", "/auth/token", { body });
  const shown = { ...body, password: "•".repeat(body.password.length) };
  const log = [...describe("POST", "/auth/token", null, shown), ...answer(result)];
  if (result.status === 200) {
    token = result.data.token;
    const [header, payload] = token.split(".").slice(0, 2).map(
      (part) => JSON.parse(atob(part.replace(/-/g, "+").replace(/_/g, "/"))));
    log.push("  header:  " + JSON.stringify(header), "  payload: " + JSON.stringify(payload));
  }
  $("tokendata-go").disabled = $("revoke-go").disabled = token === null;
  show("token-log", log);
});

$("tokendata-go").addEventListener("click", async () => {
  const headers = { Authorization: `Bearer ${token}` };
  const result = await call("POST", "/auth/tokendata", { headers });
  show("token-log", [...describe("POST", "/auth/tokendata", { Authorization: "Bearer <token>" }),
    ...answer(result)]);
});

$("revoke-go").addEventListener("click", async () => {
  const headers = { Authorization: `Bearer ${token}` };
  const result = await call("POST", "/auth/logout", { headers });
  show("token-log", [...describe("POST", "/auth/logout", { Authorization: "Bearer <token>" }),
    ...answer(result), "  (the same token is now refused: try /auth/tokendata again)"]);
});

refreshWhoami();
