use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use crate::demo_index::ensure_demo_index;
use crate::serve::{default_label, load_encoder, runtime, serve_index, IndexSpec};

#[derive(Args)]
pub struct DemoArgs {
    /// Address to listen on (port 0: any free port; the address is printed).
    #[arg(long, default_value = "127.0.0.1:8080")]
    bind: String,
    /// The demo dataset (`items.jsonl` + `images/`).
    #[arg(long, default_value = "demo")]
    dataset: PathBuf,
    /// Text model package that embeds the captions and the queries.
    #[arg(long, default_value = "models/minilm-l6-v2")]
    model: PathBuf,
    /// Where the index is built (once; rebuilt when the dataset or the model changes).
    #[arg(long, default_value = "data/demo-index")]
    dir: PathBuf,
    /// Build (or check) the index, print its summary and exit without serving.
    #[arg(long)]
    build_only: bool,
}

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let encoder = load_encoder(&args.model)?;
    let runtime = runtime()?;
    let demo = runtime
        .block_on(ensure_demo_index(&args.dataset, &encoder, &args.dir))
        .with_context(|| format!("building the demo index in {}", args.dir.display()))?;
    let summary = serde_json::json!({
        "index": demo.dir.display().to_string(),
        "items": demo.items,
        "built": demo.built,
        "seconds": demo.seconds,
    });
    if args.build_only {
        println!("{summary}");
        return Ok(());
    }
    eprintln!("{summary}");
    let label = default_label(&encoder);
    let index = args.dir.display().to_string();
    let specs = [IndexSpec {
        name: clipedge_api::clip_retrieval::index_name(&index),
        location: index,
    }];
    runtime.block_on(serve_index(
        &specs,
        encoder,
        None,
        &args.bind,
        &label,
        clipedge_server::ServeOptions::default(),
    ))
}
