//! The embedded query server: the whole query path in one process (axum), the same `/v1` API
//! and page as the edge Worker, over a local directory or an `s3://` index.
//!
//! - [`Engine`]: encode (`clipedge-text`) → probe, scan and rerank (`clipedge-index`) → merge and
//!   de-duplicate (`clipedge-api`) → captions and image URLs from the generation's catalog.
//! - [`Indexes`]: the named engines one server answers for (`clipedge serve --index
//!   NAME=URL`, repeatable); the first is the default, clip-retrieval's `indice_name` and
//!   `/v1/search`'s `index` select another.
//! - [`router`]: `POST /v1/search`, `GET /v1/health`, `GET /v1/items/{id}`, clip-retrieval's
//!   `POST /knn-service`, `GET /indices-list` and `POST /metadata`, `GET /media/…` (the
//!   index root's images), the page at `/`, CORS.
//! - [`ServeOptions`]: an optional API key and the overload limits (concurrent queries, queue,
//!   deadline) in front of the query routes.
//!
//! Building indexes is not its job (the CLI's `clipedge demo` builds the demo index), so the
//! server depends on nothing above the query crates.

mod engine;
mod guard;
mod http;
mod indexes;

pub use engine::{Engine, EngineError};
pub use guard::ServeOptions;
pub use http::{router, router_with};
pub use indexes::{Indexes, IndexesError};

use std::net::SocketAddr;
use std::sync::Arc;

/// Serves `indexes` on `listener` until ctrl-c (or SIGTERM), with the default options.
pub async fn serve(
    listener: tokio::net::TcpListener,
    indexes: Arc<Indexes>,
) -> std::io::Result<()> {
    serve_with(listener, indexes, ServeOptions::default()).await
}

/// Serves `indexes` on `listener` with `options` until ctrl-c (or SIGTERM).
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    indexes: Arc<Indexes>,
    options: ServeOptions,
) -> std::io::Result<()> {
    axum::serve(listener, router_with(indexes, options))
        .with_graceful_shutdown(shutdown_signal())
        .await
}

/// Binds `address` (port 0 picks a free port) and returns the listener and its real address.
pub async fn bind(address: &str) -> std::io::Result<(tokio::net::TcpListener, SocketAddr)> {
    let listener = tokio::net::TcpListener::bind(address).await?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
}
