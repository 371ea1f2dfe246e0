//! The Worker's reads of index and model objects: an R2 binding, or presigned GETs to an
//! S3-compatible endpoint. Every GET and byte is counted for the response's `stats`.

use std::cell::Cell;
use std::ops::Range;
use std::time::Duration;

use futures::StreamExt;
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};
use thiserror::Error;
use worker::{
    AbortController, ByteStream, Delay, Env, Fetch, Headers, Method, Request, RequestInit,
};

use crate::clock::unix_ms;
use crate::config::{ObjectSourceConfig, WorkerConfig};

/// A single object read may take this long before it is abandoned.
const GET_TIMEOUT: Duration = Duration::from_secs(15);
/// Lifetime of a presigned URL: it is used at once.
const PRESIGN_EXPIRY: Duration = Duration::from_secs(120);

#[derive(Debug, Error)]
pub enum ObjectError {
    #[error("object {key} does not exist")]
    NotFound { key: String },
    #[error("cannot read object {key}: {reason}")]
    Failed { key: String, reason: String },
    #[error("object {key} has {size} bytes, more than the {limit}-byte limit")]
    TooLarge { key: String, size: u64, limit: u64 },
}

enum Backend {
    R2(worker::Bucket),
    S3 {
        // Boxed: the S3 variant is large next to a binding handle.
        bucket: Box<Bucket>,
        credentials: Option<Credentials>,
    },
}

/// Reads objects of one bucket; one per request, so its counters are that request's.
pub struct Objects {
    backend: Backend,
    gets: Cell<u64>,
    bytes_read: Cell<u64>,
}

fn failed(key: &str, reason: impl std::fmt::Display) -> ObjectError {
    ObjectError::Failed {
        key: key.to_string(),
        reason: reason.to_string(),
    }
}

impl Objects {
    pub fn new(config: &WorkerConfig, env: &Env) -> Result<Objects, ObjectError> {
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
            gets: Cell::new(0),
            bytes_read: Cell::new(0),
        })
    }

    /// GETs and bytes read so far.
    pub fn counters(&self) -> (u64, u64) {
        (self.gets.get(), self.bytes_read.get())
    }

    /// The whole object, or the bytes `range` of it.
    pub async fn get(&self, key: &str, range: Option<Range<u64>>) -> Result<Vec<u8>, ObjectError> {
        self.get_inner(key, range, None).await
    }

    /// The whole object, refused before its body is read when it is larger than `limit` bytes.
    pub async fn get_bounded(&self, key: &str, limit: u64) -> Result<Vec<u8>, ObjectError> {
        self.get_inner(key, None, Some(limit)).await
    }

    async fn get_inner(
        &self,
        key: &str,
        range: Option<Range<u64>>,
        limit: Option<u64>,
    ) -> Result<Vec<u8>, ObjectError> {
        if let Some(range) = &range {
            if range.start >= range.end {
                return Ok(Vec::new());
            }
        }
        self.gets.set(self.gets.get() + 1);
        let bytes = match &self.backend {
            Backend::R2(bucket) => get_r2(bucket, key, range.clone(), limit).await?,
            Backend::S3 {
                bucket,
                credentials,
            } => get_s3(bucket, credentials.as_ref(), key, range.clone(), limit).await?,
        };
        self.bytes_read
            .set(self.bytes_read.get() + bytes.len() as u64);
        if let Some(range) = range {
            let expected = range.end - range.start;
            if bytes.len() as u64 != expected {
                return Err(failed(
                    key,
                    format!(
                        "range {range:?} returned {} bytes, expected {expected}",
                        bytes.len()
                    ),
                ));
            }
        }
        Ok(bytes)
    }
}

async fn get_r2(
    bucket: &worker::Bucket,
    key: &str,
    range: Option<Range<u64>>,
    limit: Option<u64>,
) -> Result<Vec<u8>, ObjectError> {
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
        .ok_or_else(|| ObjectError::NotFound {
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
) -> Result<Vec<u8>, ObjectError> {
    let limit = limit.unwrap_or(u64::MAX);
    let too_large = |size: u64| ObjectError::TooLarge {
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
) -> Result<Vec<u8>, ObjectError> {
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
    let mut response = fetch_with_timeout(request, GET_TIMEOUT)
        .await
        .map_err(|reason| failed(key, reason))?;
    let status = response.status_code();
    if status == 404 {
        return Err(ObjectError::NotFound {
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
