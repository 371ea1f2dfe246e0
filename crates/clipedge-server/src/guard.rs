//! What stands in front of the query routes of `clipedge serve`: an optional API key, a limit on
//! concurrent queries with a bounded queue behind it, and a deadline per request.
//!
//! Beyond the queue a request is answered at once with 503 `overloaded` (and `Retry-After`),
//! rather than piling up; a request still queued or running at its deadline gets 503
//! `overloaded` (it never started) or 504 `timeout`.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use clipedge_api::keys::{
    bearer_key, hashes_equal, invalid_key_error, key_hash, missing_key_error, KeyHash,
};
use clipedge_api::{ApiError, ErrorCode};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::http::error_response;

/// Seconds a refused client is told to wait: queries take milliseconds, a queue drains fast.
const RETRY_AFTER_S: &str = "1";

/// The limits `clipedge serve` runs with (its `--api-key`, `--max-concurrent-queries`,
/// `--max-queued-queries` and `--request-timeout-ms` flags).
#[derive(Clone)]
pub struct ServeOptions {
    /// SHA-256 of the API key (only the hash is kept); `None`: no key needed.
    pub api_key_hash: Option<KeyHash>,
    pub max_concurrent_queries: usize,
    pub max_queued_queries: usize,
    pub request_timeout: Duration,
    /// Origins browsers may call from (echoed); `None`: any origin without a key, none with one.
    pub cors_origins: Option<Vec<String>>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            api_key_hash: None,
            // Queries are CPU work (encode, scan): more at once than cores only adds latency.
            max_concurrent_queries: std::thread::available_parallelism()
                .map(|cores| cores.get() * 2)
                .unwrap_or(4),
            max_queued_queries: 64,
            request_timeout: Duration::from_secs(30),
            cors_origins: None,
        }
    }
}

impl std::fmt::Debug for ServeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeOptions")
            .field("api_key", &self.api_key_hash.is_some())
            .field("max_concurrent_queries", &self.max_concurrent_queries)
            .field("max_queued_queries", &self.max_queued_queries)
            .field("request_timeout", &self.request_timeout)
            .field("cors_origins", &self.cors_origins)
            .finish()
    }
}

/// The shared state of the guard.
pub struct Guard {
    options: ServeOptions,
    running: Arc<Semaphore>,
    queued: AtomicUsize,
}

/// Decrements the queue count however the wait ends (granted, timed out, or the client left).
struct QueueSlot<'a>(&'a AtomicUsize);

impl Drop for QueueSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn overloaded(message: String) -> Response {
    with_retry_after(error_response(&ApiError::new(
        ErrorCode::Overloaded,
        message,
    )))
}

fn with_retry_after(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_S));
    response
}

impl Guard {
    pub fn new(options: ServeOptions) -> Guard {
        Guard {
            running: Arc::new(Semaphore::new(options.max_concurrent_queries.max(1))),
            queued: AtomicUsize::new(0),
            options,
        }
    }

    /// The key check: `None` when the request may go on.
    fn refuse_key(&self, headers: &HeaderMap) -> Option<ApiError> {
        let expected = self.options.api_key_hash.as_ref()?;
        let authorization = match headers.get(header::AUTHORIZATION) {
            None => None,
            Some(value) => match value.to_str() {
                Ok(text) => Some(text),
                Err(_) => return Some(missing_key_error()),
            },
        };
        match bearer_key(authorization) {
            Err(error) => Some(error),
            Ok(None) => Some(missing_key_error()),
            Ok(Some(key)) if hashes_equal(&key_hash(key), expected) => None,
            Ok(Some(_)) => Some(invalid_key_error()),
        }
    }

    /// A running slot: at once if one is free, else after a wait in the queue (if the queue has
    /// room) that ends at `deadline`.
    async fn admit(&self, deadline: Instant) -> Result<OwnedSemaphorePermit, Response> {
        if let Ok(permit) = self.running.clone().try_acquire_owned() {
            return Ok(permit);
        }
        if self.queued.fetch_add(1, Ordering::SeqCst) >= self.options.max_queued_queries {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(overloaded(format!(
                "the server is at its limit of {} concurrent queries and {} queued; retry shortly",
                self.options.max_concurrent_queries, self.options.max_queued_queries
            )));
        }
        let _slot = QueueSlot(&self.queued);
        match tokio::time::timeout_at(deadline, self.running.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            // The semaphore is never closed; a closed one would mean shutting down.
            Ok(Err(_)) => Err(overloaded("the server is shutting down".to_string())),
            Err(_) => Err(overloaded(format!(
                "no query slot freed up within {} ms; retry shortly",
                self.options.request_timeout.as_millis()
            ))),
        }
    }

    /// Runs `handler` behind the key check, the admission and the deadline.
    pub async fn run<F>(&self, headers: &HeaderMap, handler: F) -> Response
    where
        F: Future<Output = Response>,
    {
        if let Some(error) = self.refuse_key(headers) {
            return error_response(&error);
        }
        let deadline = Instant::now() + self.options.request_timeout;
        let _permit = match self.admit(deadline).await {
            Ok(permit) => permit,
            Err(response) => return response,
        };
        match tokio::time::timeout_at(deadline, handler).await {
            Ok(response) => response,
            Err(_) => with_retry_after(error_response(&ApiError::new(
                ErrorCode::Timeout,
                format!(
                    "the query took longer than the server's limit of {} ms",
                    self.options.request_timeout.as_millis()
                ),
            ))),
        }
    }
}

/// The axum middleware over [`Guard::run`].
pub async fn guard_layer(
    State(guard): State<Arc<Guard>>,
    request: Request,
    next: Next,
) -> Response {
    let headers = request.headers().clone();
    guard.run(&headers, next.run(request)).await
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    use clipedge_api::ErrorBody;

    use super::*;

    fn options(concurrent: usize, queued: usize, timeout_ms: u64) -> ServeOptions {
        ServeOptions {
            api_key_hash: None,
            max_concurrent_queries: concurrent,
            max_queued_queries: queued,
            request_timeout: Duration::from_millis(timeout_ms),
            cors_origins: None,
        }
    }

    async fn code(response: Response) -> (u16, String, Option<String>) {
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .map(|value| value.to_str().unwrap().to_string());
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        let code = serde_json::from_slice::<ErrorBody>(&bytes)
            .map(|body| body.error.code.as_str().to_string())
            .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
        (status, code, retry_after)
    }

    fn ok() -> Response {
        StatusCode::OK.into_response()
    }

    #[tokio::test]
    async fn a_key_is_checked_when_one_is_set() {
        let guard = Guard::new(ServeOptions {
            api_key_hash: Some(key_hash("s3cret")),
            ..options(1, 0, 1000)
        });
        let mut headers = HeaderMap::new();
        let (status, error, _) = code(guard.run(&headers, async { ok() }).await).await;
        assert_eq!((status, error.as_str()), (401, "missing_api_key"));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer nope"),
        );
        let (status, error, _) = code(guard.run(&headers, async { ok() }).await).await;
        assert_eq!((status, error.as_str()), (403, "invalid_api_key"));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic s3cret"),
        );
        let (status, _, _) = code(guard.run(&headers, async { ok() }).await).await;
        assert_eq!(status, 401);
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer s3cret"),
        );
        let (status, _, _) = code(guard.run(&headers, async { ok() }).await).await;
        assert_eq!(status, 200);
        let open = Guard::new(options(1, 0, 1000));
        let (status, _, _) = code(open.run(&HeaderMap::new(), async { ok() }).await).await;
        assert_eq!(status, 200, "no key set: no key needed");
        assert!(!format!("{:?}", guard.options).contains("s3cret"));
    }

    #[tokio::test]
    async fn beyond_the_queue_requests_are_refused_at_once() {
        let guard = Arc::new(Guard::new(options(1, 1, 5_000)));
        let release = Arc::new(tokio::sync::Notify::new());
        let headers = HeaderMap::new();
        // One running (held until released), one queued behind it.
        let running = tokio::spawn({
            let (guard, release, headers) = (guard.clone(), release.clone(), headers.clone());
            async move {
                guard
                    .run(&headers, async move {
                        release.notified().await;
                        ok()
                    })
                    .await
            }
        });
        while guard.running.available_permits() > 0 {
            tokio::task::yield_now().await;
        }
        let queued = tokio::spawn({
            let (guard, headers) = (guard.clone(), headers.clone());
            async move { guard.run(&headers, async { ok() }).await }
        });
        while guard.queued.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        let started = std::time::Instant::now();
        let (status, error, retry_after) = code(guard.run(&headers, async { ok() }).await).await;
        assert_eq!((status, error.as_str()), (503, "overloaded"));
        assert_eq!(retry_after.as_deref(), Some(RETRY_AFTER_S));
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "refused without waiting"
        );
        release.notify_one();
        assert_eq!(running.await.unwrap().status(), 200);
        assert_eq!(
            queued.await.unwrap().status(),
            200,
            "the queued request ran"
        );
        assert_eq!(guard.queued.load(Ordering::SeqCst), 0);
        assert_eq!(guard.running.available_permits(), 1);
    }

    #[tokio::test]
    async fn slow_requests_time_out() {
        let guard = Guard::new(options(1, 4, 100));
        let started = std::time::Instant::now();
        let slow = async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            ok()
        };
        let (status, error, _) = code(guard.run(&HeaderMap::new(), slow).await).await;
        assert_eq!((status, error.as_str()), (504, "timeout"));
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(
            guard.running.available_permits(),
            1,
            "the slot is given back"
        );
    }
}
