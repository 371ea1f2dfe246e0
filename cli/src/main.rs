//! `clipedge`: build and search clipedge indexes from the command line.
//!
//! The interface of `build` and `search` is stable: external benchmark harnesses drive it.
//! Each prints exactly one JSON object as its last stdout line.

mod build;
mod datagen;
mod demo;
mod demo_index;
mod embed;
mod model;
mod progress;
mod search;
mod serve;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "clipedge",
    version,
    about = "Serverless text-to-image search: build and search IVF-PQ indexes on object storage"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build a new index generation from a vector file and publish it.
    Build(build::BuildArgs),
    /// Search an index with a file of query vectors; prints latency and recall.
    Search(search::SearchArgs),
    /// Write seeded synthetic CLIP-like base vectors, out-of-distribution queries and ground truth.
    Datagen(datagen::DatagenArgs),
    /// Serve an index over HTTP: the /v1 API and the search page, the whole query path in-process.
    Serve(serve::ServeArgs),
    /// Embed texts with a model package: one JSON line per text (embedding, tokens, time).
    Embed(embed::EmbedArgs),
    /// Package-time steps of a model package: compact tokenizer, seeded test towers, fingerprint.
    Model(model::ModelArgs),
    /// Build the bundled demo dataset into a local index (once, cached) and serve it.
    Demo(demo::DemoArgs),
    /// Moved to the developer tool: `clipedge-dev local-stack up|down` (not shown in help).
    #[command(hide = true, disable_help_flag = true)]
    LocalStack {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        rest: Vec<String>,
    },
}

fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CLIPEDGE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Build(args) => build::run(args),
        Command::Search(args) => search::run(args),
        Command::Datagen(args) => datagen::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Embed(args) => embed::run(args),
        Command::Model(args) => model::run(args),
        Command::LocalStack { .. } => Err(anyhow::anyhow!(
            "local-stack is a developer tool now: run `clipedge-dev local-stack ...` \
             (cargo build -p clipedge-dev; the binary sits beside clipedge)"
        )),
    };
    if let Err(error) = outcome {
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
}

/// A rayon pool of `threads` threads (0: one per core).
pub(crate) fn thread_pool(threads: usize) -> anyhow::Result<rayon::ThreadPool> {
    Ok(rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()?)
}
