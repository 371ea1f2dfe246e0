//! The int8 text transformer (see the crate docs).
