//! The embedded query server: the whole query path in one process (axum).
