//! The HTTP surface: `/v1` API, the demo page, the indexes' media objects, CORS. Every route
//! serves the default (first) index unless the request names another: clip-retrieval's
//! `indice_name`, `/v1/search`'s `index`, or `/indexes/NAME/media/…`.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use clipedge_api::clip_retrieval::{
    knn_not_applied, knn_results, metadata_entries, not_applied_header, parse_knn_request,
    parse_metadata_request, IndexShape, NOT_APPLIED_HEADER,
};
use clipedge_api::web::{media_content_type, media_not_found, media_object, MEDIA_CACHE_CONTROL};
use clipedge_api::{parse_search_request, server_timing, ApiError, ErrorCode};
use clipedge_storage::StorageError;
use serde::Serialize;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tracing::debug;

use crate::guard::{guard_layer, Guard, ServeOptions};
use crate::{Engine, Indexes};

fn json_response(status: StatusCode, body: &impl Serialize) -> Response {
    let bytes = match serde_json::to_vec(body) {
        Ok(bytes) => bytes,
        Err(error) => {
            return error_response(&ApiError::new(ErrorCode::Internal, error.to_string()))
        }
    };
    (status, [(header::CONTENT_TYPE, "application/json")], bytes).into_response()
}

pub(crate) fn error_response(error: &ApiError) -> Response {
    let status = StatusCode::from_u16(error.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        error.to_json(),
    )
        .into_response()
}

async fn search(State(indexes): State<Arc<Indexes>>, body: Bytes) -> Response {
    let request = match parse_search_request(&body) {
        Ok(request) => request,
        Err(error) => return error_response(&error),
    };
    let engine = match indexes.select(request.index.as_deref()) {
        Ok(engine) => engine,
        Err(error) => return error_response(&error),
    };
    let search = match request.validate(engine.dim()) {
        Ok(search) => search,
        Err(error) => return error_response(&error),
    };
    match engine.search(search).await {
        Ok(response) => {
            let mut http = json_response(StatusCode::OK, &response);
            if let Ok(value) = HeaderValue::from_str(&server_timing(&response.timings)) {
                http.headers_mut().insert("server-timing", value);
            }
            if let Some(not_applied) = not_applied_header(&response.not_applied) {
                if let Ok(value) = HeaderValue::from_str(&not_applied) {
                    http.headers_mut().insert(NOT_APPLIED_HEADER, value);
                }
            }
            http
        }
        Err(error) => {
            debug!(%error, "search failed");
            error_response(&error)
        }
    }
}

/// clip-retrieval's `POST /knn-service`: the `/v1` search, answered as its list of results.
async fn knn_service(State(indexes): State<Arc<Indexes>>, body: Bytes) -> Response {
    let request = match parse_knn_request(&body) {
        Ok(request) => request,
        Err(error) => return error_response(&error),
    };
    let engine = match indexes.by_indice_name(request.indice_name.as_deref()) {
        Ok(engine) => engine,
        Err(error) => return error_response(&error),
    };
    let shape = IndexShape::of(engine.manifest());
    let knn = match request.validate(shape, indexes.names()) {
        Ok(knn) => knn,
        Err(error) => return error_response(&error),
    };
    let records = knn.search.records;
    let response = match engine.search(knn.search).await {
        Ok(response) => response,
        Err(error) => {
            debug!(%error, "knn search failed");
            return error_response(&error);
        }
    };
    let mut http = json_response(StatusCode::OK, &knn_results(&response.results, records));
    if let Ok(value) = HeaderValue::from_str(&server_timing(&response.timings)) {
        http.headers_mut().insert("server-timing", value);
    }
    let not_applied = knn_not_applied(&knn.not_applied, &response.not_applied);
    if let Some(not_applied) = not_applied_header(&not_applied) {
        if let Ok(value) = HeaderValue::from_str(&not_applied) {
            http.headers_mut().insert(NOT_APPLIED_HEADER, value);
        }
    }
    http
}

/// clip-retrieval's `GET /indices-list`.
async fn indices_list(State(indexes): State<Arc<Indexes>>) -> Response {
    json_response(StatusCode::OK, &indexes.names())
}

/// clip-retrieval's `POST /metadata`.
async fn metadata(State(indexes): State<Arc<Indexes>>, body: Bytes) -> Response {
    let request = match parse_metadata_request(&body) {
        Ok(request) => request,
        Err(error) => return error_response(&error),
    };
    let engine = match indexes.by_indice_name(request.indice_name.as_deref()) {
        Ok(engine) => engine,
        Err(error) => return error_response(&error),
    };
    let ids = match request.validate(indexes.names()) {
        Ok(ids) => ids,
        Err(error) => return error_response(&error),
    };
    match engine.items(&ids).await {
        Ok(items) => json_response(StatusCode::OK, &metadata_entries(items)),
        Err(error) => error_response(&error),
    }
}

async fn health(State(indexes): State<Arc<Indexes>>) -> Response {
    json_response(StatusCode::OK, &indexes.default_engine().health())
}

async fn item(State(indexes): State<Arc<Indexes>>, Path(id): Path<String>) -> Response {
    let engine = indexes.default_engine();
    let Ok(id) = id.parse::<u64>() else {
        return error_response(&ApiError::new(
            ErrorCode::UnknownId,
            format!("item id {id:?} is not a non-negative integer"),
        ));
    };
    match engine.item(id).await {
        Ok(item) => json_response(StatusCode::OK, &item),
        Err(error) => error_response(&error),
    }
}

/// Objects under the default index root's `media/` prefix (the images records point at).
async fn media(State(indexes): State<Arc<Indexes>>, Path(path): Path<String>) -> Response {
    media_of(indexes.default_engine(), &path).await
}

/// `/indexes/NAME/media/…`: another index's media (its relative record URLs point here).
async fn index_media(
    State(indexes): State<Arc<Indexes>>,
    Path((name, path)): Path<(String, String)>,
) -> Response {
    match indexes.select(Some(&name)) {
        Ok(engine) => media_of(engine, &path).await,
        Err(error) => error_response(&error),
    }
}

async fn media_of(engine: &Engine, path: &str) -> Response {
    let object = match media_object(path) {
        Ok(object) => object,
        Err(error) => return error_response(&error),
    };
    match engine.storage().get(&object).await {
        Ok(bytes) => (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, media_content_type(path)),
                (header::CACHE_CONTROL, MEDIA_CACHE_CONTROL),
            ],
            bytes,
        )
            .into_response(),
        Err(StorageError::NotFound { .. }) => error_response(&media_not_found(path)),
        Err(error) => error_response(&ApiError::new(ErrorCode::Internal, error.to_string())),
    }
}

async fn static_asset(uri: axum::http::Uri) -> Response {
    let Some(asset) = clipedge_api::web::asset(uri.path()) else {
        return error_response(&ApiError::new(
            ErrorCode::NotFound,
            format!("no such path {:?}", uri.path()),
        ));
    };
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, asset.content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from(asset.bytes),
    )
        .into_response()
}

async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> Response {
    error_response(&ApiError::new(
        ErrorCode::MethodNotAllowed,
        format!("{method} is not allowed on {}", uri.path()),
    ))
}

/// The whole HTTP surface of the indexes, with the default [`ServeOptions`] (no key).
pub fn router(indexes: Arc<Indexes>) -> Router {
    router_with(indexes, ServeOptions::default())
}

/// The whole HTTP surface of the indexes. The query routes (search, knn, items, metadata) sit
/// behind the [`Guard`] (key, concurrency, deadline); health, `indices-list`, media and the page
/// stay open.
pub fn router_with(indexes: Arc<Indexes>, options: ServeOptions) -> Router {
    // Any origin for an open server; with a key, only the origins named (none by default:
    // callers with a key are servers, not pages).
    let allow_origin = match (&options.cors_origins, options.api_key_hash.is_some()) {
        (Some(origins), _) if origins.iter().any(|origin| origin == "*") => AllowOrigin::any(),
        (Some(origins), _) => AllowOrigin::list(
            origins
                .iter()
                .filter_map(|origin| HeaderValue::from_str(origin).ok()),
        ),
        (None, false) => AllowOrigin::any(),
        (None, true) => AllowOrigin::list(Vec::<HeaderValue>::new()),
    };
    let cors = CorsLayer::new()
        .allow_origin(allow_origin)
        .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
        .allow_headers([header::CONTENT_TYPE, header::AUTHORIZATION])
        .expose_headers([
            header::HeaderName::from_static("server-timing"),
            header::RETRY_AFTER,
            header::HeaderName::from_static(NOT_APPLIED_HEADER),
        ]);
    let guard = Arc::new(Guard::new(options));
    let queries = Router::new()
        .route("/v1/search", post(search))
        .route("/v1/items/{id}", get(item))
        .route("/knn-service", post(knn_service))
        .route("/metadata", post(metadata))
        .route_layer(axum::middleware::from_fn_with_state(guard, guard_layer));
    Router::new()
        .merge(queries)
        .route("/v1/health", get(health))
        .route("/indices-list", get(indices_list))
        .route("/media/{*path}", get(media))
        .route("/indexes/{name}/media/{*path}", get(index_media))
        .fallback(static_asset)
        .method_not_allowed_fallback(method_not_allowed)
        // Bodies past the API's limit get its JSON 413; far larger ones are cut off here.
        .layer(DefaultBodyLimit::max(4 * clipedge_api::MAX_BODY_BYTES))
        .layer(cors)
        .with_state(indexes)
}
