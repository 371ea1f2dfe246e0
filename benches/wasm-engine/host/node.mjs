// Node host: node node.mjs ENGINE.wasm [RUNS]; prints one JSON object.
import { readFileSync } from "node:fs";
import { runAll } from "./bench.mjs";

const [path, runs = "30"] = process.argv.slice(2);
const bytes = readFileSync(path);
if (!WebAssembly.validate(bytes)) {
  console.log(JSON.stringify({ host: `node ${process.version}`, error: "module does not validate" }));
  process.exit(0);
}
const { instance } = await WebAssembly.instantiate(bytes, {});
console.log(JSON.stringify({ host: `node ${process.version}`, ...runAll(instance.exports, { runs: Number(runs) }) }));
