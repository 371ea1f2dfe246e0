//! clipedge's edge query front: a Cloudflare Worker (Rust → wasm32).
//!
//! `POST /v1/search`: validate → encode the text (tract, model from the bucket) → rank routing
//! groups (the table held in the isolate) → one signed call per batch of groups to the scanner
//! Lambdas, at most six at once → merge and de-duplicate → captions and URLs from the catalog.
//! Also `GET /v1/health`, `GET /v1/items/{id}`, the demo page and `/media/…` from the bucket,
//! and clip-retrieval's `POST /knn-service`, `GET /indices-list` and `POST /metadata` (shaped
//! by `clipedge_api::clip_retrieval` over the same search).
//!
//! The modules without `worker` types (`config`, `plan`) are tested on the host; the rest runs
//! in workerd, where `tests/tests/edge_worker.rs` drives it end to end.

pub mod clock;
pub mod config;
pub mod embed_cache;
pub mod engine;
pub mod objects;
pub mod plan;
pub mod scanners;
pub mod shared;

use std::cell::Cell;

use clipedge_api::clip_retrieval::{
    knn_results, metadata_entries, not_applied_header, parse_knn_request, parse_metadata_request,
    IndexShape, NOT_APPLIED_HEADER,
};
use clipedge_api::web::{media_content_type, media_not_found, media_object, MEDIA_CACHE_CONTROL};
use clipedge_api::{
    parse_search_request, server_timing, web, ApiError, ErrorCode, SearchResponse, MAX_BODY_BYTES,
};
use worker::{event, Context, Env, Headers, Method, Request, Response, Result};

use crate::clock::{monotonic_ms, unix_ms};
use crate::config::WorkerConfig;
use crate::engine::RequestContext;
use crate::objects::{ObjectError, Objects};

thread_local! {
    static REQUEST_SEQUENCE: Cell<u64> = const { Cell::new(0) };
}

fn cors_headers(headers: &Headers) -> Result<()> {
    headers.set("access-control-allow-origin", "*")?;
    headers.set("access-control-allow-methods", "GET, POST, OPTIONS")?;
    headers.set("access-control-allow-headers", "content-type")?;
    headers.set(
        "access-control-expose-headers",
        &format!("server-timing, {NOT_APPLIED_HEADER}"),
    )?;
    Ok(())
}

fn bytes_response(status: u16, content_type: &str, body: Vec<u8>) -> Result<Response> {
    let headers = Headers::new();
    headers.set("content-type", content_type)?;
    cors_headers(&headers)?;
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

fn config(env: &Env) -> std::result::Result<WorkerConfig, ApiError> {
    WorkerConfig::from_lookup(|name| {
        env.secret(name)
            .map(|secret| secret.to_string())
            .or_else(|_| env.var(name).map(|var| var.to_string()))
            .ok()
    })
    .map_err(|error| {
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

#[event(fetch)]
pub async fn fetch(mut request: Request, env: Env, _context: Context) -> Result<Response> {
    let path = request.path();
    let method = request.method();
    if method == Method::Options {
        let headers = Headers::new();
        cors_headers(&headers)?;
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
    let is_api = path.starts_with("/v1/") || path.starts_with("/media/") || is_clip_retrieval;
    if !is_api {
        return error_response(&ApiError::new(
            ErrorCode::NotFound,
            format!("no route {path}"),
        ));
    }
    let config = match config(&env) {
        Ok(config) => config,
        Err(error) => return error_response(&error),
    };
    let objects = match Objects::new(&config, &env) {
        Ok(objects) => objects,
        Err(error) => {
            return error_response(&ApiError::new(ErrorCode::Internal, error.to_string()))
        }
    };
    let mut context = RequestContext::new(&config, objects);
    match (method, path.as_str()) {
        (Method::Post, "/v1/search") => search(&mut request, &mut context).await,
        (_, "/v1/search") => error_response(&method_not_allowed(&path)),
        (Method::Post, "/knn-service") => knn_service(&mut request, &mut context).await,
        (Method::Get, "/indices-list") => json_response(200, &[&config.index_name]),
        (Method::Post, "/metadata") => metadata(&mut request, &mut context).await,
        (_, "/knn-service" | "/indices-list" | "/metadata") => {
            error_response(&method_not_allowed(&path))
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
            media_response(&context, media.trim_start_matches("/media/")).await
        }
        // The GET routes, asked with another method.
        (_, known)
            if known == "/v1/health"
                || known.starts_with("/v1/items/")
                || known.starts_with("/media/") =>
        {
            error_response(&method_not_allowed(&path))
        }
        _ => error_response(&ApiError::new(
            ErrorCode::NotFound,
            format!("no route {path}"),
        )),
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
    let generation = match context.generation().await {
        Ok(generation) => generation,
        Err(error) => return error_response(&error),
    };
    let known_indexes = [context.config.index_name.clone()];
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
            if let Some(not_applied) = not_applied_header(&knn.not_applied) {
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
    let known_indexes = [context.config.index_name.clone()];
    let ids = match parsed.validate(&known_indexes) {
        Ok(ids) => ids,
        Err(error) => return error_response(&error),
    };
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
        Err(ObjectError::NotFound { .. }) => error_response(&media_not_found(path)),
        Err(error) => error_response(&ApiError::new(ErrorCode::Internal, error.to_string())),
    }
}
