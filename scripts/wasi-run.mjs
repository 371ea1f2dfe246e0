// Runs a wasm32-wasip1 test binary under Node's WASI, so `cargo test --target wasm32-wasip1`
// exercises the wasm SIMD kernels without installing a separate wasm runtime.
import { readFile } from "node:fs/promises";
import { WASI } from "node:wasi";
import { argv, env, exit } from "node:process";

const [wasmPath, ...args] = argv.slice(2);
const wasi = new WASI({ version: "preview1", args: [wasmPath, ...args], env, preopens: { "/": "/" }, returnOnExit: true });
const module = await WebAssembly.compile(await readFile(wasmPath));
const instance = await WebAssembly.instantiate(module, wasi.getImportObject());
const code = wasi.start(instance);
exit(typeof code === "number" ? code : 0);
