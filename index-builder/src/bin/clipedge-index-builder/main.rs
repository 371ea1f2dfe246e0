//! `clipedge-index-builder`: the nightly rebuild job (and its GPU check).
//!
//! Every command prints one JSON object as its last stdout line; logs and progress go to stderr.

mod device_check;
mod ops;
mod progress;
mod run;
mod synth;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "clipedge-index-builder",
    version,
    about = "Build, check, publish and garbage-collect clipedge index generations"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The nightly job: ingest, train, assign/encode, write, recall gate, publish, GC.
    Run(Box<run::RunArgs>),
    /// Delete old generations (never CURRENT's, never one inside the grace period).
    Gc(ops::GcArgs),
    /// Point CURRENT back to an earlier generation.
    Rollback(ops::RollbackArgs),
    /// Write a seeded CLIP-like embedding folder in clip-retrieval's layout (float16).
    Synth(synth::SynthArgs),
    /// Compare the GPU build kernels with the CPU reference and measure GPU throughput.
    DeviceCheck(device_check::DeviceCheckArgs),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CLIPEDGE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Run(args) => run::run(*args).map(ExitCode::from),
        Command::Synth(args) => synth::run(args).map(|()| ExitCode::SUCCESS),
        Command::Gc(args) => ops::run_gc(args).map(|()| ExitCode::SUCCESS),
        Command::Rollback(args) => ops::run_rollback(args).map(|()| ExitCode::SUCCESS),
        Command::DeviceCheck(args) => device_check::run(args).map(|passed| {
            if passed {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }),
    };
    outcome.unwrap_or_else(|error| {
        eprintln!("error: {error:#}");
        ExitCode::from(2)
    })
}
