// Operational transformation for plain text: the browser's twin of core/ot.py.
//
// Operations are arrays of components: a positive number retains, a negative
// number deletes, a non-empty string inserts. The wire form is
// [{retain: n}, {insert: "text"}, {delete: n}], trailing retain optional.
// Lengths and positions count Unicode code points (as Python does), not UTF-16
// units: an emoji is 1 and a combining accent is 1, on both sides.

export class OTError extends Error {}

export const cpLength = (text) => { let n = 0; for (const _ of text) n++; return n; };
const cpSlice = (chars, start, end) => chars.slice(start, end).join("");

export function fromJSON(components) {
  if (!Array.isArray(components)) throw new OTError("an operation is a list of components");
  const op = [];
  for (const c of components) {
    const keys = c && typeof c === "object" ? Object.keys(c) : [];
    if (keys.length !== 1) throw new OTError("bad component");
    const [kind] = keys;
    const value = c[kind];
    if (kind === "retain" || kind === "delete") {
      if (!Number.isInteger(value) || value <= 0) throw new OTError(`${kind} takes a positive integer`);
      op.push(kind === "retain" ? value : -value);
    } else if (kind === "insert") {
      if (typeof value !== "string" || value === "") throw new OTError("insert takes a non-empty string");
      op.push(value);
    } else {
      throw new OTError(`unknown component ${kind}`);
    }
  }
  return normalize(op);
}

export function toJSON(op) {
  return op.map((c) => (typeof c === "string" ? { insert: c } : c > 0 ? { retain: c } : { delete: -c }));
}

function push(op, c) {
  if (c === 0 || c === "") return;
  if (op.length === 0) { op.push(c); return; }
  const last = op[op.length - 1];
  if (typeof c === "string") {
    if (typeof last === "string") op[op.length - 1] = last + c;
    else if (last < 0) {
      if (op.length >= 2 && typeof op[op.length - 2] === "string") op[op.length - 2] += c;
      else op.splice(op.length - 1, 0, c);
    } else op.push(c);
  } else if (typeof last === "number" && (last > 0) === (c > 0)) {
    op[op.length - 1] = last + c;
  } else {
    op.push(c);
  }
}

export function normalize(op) {
  const out = [];
  for (const c of op) push(out, c);
  while (out.length && typeof out[out.length - 1] === "number" && out[out.length - 1] > 0) out.pop();
  return out;
}

export const span = (op) => op.reduce((n, c) => (typeof c === "number" ? n + Math.abs(c) : n), 0);
export const targetSpan = (op) =>
  op.reduce((n, c) => (typeof c === "string" ? n + cpLength(c) : n + Math.max(c, 0)), 0);

export function apply(text, op) {
  const chars = Array.from(text);
  if (span(op) > chars.length) {
    throw new OTError(`operation walks ${span(op)} code points; the document has ${chars.length}`);
  }
  const out = [];
  let i = 0;
  for (const c of op) {
    if (typeof c === "string") out.push(c);
    else if (c > 0) { out.push(cpSlice(chars, i, i + c)); i += c; }
    else i -= c;
  }
  out.push(cpSlice(chars, i));
  return out.join("");
}

const padded = (op, length) => (span(op) < length ? [...op, length - span(op)] : [...op]);

// Split an insert's code points without cutting a surrogate pair.
const cpHead = (text, n) => Array.from(text).slice(0, n).join("");
const cpTail = (text, n) => Array.from(text).slice(n).join("");

export function compose(a, b) {
  const length = Math.max(targetSpan(a), span(b));
  a = padded(a, span(a) + length - targetSpan(a));
  b = padded(b, length);
  const out = [];
  let ia = 0, ib = 0;
  let ca = a.length ? a[0] : null;
  let cb = b.length ? b[0] : null;
  const nextA = () => { ia++; ca = ia < a.length ? a[ia] : null; };
  const nextB = () => { ib++; cb = ib < b.length ? b[ib] : null; };
  while (ca !== null || cb !== null) {
    if (typeof ca === "number" && ca < 0) { push(out, ca); nextA(); continue; }
    if (typeof cb === "string") { push(out, cb); nextB(); continue; }
    if (ca === null || cb === null) throw new OTError("compose: operations do not line up");
    if (typeof ca === "string") {
      const len = cpLength(ca);
      if (cb > 0) {
        const n = Math.min(len, cb);
        push(out, cpHead(ca, n));
        ca = cpTail(ca, n); cb -= n;
      } else {
        const n = Math.min(len, -cb);
        ca = cpTail(ca, n); cb += n;
      }
    } else {
      const n = Math.min(ca, Math.abs(cb));
      push(out, cb > 0 ? n : -n);
      ca -= n;
      cb = cb > 0 ? cb - n : cb + n;
    }
    if (ca === "" || ca === 0) nextA();
    if (cb === 0) nextB();
  }
  return normalize(out);
}

export function transform(a, b) {
  const length = Math.max(span(a), span(b));
  a = padded(a, length);
  b = padded(b, length);
  const a2 = [], b2 = [];
  let ia = 0, ib = 0;
  let ca = a.length ? a[0] : null;
  let cb = b.length ? b[0] : null;
  const nextA = () => { ia++; ca = ia < a.length ? a[ia] : null; };
  const nextB = () => { ib++; cb = ib < b.length ? b[ib] : null; };
  while (ca !== null || cb !== null) {
    if (typeof ca === "string") { push(a2, ca); push(b2, cpLength(ca)); nextA(); continue; }
    if (typeof cb === "string") { push(a2, cpLength(cb)); push(b2, cb); nextB(); continue; }
    if (ca === null || cb === null) throw new OTError("transform: operations do not line up");
    const n = Math.min(Math.abs(ca), Math.abs(cb));
    if (ca > 0 && cb > 0) { push(a2, n); push(b2, n); }
    else if (ca < 0 && cb > 0) push(a2, -n);
    else if (ca > 0 && cb < 0) push(b2, -n);
    ca = ca > 0 ? ca - n : ca + n;
    cb = cb > 0 ? cb - n : cb + n;
    if (ca === 0) nextA();
    if (cb === 0) nextB();
  }
  return [normalize(a2), normalize(b2)];
}

export function transformIndex(index, op, own = false) {
  let pos = 0, moved = index;
  for (const c of op) {
    if (pos > index) break;
    if (typeof c === "string") { if (pos < index || own) moved += cpLength(c); }
    else if (c > 0) pos += c;
    else { moved -= Math.min(-c, Math.max(index - pos, 0)); pos -= c; }
  }
  return moved;
}

// The op that turns `before` into `after` (one changed region), in code points.
export function diff(before, after) {
  const a = Array.from(before), b = Array.from(after);
  let start = 0;
  while (start < a.length && start < b.length && a[start] === b[start]) start++;
  let endA = a.length, endB = b.length;
  while (endA > start && endB > start && a[endA - 1] === b[endB - 1]) { endA--; endB--; }
  return normalize([start, b.slice(start, endB).join(""), -(endA - start)]);
}

// Caret positions: UTF-16 offsets (textarea) <-> code point indexes (operations).
export function utf16ToCp(text, offset) { return cpLength(text.slice(0, offset)); }
export function cpToUtf16(text, index) { return Array.from(text).slice(0, index).join("").length; }
