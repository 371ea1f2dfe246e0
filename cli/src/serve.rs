use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use clipedge_server::Engine;
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
    clipedge_server::serve(listener, Arc::new(engine))
        .await
        .context("serving http")
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let encoder = load_encoder(&args.model)?;
    let label = args.label.unwrap_or_else(|| default_label(&encoder));
    runtime()?.block_on(serve_index(
        &args.index,
        encoder,
        &args.bind,
        &label,
        args.index_name.as_deref(),
    ))
}
