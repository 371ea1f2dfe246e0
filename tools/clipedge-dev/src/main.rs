//! `clipedge-dev`: tools for developing clipedge, kept out of the `clipedge` product binary.
//!
//! - `local-stack up|down`: the whole serverless stack on this machine (s3s-fs, the Lambda
//!   emulator with the scanner, `wrangler dev` with the Worker), used by the end-to-end tests
//!   and the edge benchmark.

mod local_stack;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "clipedge-dev",
    version,
    about = "Developer tools of clipedge (not part of the product)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the serverless stack locally: S3 server, Lambda emulator with the scanner, and the
    /// edge Worker under wrangler dev; `up` publishes an index and prints the Worker's URL.
    LocalStack(local_stack::LocalStackArgs),
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
        Command::LocalStack(args) => local_stack::run(args),
    };
    if let Err(error) = outcome {
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
}
