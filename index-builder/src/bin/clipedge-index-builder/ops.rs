//! `gc` and `rollback`: generation housekeeping on a published index.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Args;
use clipedge_index_builder::{gc, rollback, GcOptions};
use clipedge_storage::Storage;

use crate::run::parse_duration;

#[derive(Args)]
pub struct GcArgs {
    /// Index root: a directory, file:// URL or s3://bucket/prefix.
    #[arg(long)]
    index: String,
    /// Complete generations to keep, newest first (the one CURRENT names is always kept).
    #[arg(long, default_value_t = 3)]
    keep: usize,
    /// Never delete a generation written to more recently than this (queries pin one while
    /// they run; a build in progress writes for hours before its manifest exists).
    #[arg(long, default_value = "1h")]
    grace: String,
    /// Print what would be deleted; delete nothing.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Args)]
pub struct RollbackArgs {
    /// Index root: a directory, file:// URL or s3://bucket/prefix.
    #[arg(long)]
    index: String,
    /// The generation to point CURRENT at; default the newest servable one older than CURRENT.
    #[arg(long)]
    to: Option<String>,
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

pub fn run_gc(args: GcArgs) -> anyhow::Result<()> {
    let storage =
        Storage::open(&args.index).with_context(|| format!("opening index {}", args.index))?;
    let options = GcOptions {
        keep: args.keep,
        grace: parse_duration(&args.grace)?,
        dry_run: args.dry_run,
        now_unix_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|elapsed| elapsed.as_millis() as u64)
            .unwrap_or(0),
    };
    let report = runtime()?
        .block_on(gc(&storage, &options))
        .with_context(|| format!("garbage-collecting {}", args.index))?;
    for generation in &report.deleted {
        let verb = if args.dry_run {
            "would delete"
        } else {
            "deleted"
        };
        eprintln!("gc: {verb} generation {generation}");
    }
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

pub fn run_rollback(args: RollbackArgs) -> anyhow::Result<()> {
    let storage =
        Storage::open(&args.index).with_context(|| format!("opening index {}", args.index))?;
    let report = runtime()?
        .block_on(rollback(&storage, args.to.as_deref()))
        .with_context(|| format!("rolling back {}", args.index))?;
    eprintln!(
        "rollback: CURRENT moved from {} to {}",
        report.from, report.to
    );
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
