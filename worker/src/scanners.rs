//! Calling the scanner Lambdas: one signed POST per batch, all batches at once (at most six,
//! the Worker's connection limit), each retried once where a retry can help.

use std::time::Duration;

use clipedge_protocol::{
    decode_response, Encoding, ScanRequest, ScanResponse, ScanTargets, SignedRequest,
};
use futures::future::join_all;
use worker::{Headers, Method, Request, RequestInit};

use crate::clock::{monotonic_ms, unix_ms};
use crate::config::WorkerConfig;
use crate::objects::fetch_with_timeout;
use clipedge_search::plan::retry_targets;
use clipedge_search::{Call, FanOut, FanOutPolicy, LeafJob, Leaves};

/// The scanner Lambdas as the root's leaves, for one request.
pub struct Scanners<'a> {
    pub config: &'a WorkerConfig,
    /// The searched index's `s3://` root: what every scan request names.
    pub index: &'a str,
    pub request_id: &'a str,
    /// The request's deadline ([`monotonic_ms`] time): no call outlives it.
    pub deadline_ms: f64,
}

impl Leaves for Scanners<'_> {
    fn policy(&self) -> FanOutPolicy<'_> {
        FanOutPolicy {
            max_calls: self.config.max_scanner_calls,
            min_lists_per_call: self.config.min_lists_per_call,
            scanners: &self.config.scanner_urls,
        }
    }

    async fn scan(&self, job: &LeafJob<'_>, calls: &[Call]) -> FanOut {
        let job = ScanJob {
            config: self.config,
            index: self.index,
            generation: job.generation,
            query: job.query,
            k: job.k,
            rerank: job.rerank,
            request_id: self.request_id,
            deadline_ms: self.deadline_ms,
        };
        scan(&job, calls).await
    }
}

/// What every call of one query shares.
struct ScanJob<'a> {
    config: &'a WorkerConfig,
    index: &'a str,
    generation: &'a str,
    query: &'a [f32],
    k: u32,
    rerank: u32,
    request_id: &'a str,
    deadline_ms: f64,
}

/// A call with less time than this left is not made (its lists are reported failed).
const MIN_CALL_MS: f64 = 100.0;

/// One call's outcome as the fold needs it.
enum Attempt {
    Answer(ScanResponse),
    /// No answer; `lists` are left unscanned by it (empty when the first answer, or a retry,
    /// already accounts for them).
    Failed {
        error: String,
        lists: Vec<u32>,
    },
}

async fn call(
    job: &ScanJob<'_>,
    url: &str,
    targets: ScanTargets,
    attempt: &str,
) -> Result<ScanResponse, String> {
    // The call timeout, and the deadline the scanner answers by, shrink to what the request
    // has left, so retries cannot carry a query past its deadline.
    let left_ms = job.deadline_ms - monotonic_ms();
    if left_ms < MIN_CALL_MS {
        return Err(format!(
            "scanner {url}: not called, the request deadline ({} ms) has passed",
            job.config.request_deadline_ms
        ));
    }
    let timeout_ms = f64::from(job.config.scanner_timeout_ms).min(left_ms) as u32;
    let request = ScanRequest {
        request_id: format!("{}-{attempt}", job.request_id),
        index: job.index.to_string(),
        generation: job.generation.to_string(),
        query: job.query.to_vec(),
        targets,
        k: job.k,
        rerank: job.rerank,
        // Short of the call timeout, as `WorkerConfig::scan_deadline_ms`: a slow scanner answers
        // with what it has instead of being cut off with nothing.
        deadline_ms: (timeout_ms.saturating_mul(4) / 5).max(50),
    };
    let signed = SignedRequest::new(
        &request,
        Encoding::Binary,
        &job.config.scanner_secret,
        unix_ms(),
    )
    .map_err(|error| format!("cannot encode scan request: {error}"))?;
    let headers = Headers::new();
    let set = |name: &str, value: &str| headers.set(name, value).map_err(|error| error.to_string());
    set("content-type", signed.content_type)?;
    for (name, value) in signed.headers.pairs() {
        set(name, value)?;
    }
    let body = worker::js_sys::Uint8Array::from(signed.body.as_slice());
    let mut init = RequestInit::new();
    init.with_method(Method::Post)
        .with_headers(headers)
        .with_body(Some(body.into()));
    let http =
        Request::new_with_init(url, &init).map_err(|error| format!("scanner {url}: {error}"))?;
    let timeout = Duration::from_millis(u64::from(timeout_ms));
    let mut response = fetch_with_timeout(http, timeout)
        .await
        .map_err(|reason| format!("scanner {url}: {reason}"))?;
    let status = response.status_code();
    let content_type = response.headers().get("content-type").ok().flatten();
    let bytes = response
        .bytes()
        .await
        .map_err(|error| format!("scanner {url}: reading the answer: {error}"))?;
    if status != 200 {
        let snippet = String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned();
        return Err(format!("scanner {url}: HTTP {status}: {snippet}"));
    }
    decode_response(&bytes, Encoding::from_content_type(content_type.as_deref()))
        .map_err(|error| format!("scanner {url}: undecodable answer: {error}"))
}

/// One batch: a call to its scanner function, then at most one retry of what failed (to the
/// function the plan named for retries: the groups' second rendezvous choice).
async fn run_batch(job: &ScanJob<'_>, planned: &Call, index: usize) -> Vec<Attempt> {
    let urls = &job.config.scanner_urls;
    let batch = &planned.batch;
    let first_url = &urls[planned.scanner % urls.len()];
    let retry_url = &urls[planned.retry_scanner % urls.len()];
    let first = match call(job, first_url, batch.targets(), &format!("b{index}")).await {
        Ok(response) => response,
        Err(error) => {
            // Nothing came back: send the whole batch again.
            let retried = match call(job, retry_url, batch.targets(), &format!("b{index}r")).await {
                Ok(response) => Attempt::Answer(response),
                Err(retry_error) => Attempt::Failed {
                    error: retry_error,
                    lists: batch.lists.clone(),
                },
            };
            return vec![
                Attempt::Failed {
                    error,
                    lists: Vec::new(),
                },
                retried,
            ];
        }
    };
    let retries = retry_targets(batch, &first);
    let mut attempts = vec![Attempt::Answer(first)];
    let retried = join_all(
        retries
            .into_iter()
            .enumerate()
            .map(|(n, targets)| async move {
                match call(job, retry_url, targets, &format!("b{index}r{n}")).await {
                    Ok(response) => Attempt::Answer(response),
                    // The first answer already marked these groups and lists failed.
                    Err(error) => Attempt::Failed {
                        error,
                        lists: Vec::new(),
                    },
                }
            }),
    )
    .await;
    attempts.extend(retried);
    attempts
}

/// Runs every batch concurrently and folds the answers, failures included.
async fn scan(job: &ScanJob<'_>, calls: &[Call]) -> FanOut {
    let attempts = join_all(
        calls
            .iter()
            .enumerate()
            .map(|(index, planned)| run_batch(job, planned, index)),
    )
    .await;
    let mut fan_out = FanOut::default();
    for attempt in attempts.into_iter().flatten() {
        match attempt {
            Attempt::Answer(response) => fan_out.add_response(&response),
            Attempt::Failed { error, lists } => fan_out.add_failed_call(&lists, error),
        }
    }
    fan_out
}
