// workerd host: the module is imported as a compiled wasm module (workerd refuses to compile
// wasm from bytes at run time), so a module that does not validate stops workerd at startup.
import engine from "./engine.wasm";
import { runAll } from "./bench.mjs";

export default {
  async fetch(request) {
    const params = new URL(request.url).searchParams;
    const runs = Number(params.get("runs") || 30);
    const check = params.get("check") === "1";
    const instance = new WebAssembly.Instance(engine, {});
    try {
      return Response.json({ host: "workerd", ...runAll(instance.exports, { runs, check }) });
    } catch (error) {
      return Response.json({ host: "workerd", error: String(error) }, { status: 500 });
    }
  },
};
