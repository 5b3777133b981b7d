// Replays PyTorch reference runs of every graph of a bundle in onnxruntime-node and compares the outputs.
// Usage: node models/training/check_bundle.mjs BUNDLE_DIR CHECKS.json   (CHECKS.json is written by export)
// Prints one JSON line per graph and exits 1 if a graph fails to load, lacks a declared input, or differs.
import { readFileSync } from "node:fs";
import path from "node:path";
import * as ort from "onnxruntime-node";

const [dir, checksPath] = process.argv.slice(2);
const checks = JSON.parse(readFileSync(checksPath, "utf8"));
const toTensor = (t) =>
  t.dtype === "int64"
    ? new ort.Tensor("int64", BigInt64Array.from(t.data.map((v) => BigInt(v))), t.dims)
    : new ort.Tensor("float32", Float32Array.from(t.data), t.dims);
let failed = false;
for (const [file, { inputs, outputs }] of Object.entries(checks)) {
  const result = { file };
  try {
    const session = await ort.InferenceSession.create(path.join(dir, file));
    const missing = session.inputNames.filter((n) => !(n in inputs));
    if (missing.length) throw new Error(`graph declares inputs with no reference value: ${missing.join(", ")}`);
    const out = await session.run(Object.fromEntries(Object.entries(inputs).map(([k, v]) => [k, toTensor(v)])));
    let maxDiff = 0;
    for (const [name, want] of Object.entries(outputs)) {
      const got = out[name];
      if (!got) throw new Error(`missing output ${name}`);
      if (JSON.stringify(got.dims) !== JSON.stringify(want.dims))
        throw new Error(`${name} has dims ${JSON.stringify(got.dims)}, expected ${JSON.stringify(want.dims)}`);
      want.data.forEach((v, i) => {
        maxDiff = Math.max(maxDiff, Math.abs(Number(got.data[i]) - v) / (1 + Math.abs(v)));
      });
    }
    result.maxRelDiff = maxDiff;
    result.ok = maxDiff < 1e-3;
  } catch (error) {
    result.ok = false;
    result.error = String(error.message ?? error);
  }
  failed ||= !result.ok;
  console.log(JSON.stringify(result));
}
process.exit(failed ? 1 : 0);
