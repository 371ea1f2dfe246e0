//! The Worker's object source: an R2 binding, or presigned GETs to an S3-compatible endpoint.
//! It implements [`ObjectSource`], so the generation reader, the catalog and the stored-vector
//! lookup are the same code as `clipedge serve`'s; the request wraps it in
//! [`clipedge_io::Counted`] for the response's `stats`.

use std::ops::Range;
use std::time::Duration;

use bytes::Bytes;
pub use clipedge_io::SourceError;
use clipedge_io::{check_range, ObjectSource, ReadPolicy};
use futures::StreamExt;
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};
use worker::{
    AbortController, ByteStream, Delay, Env, Fetch, Headers, Method, Request, RequestInit,
};

use crate::clock::{monotonic_ms, unix_ms};
use crate::config::{ObjectSourceConfig, WorkerConfig};

/// A single object read may take this long before it is abandoned.
const GET_TIMEOUT: Duration = Duration::from_secs(15);
/// Lifetime of a presigned URL: it is used at once.
const PRESIGN_EXPIRY: Duration = Duration::from_secs(120);

enum Backend {
    R2(worker::Bucket),
    S3 {
        // Boxed: the S3 variant is large next to a binding handle.
        bucket: Box<Bucket>,
        credentials: Option<Credentials>,
    },
}

/// Reads objects of one bucket. One per request: a binding or connection belongs to the
/// request that made it (workerd refuses I/O objects across requests).
pub struct Objects {
    backend: Backend,
    /// The request's deadline ([`monotonic_ms`] time): no GET is given longer than what is left
    /// of it, so a hung bucket cannot hold the answer past the deadline.
    deadline_ms: Option<f64>,
}

fn failed(key: &str, reason: impl std::fmt::Display) -> SourceError {
    SourceError::failed(key, reason)
}

impl Objects {
    pub fn new(config: &WorkerConfig, env: &Env) -> Result<Objects, SourceError> {
        let backend = match &config.source {
            ObjectSourceConfig::R2 { binding } => {
                Backend::R2(env.bucket(binding).map_err(|error| {
                    failed(&config.bucket, format!("R2 binding {binding}: {error}"))
                })?)
            }
            ObjectSourceConfig::S3 {
                endpoint,
                region,
                keys,
            } => {
                let endpoint_url = endpoint.parse().map_err(|error| {
                    failed(&config.bucket, format!("endpoint {endpoint}: {error}"))
                })?;
                let bucket = Bucket::new(
                    endpoint_url,
                    UrlStyle::Path,
                    config.bucket.clone(),
                    region.clone(),
                )
                .map_err(|error| failed(&config.bucket, format!("bucket: {error}")))?;
                Backend::S3 {
                    bucket: Box::new(bucket),
                    credentials: keys
                        .as_ref()
                        .map(|(key, secret)| Credentials::new(key.clone(), secret.clone())),
                }
            }
        };
        Ok(Objects {
            backend,
            deadline_ms: None,
        })
    }

    /// Bounds every GET's timeout by the request's deadline.
    pub fn with_deadline(self, deadline_ms: f64) -> Objects {
        Objects {
            deadline_ms: Some(deadline_ms),
            ..self
        }
    }

    /// The timeout of the next GET: [`GET_TIMEOUT`], or less when the deadline is nearer.
    fn timeout(&self, key: &str) -> Result<Duration, SourceError> {
        let Some(deadline_ms) = self.deadline_ms else {
            return Ok(GET_TIMEOUT);
        };
        let left_ms = deadline_ms - monotonic_ms();
        if left_ms < 1.0 {
            return Err(failed(key, "the request deadline passed before the read"));
        }
        Ok(GET_TIMEOUT.min(Duration::from_millis(left_ms as u64)))
    }

    async fn read(
        &self,
        key: &str,
        range: Option<Range<u64>>,
        limit: Option<u64>,
    ) -> Result<Bytes, SourceError> {
        let bytes = match &self.backend {
            Backend::R2(bucket) => get_r2(bucket, key, range, limit).await?,
            Backend::S3 {
                bucket,
                credentials,
            } => {
                let timeout = self.timeout(key)?;
                get_s3(bucket, credentials.as_ref(), key, range, limit, timeout).await?
            }
        };
        // From a Vec: no copy, and `Vec::from` gives the same buffer back to the model loader.
        Ok(Bytes::from(bytes))
    }
}

impl ObjectSource for Objects {
    async fn get(&self, key: &str, limit: Option<u64>) -> Result<Bytes, SourceError> {
        self.read(key, None, limit).await
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, SourceError> {
        if range.start >= range.end {
            return Ok(Bytes::new());
        }
        let bytes = self.read(key, Some(range.clone()), None).await?;
        check_range(key, &range, &bytes)?;
        Ok(bytes)
    }

    /// Nearby catalog records share a GET (a wider gap would waste more of the isolate's
    /// memory than the round trip saves); a Worker has six connections for all of its
    /// outgoing requests.
    fn read_policy(&self) -> ReadPolicy {
        ReadPolicy {
            coalesce_gap_bytes: 64 * 1024,
            max_concurrency: crate::config::MAX_CONCURRENT_CALLS,
            ..ReadPolicy::default()
        }
    }
}

async fn get_r2(
    bucket: &worker::Bucket,
    key: &str,
    range: Option<Range<u64>>,
    limit: Option<u64>,
) -> Result<Vec<u8>, SourceError> {
    let mut request = bucket.get(key);
    if let Some(range) = range {
        request = request.range(worker::Range::OffsetWithLength {
            offset: range.start,
            length: range.end - range.start,
        });
    }
    let object = request
        .execute()
        .await
        .map_err(|error| failed(key, error))?
        .ok_or_else(|| SourceError::NotFound {
            key: key.to_string(),
        })?;
    let size = object.size();
    let body = object
        .body()
        .ok_or_else(|| failed(key, "R2 object has no body"))?;
    let stream = body.stream().map_err(|error| failed(key, error))?;
    collect(stream, Some(size), limit, key).await
}

/// Reads a body chunk by chunk into one buffer of the announced size: the JS side then holds
/// one chunk at a time, not a second copy of a 64 MB weight file (the isolate's 128 MB covers
/// both heaps).
async fn collect(
    mut stream: ByteStream,
    size: Option<u64>,
    limit: Option<u64>,
    key: &str,
) -> Result<Vec<u8>, SourceError> {
    let limit = limit.unwrap_or(u64::MAX);
    let too_large = |size: u64| SourceError::TooLarge {
        key: key.to_string(),
        size,
        limit,
    };
    if let Some(size) = size.filter(|size| *size > limit) {
        return Err(too_large(size));
    }
    let mut bytes = Vec::with_capacity(size.unwrap_or(0) as usize);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|error| failed(key, error))?;
        if (bytes.len() + chunk.len()) as u64 > limit {
            return Err(too_large((bytes.len() + chunk.len()) as u64));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

async fn get_s3(
    bucket: &Bucket,
    credentials: Option<&Credentials>,
    key: &str,
    range: Option<Range<u64>>,
    limit: Option<u64>,
    timeout: Duration,
) -> Result<Vec<u8>, SourceError> {
    let now =
        jiff::Timestamp::from_millisecond(unix_ms() as i64).map_err(|error| failed(key, error))?;
    let url = bucket
        .get_object(credentials, key)
        .sign_with_time(PRESIGN_EXPIRY, &now);
    let headers = Headers::new();
    if let Some(range) = &range {
        headers
            .set("range", &format!("bytes={}-{}", range.start, range.end - 1))
            .map_err(|error| failed(key, error))?;
    }
    let mut init = RequestInit::new();
    init.with_method(Method::Get).with_headers(headers);
    let request =
        Request::new_with_init(url.as_str(), &init).map_err(|error| failed(key, error))?;
    let mut response = fetch_with_timeout(request, timeout)
        .await
        .map_err(|reason| failed(key, reason))?;
    let status = response.status_code();
    if status == 404 {
        return Err(SourceError::NotFound {
            key: key.to_string(),
        });
    }
    let announced = response
        .headers()
        .get("content-length")
        .ok()
        .flatten()
        .and_then(|length| length.parse::<u64>().ok());
    let stream = response.stream().map_err(|error| failed(key, error))?;
    // An error page is small: only a success is held to the limit.
    let body_limit = if (200..300).contains(&status) {
        limit
    } else {
        None
    };
    let body = collect(stream, announced, body_limit, key).await?;
    if !(200..300).contains(&status) {
        let snippet = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
        return Err(failed(key, format!("HTTP {status}: {snippet}")));
    }
    // A server that ignores Range answers 200 with the whole object: cut the range out.
    if let (200, Some(range)) = (status, range) {
        let end = (range.end as usize).min(body.len());
        let start = (range.start as usize).min(end);
        return Ok(body[start..end].to_vec());
    }
    Ok(body)
}

/// Sends `request`, aborting it after `timeout` so its connection slot is released.
pub async fn fetch_with_timeout(
    request: Request,
    timeout: Duration,
) -> Result<worker::Response, String> {
    use futures::future::{select, Either};
    let controller = AbortController::default();
    let signal = controller.signal();
    let sending = Box::pin(async move { Fetch::Request(request).send_with_signal(&signal).await });
    let timer = Box::pin(Delay::from(timeout));
    match select(sending, timer).await {
        Either::Left((result, _)) => result.map_err(|error| error.to_string()),
        Either::Right((_, _)) => {
            controller.abort();
            Err(format!("no answer within {} ms", timeout.as_millis()))
        }
    }
}
