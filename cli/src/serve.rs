use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use clipedge_api::clip_retrieval::{index_media_base, index_name, split_named_index};
use clipedge_server::{Engine, Indexes, ServeOptions};
use clipedge_text::TextEncoder;

#[derive(Args)]
pub struct ServeArgs {
    /// Index root: a directory, `file://` URL or `s3://bucket/prefix`; `NAME=ROOT` serves it
    /// under NAME. Repeat to serve several (each needs its own name): clip-retrieval's
    /// `indice_name` and `/v1/search`'s `index` pick one, the first is the default.
    #[arg(long, required = true, value_name = "[NAME=]DIR_OR_URL")]
    index: Vec<String>,
    /// Text model package the index was built with (its fingerprint must match the manifest's).
    #[arg(long, default_value = "models/minilm-l6-v2")]
    model: PathBuf,
    /// A multilingual text tower for clip-retrieval's `use_mclip` and `/v1`'s
    /// `"multilingual": true` (M-CLIP): a package whose card's `aligned_to` names the index
    /// model's fingerprint. Without it those queries get 422 `multilingual_unsupported`.
    #[arg(long)]
    multilingual_model: Option<PathBuf>,
    /// Address to listen on (port 0: any free port; the address is printed).
    #[arg(long, default_value = "127.0.0.1:8080")]
    bind: String,
    /// Text shown on the page under the search box (default: from the model).
    #[arg(long)]
    label: Option<String>,
    /// Name clip-retrieval clients select the (first) index by (`indice_name`; listed by
    /// `GET /indices-list`), as `--index NAME=…` does. Default: the last segment of `--index`.
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

/// One index to serve: its `indice_name` and its location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IndexSpec {
    pub name: String,
    pub location: String,
}

/// `--index [NAME=]ROOT` (repeated) and `--index-name` as the indexes to serve, in order.
fn index_specs(indexes: &[String], first_name: Option<&str>) -> anyhow::Result<Vec<IndexSpec>> {
    let mut specs = Vec::with_capacity(indexes.len());
    for (position, spec) in indexes.iter().enumerate() {
        let (name, location) = split_named_index(spec);
        if location.trim().is_empty() {
            anyhow::bail!("--index {spec:?}: no index location");
        }
        let name = match (name, first_name) {
            (Some(_), Some(_)) if position == 0 => {
                anyhow::bail!("--index {spec:?} is named, and --index-name names it again")
            }
            (Some(name), _) => name.to_string(),
            (None, Some(name)) if position == 0 => name.trim().to_string(),
            (None, _) => index_name(location),
        };
        if let Some(earlier) = specs
            .iter()
            .find(|earlier: &&IndexSpec| earlier.name == name)
        {
            anyhow::bail!(
                "--index {spec:?} and --index {:?} are both named {name:?}: name them with \
                 --index NAME=DIR_OR_URL",
                earlier.location
            );
        }
        specs.push(IndexSpec {
            name,
            location: location.to_string(),
        });
    }
    Ok(specs)
}

/// Opens the indexes (each its own engine, checked against the model), binds, prints
/// `{"listening": URL, …}` as one stdout line and serves.
pub(crate) async fn serve_index(
    specs: &[IndexSpec],
    encoder: Arc<TextEncoder>,
    multilingual: Option<Arc<TextEncoder>>,
    bind: &str,
    label: &str,
    options: ServeOptions,
) -> anyhow::Result<()> {
    let mut engines = Vec::with_capacity(specs.len());
    for (position, spec) in specs.iter().enumerate() {
        // The default index's media are at `/media/…`, another's at `/indexes/NAME/media/…`.
        let root_base = if position == 0 {
            "/".to_string()
        } else {
            index_media_base(&spec.name)
        };
        let mut engine = Engine::open(&spec.location, Some(encoder.clone()), &root_base, label)
            .await
            .with_context(|| format!("serving index {:?}", spec.name))?;
        if let Some(multilingual) = &multilingual {
            engine = engine
                .with_multilingual(multilingual.clone())
                .with_context(|| format!("serving index {:?}", spec.name))?;
        }
        engines.push(engine.with_name(&spec.name));
    }
    let indexes = Indexes::new(engines)?;
    let health = indexes.default_engine().health();
    let (listener, address) = clipedge_server::bind(bind)
        .await
        .with_context(|| format!("binding {bind}"))?;
    let line = serde_json::json!({
        "listening": format!("http://{address}"),
        "index": specs[0].location,
        "generation": health.generation,
        "count": health.count,
        "index_names": indexes.names(),
    });
    println!("{line}");
    eprintln!(
        "serving {} images on http://{address}/ (ctrl-c stops)",
        health.count
    );
    clipedge_server::serve_with(listener, Arc::new(indexes), options)
        .await
        .context("serving http")
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let options = args.options()?;
    let specs = index_specs(&args.index, args.index_name.as_deref())?;
    let encoder = load_encoder(&args.model)?;
    let multilingual = args
        .multilingual_model
        .as_ref()
        .map(load_encoder)
        .transpose()?;
    let label = args.label.unwrap_or_else(|| default_label(&encoder));
    runtime()?.block_on(serve_index(
        &specs,
        encoder,
        multilingual,
        &args.bind,
        &label,
        options,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn specs(indexes: &[&str], first_name: Option<&str>) -> anyhow::Result<Vec<IndexSpec>> {
        let indexes: Vec<String> = indexes.iter().map(|spec| spec.to_string()).collect();
        index_specs(&indexes, first_name)
    }

    fn spec(name: &str, location: &str) -> IndexSpec {
        IndexSpec {
            name: name.to_string(),
            location: location.to_string(),
        }
    }

    #[test]
    fn one_index_is_named_as_before() {
        assert_eq!(
            specs(&["data/demo-index"], None).unwrap(),
            vec![spec("demo-index", "data/demo-index")]
        );
        assert_eq!(
            specs(&["data/demo-index"], Some("demo")).unwrap(),
            vec![spec("demo", "data/demo-index")]
        );
    }

    #[test]
    fn several_indexes_keep_their_order_and_names() {
        assert_eq!(
            specs(
                &["laion=s3://bucket/laion", "coyo=./coyo", "/data/cc12m"],
                None
            )
            .unwrap(),
            vec![
                spec("laion", "s3://bucket/laion"),
                spec("coyo", "./coyo"),
                spec("cc12m", "/data/cc12m"),
            ]
        );
    }

    #[test]
    fn duplicate_or_doubly_given_names_are_refused() {
        let error = specs(&["a/index", "b/index"], None)
            .unwrap_err()
            .to_string();
        assert!(error.contains("both named \"index\""), "{error}");
        let error = specs(&["x=a", "x=b"], None).unwrap_err().to_string();
        assert!(error.contains("NAME="), "{error}");
        assert!(specs(&["x=a"], Some("y")).is_err());
        assert!(specs(&["x="], None).is_err());
        // --index-name names the first index only.
        assert_eq!(
            specs(&["a/one", "b/two"], Some("first")).unwrap()[1],
            spec("two", "b/two")
        );
    }
}
