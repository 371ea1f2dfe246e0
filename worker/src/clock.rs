//! Time on both targets: `std::time` panics on wasm32-unknown-unknown, so the Worker asks JS.
//! (In production `performance.now()` only advances across I/O; locally it measures CPU too.)

#[cfg(target_arch = "wasm32")]
mod js {
    use wasm_bindgen::prelude::wasm_bindgen;

    #[wasm_bindgen]
    extern "C" {
        #[wasm_bindgen(js_namespace = performance, js_name = now)]
        pub fn performance_now() -> f64;
        #[wasm_bindgen(js_namespace = Date, js_name = now)]
        pub fn date_now() -> f64;
    }
}

/// A monotonic clock in milliseconds, for stage timings.
pub fn monotonic_ms() -> f64 {
    #[cfg(target_arch = "wasm32")]
    {
        js::performance_now()
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        use std::sync::OnceLock;
        use std::time::Instant;
        static START: OnceLock<Instant> = OnceLock::new();
        START.get_or_init(Instant::now).elapsed().as_secs_f64() * 1e3
    }
}

/// Wall-clock unix time in milliseconds (request signatures, presigned URLs, cache ages).
pub fn unix_ms() -> u64 {
    #[cfg(target_arch = "wasm32")]
    {
        js::date_now() as u64
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| elapsed.as_millis() as u64)
            .unwrap_or_default()
    }
}

/// Milliseconds since `start` (a [`monotonic_ms`] reading).
pub fn since(start: f64) -> f64 {
    (monotonic_ms() - start).max(0.0)
}
