// Checks that @huggingface/tokenizers encodes and decodes like the Python reference (gill_tiny/tokenizer.py).
// Usage: node models/training/check_tokenizer.mjs CASES.json
// CASES.json: {"tokenizer": path, "textTokenizer": path, "cases": [{"text", "ids", "textIds"}]} written by
// `python -m gill_tiny.tokenizer_cases`; exits 1 and prints the first mismatches.
import { readFileSync } from "node:fs";
import { Tokenizer } from "@huggingface/tokenizers";

const spec = JSON.parse(readFileSync(process.argv[2], "utf8"));
const load = (p) => new Tokenizer(JSON.parse(readFileSync(p, "utf8")), {});
const lm = load(spec.tokenizer);
const text = load(spec.textTokenizer);
const failures = [];
for (const c of spec.cases) {
  const ids = lm.encode(c.text, { add_special_tokens: true }).ids;
  if (JSON.stringify(ids) !== JSON.stringify(c.ids)) failures.push({ text: c.text, kind: "lm", js: ids, py: c.ids });
  const decoded = lm.decode(ids, { clean_up_tokenization_spaces: false });
  if (decoded !== c.decoded) failures.push({ text: c.text, kind: "decode", js: decoded, py: c.decoded });
  const tids = text.encode(c.text, { add_special_tokens: true }).ids;
  if (JSON.stringify(tids) !== JSON.stringify(c.textIds))
    failures.push({ text: c.text, kind: "text", js: tids, py: c.textIds });
}
console.log(JSON.stringify({ cases: spec.cases.length, failures: failures.length, first: failures.slice(0, 5) }));
process.exit(failures.length ? 1 : 0);
