//! clipedge's edge query front: a Cloudflare Worker (Rust → wasm32).
//!
//! `POST /v1/search`: validate → encode the text (tract, model from the bucket) → rank routing
//! groups (the table held in the isolate) → one signed call per batch of groups to the scanner
//! Lambdas, at most six at once → merge and de-duplicate → captions and URLs from the catalog.
//! Also `GET /v1/health`, `GET /v1/items/{id}`, the demo page and `/media/…` from the bucket,
//! (another index's media at `/indexes/NAME/media/…`), and clip-retrieval's `POST /knn-service`, `GET /indices-list` and `POST /metadata` (shaped
//! by `clipedge_api::clip_retrieval` over the same search).
//!
//! Metered routes (search, knn, items, metadata) pass the access gate first: the caller's key
//! (`access`: open, keyed or mixed mode), then the rate-limit bindings of its tier and of its
//! IP; each answer is then metered (`metering`). Health, the page, `/media/…` and
//! `/indices-list` are open.
//!
//! The modules without `worker` types (`access`, `config`, `metering`, `plan`) are tested on
//! the host; the rest runs in workerd, where `tests/tests/edge_worker.rs` drives it end to end.

pub mod access;
pub mod clock;
pub mod config;
pub mod embed_cache;
pub mod engine;
pub mod metering;
pub mod objects;
pub mod scanners;
pub mod shared;

use std::cell::Cell;

use clipedge_api::clip_retrieval::{
    check_index_name, knn_not_applied, knn_results, metadata_entries, not_applied_header,
    parse_knn_request, parse_metadata_request, IndexShape, NOT_APPLIED_HEADER,
};
use clipedge_api::web::{media_content_type, media_not_found, media_object, MEDIA_CACHE_CONTROL};
use clipedge_api::{
    parse_search_request, server_timing, web, ApiError, ErrorCode, SearchResponse, MAX_BODY_BYTES,
};
use worker::{
    event, AnalyticsEngineDataPointBuilder, Context, Env, Headers, Method, Request, Response,
    Result,
};

use crate::access::{AccessConfig, Caller};
use crate::clock::{monotonic_ms, unix_ms};
use crate::config::WorkerConfig;
use crate::engine::RequestContext;
use crate::metering::Usage;
use crate::objects::{Objects, SourceError};

thread_local! {
    static REQUEST_SEQUENCE: Cell<u64> = const { Cell::new(0) };
}

/// CORS headers for a request whose origin the access settings allow (`allow_origin`).
fn set_cors_headers(headers: &Headers, allow_origin: Option<&str>) -> Result<()> {
    let Some(allow_origin) = allow_origin else {
        return Ok(());
    };
    headers.set("access-control-allow-origin", allow_origin)?;
    if allow_origin != "*" {
        headers.set("vary", "Origin")?;
    }
    headers.set("access-control-allow-methods", "GET, POST, OPTIONS")?;
    headers.set(
        "access-control-allow-headers",
        "content-type, authorization",
    )?;
    headers.set(
        "access-control-expose-headers",
        &format!("server-timing, retry-after, {NOT_APPLIED_HEADER}"),
    )?;
    Ok(())
}

fn bytes_response(status: u16, content_type: &str, body: Vec<u8>) -> Result<Response> {
    let headers = Headers::new();
    headers.set("content-type", content_type)?;
    Ok(Response::from_bytes(body)?
        .with_status(status)
        .with_headers(headers))
}

fn json_response(status: u16, body: &impl serde::Serialize) -> Result<Response> {
    match serde_json::to_vec(body) {
        Ok(bytes) => bytes_response(status, "application/json", bytes),
        Err(error) => error_response(&ApiError::new(ErrorCode::Internal, error.to_string())),
    }
}

fn error_response(error: &ApiError) -> Result<Response> {
    bytes_response(
        error.status(),
        "application/json",
        error.to_json().into_bytes(),
    )
}

/// A setting by name: a secret, else a var.
fn setting(env: &Env, name: &str) -> Option<String> {
    env.secret(name)
        .map(|secret| secret.to_string())
        .or_else(|_| env.var(name).map(|var| var.to_string()))
        .ok()
}

fn config(env: &Env) -> std::result::Result<WorkerConfig, ApiError> {
    WorkerConfig::from_lookup(|name| setting(env, name)).map_err(|error| {
        ApiError::new(
            ErrorCode::Internal,
            format!("worker misconfigured: {error}"),
        )
    })
}

fn request_id() -> String {
    let sequence = REQUEST_SEQUENCE.with(|counter| {
        counter.set(counter.get() + 1);
        counter.get()
    });
    format!("edge-{:x}-{sequence}", unix_ms())
}

fn access_config(env: &Env) -> std::result::Result<AccessConfig, ApiError> {
    AccessConfig::from_lookup(|name| setting(env, name)).map_err(|error| {
        ApiError::new(
            ErrorCode::Internal,
            format!("worker misconfigured: {error}"),
        )
    })
}

#[event(fetch)]
pub async fn fetch(request: Request, env: Env, _context: Context) -> Result<Response> {
    let started = monotonic_ms();
    // Checked before anything is served: a broken key table must not open the API.
    let access = match access_config(&env) {
        Ok(access) => access,
        Err(error) => return error_response(&error),
    };
    let origin = request.headers().get("origin").ok().flatten();
    let allow_origin = access.allow_origin(origin.as_deref());
    let response = route(request, &env, &access, started).await?;
    set_cors_headers(response.headers(), allow_origin.as_deref())?;
    Ok(response)
}

/// The usage name of a metered route (`None`: open routes).
fn metered_route(method: &Method, path: &str) -> Option<&'static str> {
    match (method, path) {
        (Method::Post, "/v1/search") => Some("search"),
        (Method::Post, "/knn-service") => Some("knn"),
        (Method::Post, "/metadata") => Some("metadata"),
        (Method::Get, item) if item.starts_with("/v1/items/") => Some("item"),
        _ => None,
    }
}

/// Refused by the access gate: the error, and the seconds for `Retry-After` when rate limited.
struct Refusal {
    error: ApiError,
    retry_after_s: Option<u32>,
}

impl Refusal {
    fn response(&self) -> Result<Response> {
        let response = error_response(&self.error)?;
        if let Some(seconds) = self.retry_after_s {
            response
                .headers()
                .set("retry-after", &seconds.to_string())?;
        }
        Ok(response)
    }
}

/// The access gate of a metered request: who is calling, then their tier's and their IP's rate
/// limits (the Workers Rate Limiting bindings).
async fn admit(
    request: &Request,
    env: &Env,
    access: &AccessConfig,
) -> std::result::Result<Caller, Refusal> {
    let authorization = request.headers().get("authorization").ok().flatten();
    let caller = access
        .caller(authorization.as_deref())
        .map_err(|error| Refusal {
            error,
            retry_after_s: None,
        })?;
    let client_ip = request
        .headers()
        .get("cf-connecting-ip")
        .ok()
        .flatten()
        .unwrap_or_else(|| "unknown".to_string());
    for check in access.limit_checks(&caller, &client_ip) {
        let limiter = env.rate_limiter(&check.binding).map_err(|_| Refusal {
            error: ApiError::new(
                ErrorCode::Internal,
                format!(
                    "worker misconfigured: rate-limit binding {} (named in {} or {}) is not \
                     declared: add a [[ratelimits]] entry with that name",
                    check.binding,
                    access::TIER_LIMITS_VAR,
                    access::IP_LIMIT_VAR
                ),
            ),
            retry_after_s: None,
        })?;
        match limiter.limit(check.key.clone()).await {
            Ok(outcome) if outcome.success => {}
            Ok(_) => {
                return Err(Refusal {
                    error: ApiError::new(
                        ErrorCode::RateLimited,
                        format!(
                            "rate limit of {} reached (tier {}); retry in {} s",
                            caller.name, caller.tier, check.period_s
                        ),
                    ),
                    retry_after_s: Some(check.period_s),
                })
            }
            // The limiter is a guard, not the service: if it fails, answer rather than refuse.
            Err(error) => worker::console_warn!(
                "rate limiter {} failed, request let through: {error}",
                check.binding
            ),
        }
    }
    Ok(caller)
}

/// Writes the usage of one metered request: a log line, and a data point when a dataset is bound.
fn meter(
    env: &Env,
    access: &AccessConfig,
    caller: &Caller,
    route: &'static str,
    response: &Response,
    context: &RequestContext<'_>,
    started: f64,
) {
    let own_reads = context.objects.counts();
    let usage = Usage::new(
        caller,
        route,
        response.status_code(),
        unix_ms(),
        own_reads.gets,
        own_reads.bytes_read,
        context.fan_out_usage,
        clock::since(started),
    )
    .with_index(&context.index.name);
    worker::console_log!("{}", usage.to_json());
    let Some(dataset) = &access.usage_dataset else {
        return;
    };
    let written = env.analytics_engine(dataset).and_then(|dataset| {
        let index = usage.data_point_index();
        AnalyticsEngineDataPointBuilder::new()
            .indexes([index.as_str()])
            .blobs(usage.data_point_blobs())
            .doubles(usage.data_point_doubles())
            .write_to(&dataset)
    });
    if let Err(error) = written {
        worker::console_warn!("usage data point not written to {dataset}: {error}");
    }
}

async fn route(
    mut request: Request,
    env: &Env,
    access: &AccessConfig,
    started: f64,
) -> Result<Response> {
    let path = request.path();
    let method = request.method();
    if method == Method::Options {
        let headers = Headers::new();
        headers.set("access-control-max-age", "86400")?;
        return Ok(Response::empty()?.with_status(204).with_headers(headers));
    }
    if let Some(asset) = web::asset(&path) {
        if method != Method::Get && method != Method::Head {
            return error_response(&method_not_allowed(&path));
        }
        return bytes_response(200, asset.content_type, asset.bytes.to_vec());
    }
    let is_clip_retrieval = matches!(
        path.as_str(),
        "/knn-service" | "/indices-list" | "/metadata"
    );
    let is_api = path.starts_with("/v1/")
        || path.starts_with("/media/")
        || path.starts_with("/indexes/")
        || is_clip_retrieval;
    if !is_api {
        return error_response(&ApiError::new(
            ErrorCode::NotFound,
            format!("no route {path}"),
        ));
    }
    let metered = metered_route(&method, &path);
    let caller = match metered {
        Some(_) => match admit(&request, env, access).await {
            Ok(caller) => Some(caller),
            Err(refusal) => return refusal.response(),
        },
        None => None,
    };
    let config = match config(env) {
        Ok(config) => config,
        Err(error) => return error_response(&error),
    };
    let objects = match Objects::new(&config, env) {
        Ok(objects) => objects,
        Err(error) => {
            return error_response(&ApiError::new(ErrorCode::Internal, error.to_string()))
        }
    };
    let mut context = RequestContext::new(&config, objects);
    let response = serve(&mut request, method, &path, &mut context).await?;
    if let (Some(route), Some(caller)) = (metered, &caller) {
        meter(env, access, caller, route, &response, &context, started);
    }
    Ok(response)
}

/// Answers a request that passed the gate.
async fn serve(
    request: &mut Request,
    method: Method,
    path: &str,
    context: &mut RequestContext<'_>,
) -> Result<Response> {
    let config = context.config;
    match (method, path) {
        (Method::Post, "/v1/search") => search(request, context).await,
        (_, "/v1/search") => error_response(&method_not_allowed(path)),
        (Method::Post, "/knn-service") => knn_service(request, context).await,
        (Method::Get, "/indices-list") => json_response(200, &config.index_names()),
        (Method::Post, "/metadata") => metadata(request, context).await,
        (_, "/knn-service" | "/indices-list" | "/metadata") => {
            error_response(&method_not_allowed(path))
        }
        (Method::Get, "/v1/health") => match context.health().await {
            Ok(health) => json_response(200, &health),
            Err(error) => error_response(&error),
        },
        (Method::Get, item) if item.starts_with("/v1/items/") => {
            let id_text = item.trim_start_matches("/v1/items/");
            let Ok(id) = id_text.parse::<u64>() else {
                return error_response(&ApiError::new(
                    ErrorCode::UnknownId,
                    format!("item id {id_text:?} is not a non-negative integer"),
                ));
            };
            match context.item(id).await {
                Ok(item) => json_response(200, &item),
                Err(error) => error_response(&error),
            }
        }
        (Method::Get, media) if media.starts_with("/media/") => {
            media_response(context, media.trim_start_matches("/media/")).await
        }
        (Method::Get, media) if media.starts_with("/indexes/") => {
            // `/indexes/NAME/media/…`: another index's media.
            let rest = media.trim_start_matches("/indexes/");
            let Some((name, media_path)) = rest
                .split_once('/')
                .and_then(|(name, rest)| Some((name, rest.strip_prefix("media/")?)))
            else {
                return error_response(&ApiError::new(
                    ErrorCode::NotFound,
                    format!("no route {path}"),
                ));
            };
            if let Err(error) = context.select_index(Some(name)) {
                return error_response(&error);
            }
            media_response(context, media_path).await
        }
        (Method::Get, "/v1/conformance/object-source") if config.conformance_prefix.is_some() => {
            object_source_conformance(context).await
        }
        // The GET routes, asked with another method.
        (_, known)
            if known == "/v1/health"
                || known.starts_with("/v1/items/")
                || known.starts_with("/media/")
                || known.starts_with("/indexes/") =>
        {
            error_response(&method_not_allowed(path))
        }
        _ => error_response(&ApiError::new(
            ErrorCode::NotFound,
            format!("no route {path}"),
        )),
    }
}

/// Runs the object-source suite (`clipedge_io::conformance`) against this Worker's own source,
/// so the R2 binding and the presigned GETs are held to what the native backends pass.
async fn object_source_conformance(context: &RequestContext<'_>) -> Result<Response> {
    let prefix = context.config.conformance_prefix.as_deref().unwrap_or("");
    let source = clipedge_io::Prefixed::new(&context.objects, prefix);
    match clipedge_io::conformance::check(&source).await {
        Ok(()) => json_response(200, &serde_json::json!({ "passed": true })),
        Err(failure) => json_response(
            500,
            &serde_json::json!({ "passed": false, "failure": failure.to_string() }),
        ),
    }
}

fn method_not_allowed(path: &str) -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        format!("method not allowed on {path}"),
    )
}

async fn search(request: &mut Request, context: &mut RequestContext<'_>) -> Result<Response> {
    let started = monotonic_ms();
    let body = request.bytes().await?;
    if body.len() > MAX_BODY_BYTES {
        return error_response(&ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!(
                "request body has {} bytes, the limit is {MAX_BODY_BYTES}",
                body.len()
            ),
        ));
    }
    let parsed = match parse_search_request(&body) {
        Ok(parsed) => parsed,
        Err(error) => return error_response(&error),
    };
    if let Err(error) = context.select_index(parsed.index.as_deref()) {
        return error_response(&error);
    }
    let generation = match context.generation().await {
        Ok(generation) => generation,
        Err(error) => return error_response(&error),
    };
    let search = match parsed.validate(generation.manifest.dim as usize) {
        Ok(search) => search,
        Err(error) => return error_response(&error),
    };
    let request_id = request_id();
    match context.search(&generation, search, &request_id).await {
        Ok(answer) => {
            let response = json_response(200, &answer)?;
            set_search_headers(&response, context, &answer, started)?;
            if let Some(not_applied) = not_applied_header(&answer.not_applied) {
                response.headers().set(NOT_APPLIED_HEADER, &not_applied)?;
            }
            Ok(response)
        }
        Err(error) => {
            worker::console_warn!("search {request_id} failed: {error}");
            error_response(&error)
        }
    }
}

/// `Server-Timing` (the stages, a cold load, the model, the embedding cache) and the isolate's
/// wasm memory on a search answer.
fn set_search_headers(
    response: &Response,
    context: &RequestContext<'_>,
    answer: &SearchResponse,
    started: f64,
) -> Result<()> {
    let mut timing = server_timing(&answer.timings);
    if context.load_ms > 0.0 {
        timing.push_str(&format!(", load;dur={:.2}", context.load_ms));
    }
    if context.model_fetch_ms > 0.0 || context.model_build_ms > 0.0 {
        timing.push_str(&format!(
            ", model-fetch;dur={:.2}, model-build;dur={:.2}",
            context.model_fetch_ms, context.model_build_ms
        ));
    }
    if let Some(tokens) = context.encoded_tokens {
        timing.push_str(&format!(", tokens;desc={tokens}"));
    }
    if let Some(tower_ms) = context.tower_ms {
        timing.push_str(&format!(", tower;dur={tower_ms:.2}"));
    }
    if let Some(tokenize_ms) = context.tokenize_ms {
        timing.push_str(&format!(", tokenize;dur={tokenize_ms:.2}"));
    }
    if context.edge_cache_ms > 0.0 {
        timing.push_str(&format!(", edge-cache;dur={:.2}", context.edge_cache_ms));
    }
    if let Some(layer) = context.embedding_cache_hit {
        timing.push_str(&format!(", encode-cache;desc={layer}"));
    }
    timing.push_str(&format!(", total;dur={:.2}", clock::since(started)));
    response.headers().set("server-timing", &timing)?;
    if let Some(memory) = engine::memory_bytes() {
        response
            .headers()
            .set("x-clipedge-wasm-memory", &memory.to_string())?;
    }
    Ok(())
}

/// clip-retrieval's `POST /knn-service`: the `/v1` search, answered as its list of results.
async fn knn_service(request: &mut Request, context: &mut RequestContext<'_>) -> Result<Response> {
    let started = monotonic_ms();
    let body = request.bytes().await?;
    let parsed = match parse_knn_request(&body) {
        Ok(parsed) => parsed,
        Err(error) => return error_response(&error),
    };
    let known_indexes = context.config.index_names();
    let selected = check_index_name(parsed.indice_name.as_deref(), &known_indexes)
        .and_then(|name| context.select_index(Some(&name)));
    if let Err(error) = selected {
        return error_response(&error);
    }
    let generation = match context.generation().await {
        Ok(generation) => generation,
        Err(error) => return error_response(&error),
    };
    let shape = IndexShape::of(&generation.manifest);
    let knn = match parsed.validate(shape, &known_indexes) {
        Ok(knn) => knn,
        Err(error) => return error_response(&error),
    };
    let request_id = request_id();
    let records = knn.search.records;
    match context.search(&generation, knn.search, &request_id).await {
        Ok(answer) => {
            let response = json_response(200, &knn_results(&answer.results, records))?;
            set_search_headers(&response, context, &answer, started)?;
            let not_applied = knn_not_applied(&knn.not_applied, &answer.not_applied);
            if let Some(not_applied) = not_applied_header(&not_applied) {
                response.headers().set(NOT_APPLIED_HEADER, &not_applied)?;
            }
            Ok(response)
        }
        Err(error) => {
            worker::console_warn!("knn search {request_id} failed: {error}");
            error_response(&error)
        }
    }
}

/// clip-retrieval's `POST /metadata`: each id's caption and URL, in the order asked.
async fn metadata(request: &mut Request, context: &mut RequestContext<'_>) -> Result<Response> {
    let body = request.bytes().await?;
    let parsed = match parse_metadata_request(&body) {
        Ok(parsed) => parsed,
        Err(error) => return error_response(&error),
    };
    let known_indexes = context.config.index_names();
    let indice_name = parsed.indice_name.clone();
    let ids = match parsed.validate(&known_indexes) {
        Ok(ids) => ids,
        Err(error) => return error_response(&error),
    };
    // Validated: the name is one of the served indexes.
    if let Err(error) = context.select_index(indice_name.as_deref()) {
        return error_response(&error);
    }
    let mut items = Vec::with_capacity(ids.len());
    for id in ids {
        match context.item(id).await {
            Ok(item) => items.push(item),
            Err(error) => return error_response(&error),
        }
    }
    json_response(200, &metadata_entries(items))
}

async fn media_response(context: &RequestContext<'_>, path: &str) -> Result<Response> {
    let object = match media_object(path) {
        Ok(object) => object,
        Err(error) => return error_response(&error),
    };
    match context.media(&object).await {
        Ok(bytes) => {
            let response = bytes_response(200, media_content_type(path), bytes)?;
            response
                .headers()
                .set("cache-control", MEDIA_CACHE_CONTROL)?;
            Ok(response)
        }
        Err(SourceError::NotFound { .. }) => error_response(&media_not_found(path)),
        Err(error) => error_response(&ApiError::new(ErrorCode::Internal, error.to_string())),
    }
}
