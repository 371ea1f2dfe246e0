//! The compact tokenizer (see the crate docs).
