//! `clipedge-scanner`: the scanner Lambda behind a function URL (see `lambda/src/lib.rs`).

use std::sync::Arc;

use clipedge_lambda::{Reply, Scanner, ScannerConfig};
use lambda_http::{service_fn, Body, Error, Request, Response};
use tracing_subscriber::EnvFilter;

async fn respond(scanner: &Scanner, request: Request) -> Result<Response<Body>, Error> {
    let reply = if request.method() != http::Method::POST {
        Reply::error(405, "scan requests are POSTed")
    } else {
        scanner
            .handle(request.headers(), request.body().as_ref())
            .await
    };
    let body = if reply.content_type == "application/json" {
        Body::Text(String::from_utf8_lossy(&reply.body).into_owned())
    } else {
        Body::Binary(reply.body)
    };
    let response = Response::builder()
        .status(reply.status)
        .header(http::header::CONTENT_TYPE, reply.content_type)
        .body(body)?;
    Ok(response)
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("CLIPEDGE_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_ansi(false)
        .without_time()
        .init();
    let config = ScannerConfig::from_env()?;
    tracing::info!(
        list_cache_bytes = config.list_cache_bytes,
        auth = ?config.auth,
        "scanner starting"
    );
    let scanner = Arc::new(Scanner::new(config));
    lambda_http::run(service_fn(move |request: Request| {
        let scanner = scanner.clone();
        async move { respond(&scanner, request).await }
    }))
    .await
}
