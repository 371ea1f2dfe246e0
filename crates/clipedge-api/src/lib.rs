//! The public /v1 HTTP API: request/response types, validation, merge and de-duplication (no I/O).
