use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use clipedge_server::{Engine, ServeOptions};
use clipedge_text::TextEncoder;

#[derive(Args)]
pub struct ServeArgs {
    /// Index root: a directory, `file://` URL or `s3://bucket/prefix`.
    #[arg(long)]
    index: String,
    /// Text model package the index was built with (its fingerprint must match the manifest's).
    #[arg(long, default_value = "models/minilm-l6-v2")]
    model: PathBuf,
    /// Address to listen on (port 0: any free port; the address is printed).
    #[arg(long, default_value = "127.0.0.1:8080")]
    bind: String,
    /// Text shown on the page under the search box (default: from the model).
    #[arg(long)]
    label: Option<String>,
    /// Name clip-retrieval clients select the index by (`indice_name`; listed by
    /// `GET /indices-list`). Default: the last segment of `--index`.
    #[arg(long)]
    index_name: Option<String>,
    /// Require `Authorization: Bearer KEY` on the query routes (search, knn-service, items,
    /// metadata); only the key's SHA-256 is kept. Prefer the CLIPEDGE_API_KEY environment
    /// variable, which other users cannot read from the process list.
    #[arg(long)]
    api_key: Option<String>,
    /// Queries run at once; more wait in the queue (default: twice the cores).
    #[arg(long)]
    max_concurrent_queries: Option<usize>,
    /// Queries that may wait for a slot; beyond, 503 `overloaded` with Retry-After.
    #[arg(long, default_value_t = 64)]
    max_queued_queries: usize,
    /// A query's limit from arrival, queue included: 503 `overloaded` if it never started,
    /// else 504 `timeout`.
    #[arg(long, default_value_t = 30_000)]
    request_timeout_ms: u64,
    /// Comma-separated origins browsers may call from, or `*` (default: any origin without
    /// --api-key, none with one).
    #[arg(long, value_delimiter = ',')]
    cors_origins: Option<Vec<String>>,
}

/// The environment variable `--api-key` falls back to.
const API_KEY_ENV: &str = "CLIPEDGE_API_KEY";

impl ServeArgs {
    fn options(&self) -> anyhow::Result<ServeOptions> {
        let defaults = ServeOptions::default();
        let api_key = match &self.api_key {
            Some(key) => Some(key.clone()),
            None => std::env::var(API_KEY_ENV).ok(),
        };
        let api_key_hash = match api_key {
            Some(key) if key.trim().is_empty() => {
                anyhow::bail!("--api-key (or {API_KEY_ENV}) is empty")
            }
            Some(key) => Some(clipedge_api::keys::key_hash(key.trim())),
            None => None,
        };
        if self.max_concurrent_queries == Some(0) {
            anyhow::bail!("--max-concurrent-queries must be at least 1");
        }
        if let Some(bad) = self.cors_origins.iter().flatten().find(|origin| {
            let origin = origin.trim();
            origin != "*" && !(origin.starts_with("https://") || origin.starts_with("http://"))
        }) {
            anyhow::bail!(
                "--cors-origins {bad:?}: expected * or origins like https://app.example.com"
            );
        }
        if self.request_timeout_ms == 0 {
            anyhow::bail!("--request-timeout-ms must be at least 1");
        }
        Ok(ServeOptions {
            api_key_hash,
            max_concurrent_queries: self
                .max_concurrent_queries
                .unwrap_or(defaults.max_concurrent_queries),
            max_queued_queries: self.max_queued_queries,
            request_timeout: std::time::Duration::from_millis(self.request_timeout_ms),
            cors_origins: self.cors_origins.as_ref().map(|origins| {
                origins
                    .iter()
                    .map(|origin| origin.trim().trim_end_matches('/').to_string())
                    .filter(|origin| !origin.is_empty())
                    .collect()
            }),
        })
    }
}

/// The page's label: the MiniLM demo model embeds captions, and says so.
pub(crate) fn default_label(encoder: &TextEncoder) -> String {
    clipedge_api::model_label(&encoder.card().name)
}

pub(crate) fn load_encoder(model: &PathBuf) -> anyhow::Result<Arc<TextEncoder>> {
    let encoder = TextEncoder::load(model)
        .with_context(|| format!("loading text model {}", model.display()))?;
    Ok(Arc::new(encoder))
}

pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// Opens the index, binds, prints `{"listening": URL, …}` as one stdout line and serves.
pub(crate) async fn serve_index(
    index: &str,
    encoder: Arc<TextEncoder>,
    bind: &str,
    label: &str,
    index_name: Option<&str>,
    options: ServeOptions,
) -> anyhow::Result<()> {
    let mut engine = Engine::open(index, Some(encoder), "/", label).await?;
    if let Some(name) = index_name {
        engine = engine.with_name(name);
    }
    let health = engine.health();
    let (listener, address) = clipedge_server::bind(bind)
        .await
        .with_context(|| format!("binding {bind}"))?;
    let line = serde_json::json!({
        "listening": format!("http://{address}"),
        "index": index,
        "generation": health.generation,
        "count": health.count,
        "index_names": engine.index_names(),
    });
    println!("{line}");
    eprintln!(
        "serving {} images on http://{address}/ (ctrl-c stops)",
        health.count
    );
    clipedge_server::serve_with(listener, Arc::new(engine), options)
        .await
        .context("serving http")
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let options = args.options()?;
    let encoder = load_encoder(&args.model)?;
    let label = args.label.unwrap_or_else(|| default_label(&encoder));
    runtime()?.block_on(serve_index(
        &args.index,
        encoder,
        &args.bind,
        &label,
        args.index_name.as_deref(),
        options,
    ))
}
