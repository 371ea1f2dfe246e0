//! Text encoding: tokenizer + ONNX text tower (tract), native and wasm32.
