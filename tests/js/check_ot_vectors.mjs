// node tests/js/check_ot_vectors.mjs tests/ot_vectors.json
// Checks static/js/ot.js against the vectors computed by core/ot.py.
import { readFileSync } from "node:fs";
import { apply, compose, fromJSON, toJSON, transform } from "../../static/js/ot.js";

const cases = JSON.parse(readFileSync(process.argv[2], "utf8"));
const same = (x, y) => JSON.stringify(x) === JSON.stringify(y);
let failures = 0;
cases.forEach((v, i) => {
  const a = fromJSON(v.a), b = fromJSON(v.b), c = fromJSON(v.c);
  const [a2, b2] = transform(a, b);
  const checks = {
    applied: apply(v.doc, a) === v.applied,
    a2: same(toJSON(a2), v.a2),
    b2: same(toJSON(b2), v.b2),
    compose: same(toJSON(compose(a, c)), v.ac),
    converged: apply(apply(v.doc, a), b2) === v.converged && apply(apply(v.doc, b), a2) === v.converged,
  };
  for (const [name, ok] of Object.entries(checks)) {
    if (!ok) { failures++; console.log(`vector ${i}: ${name} differs`, JSON.stringify(v)); }
  }
});
if (failures) { console.log(`${failures} mismatches`); process.exit(1); }
console.log(`${cases.length} vectors ok`);
