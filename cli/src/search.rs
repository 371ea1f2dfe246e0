use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Args;
use clipedge_api::DEFAULT_NPROBE;
use clipedge_index::route::auto_group_probe;
use clipedge_index::{
    IndexReader, LeafRequest, LeafTargets, OpenOptions, ReadPlan, SearchParams, SearchResult,
    SearchStats,
};
use clipedge_search::plan::{plan_calls_with_margin, CALL_SHARE_MARGIN};
use clipedge_storage::Storage;
use serde::Serialize;

#[derive(Args)]
pub struct SearchArgs {
    /// Index root: a directory, `file://` URL or `s3://bucket/prefix`.
    #[arg(long)]
    index: String,
    /// Query vectors, `.fvecs` or `.npy`.
    #[arg(long)]
    queries: PathBuf,
    /// Results per query.
    #[arg(long, default_value_t = 10)]
    k: usize,
    /// Fine lists scanned per query (default: the generation's measured default, its manifest's
    /// `search_defaults`, else 16).
    #[arg(long)]
    nprobe: Option<usize>,
    /// Rerank `k * rerank` PQ candidates exactly (0: PQ scores only).
    #[arg(long, default_value_t = 10)]
    rerank: usize,
    /// Routing groups opened per query (default: enough for nprobe).
    #[arg(long)]
    group_probe: Option<usize>,
    /// Threads scanning one query's lists (1: single-threaded).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Write the result ids, k per query, as .ivecs (-1 pads missing results).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Write one JSON line per query with ids, scores and latency.
    #[arg(long)]
    jsonl: Option<PathBuf>,
    /// Ground-truth .ivecs for recall@k.
    #[arg(long)]
    truth: Option<PathBuf>,
    /// Untimed passes over the queries before timing (they also warm the list cache).
    #[arg(long, default_value_t = 0)]
    warmup: usize,
    /// Timed passes over the queries; latency statistics cover all of them.
    #[arg(long, default_value_t = 1)]
    repeats: usize,
    /// List cache in MiB (0 disables it: every query reads its lists from storage).
    #[arg(long, default_value_t = 1024)]
    cache_mb: u64,
    /// Search this generation instead of the one CURRENT names.
    #[arg(long)]
    generation: Option<String>,
    /// Run each query as the edge Worker plans it: its routing groups spread over at most this
    /// many scanner calls (each an in-process leaf search, run one after another), their hits
    /// merged. Measures what the fan-out's planning costs in recall and lists scanned.
    #[arg(long)]
    edge_calls: Option<usize>,
    /// With --edge-calls: scanner functions the groups go to by rendezvous hashing.
    #[arg(long, default_value_t = 1)]
    edge_functions: usize,
    /// With --edge-calls: a call is worth making for this many lists (the Worker's
    /// CLIPEDGE_MIN_LISTS_PER_CALL default).
    #[arg(long, default_value_t = 32)]
    min_lists_per_call: usize,
    /// With --edge-calls: how many times its share of nprobe a call may scan.
    #[arg(long, default_value_t = CALL_SHARE_MARGIN)]
    call_margin: f64,
}

/// One query as the edge plans it (`--edge-calls`): the Worker's planner, one leaf search per
/// call, hits merged by score.
async fn edge_search(
    reader: &IndexReader,
    query: &[f32],
    params: &SearchParams,
    args: &SearchArgs,
    scanner_urls: &[String],
) -> anyhow::Result<SearchResult> {
    let generation = reader.generation();
    let groups = auto_group_probe(
        &generation.routing,
        generation.group_screen(),
        query,
        params.nprobe,
    );
    let calls = plan_calls_with_margin(
        &generation.routing,
        &groups,
        params.nprobe,
        args.edge_calls.unwrap_or(1),
        args.min_lists_per_call,
        scanner_urls,
        args.call_margin,
    );
    let mut hits = Vec::new();
    let mut stats = SearchStats {
        groups_probed: groups.len(),
        ..SearchStats::default()
    };
    for call in &calls {
        let request = LeafRequest {
            query,
            targets: LeafTargets::Groups {
                group_ids: &call.batch.group_ids,
                nprobe: call.batch.nprobe as usize,
            },
            k: params.k,
            rerank: params.rerank,
            deadline: None,
            reads: ReadPlan::Coalesced,
            parallel: params.parallel,
        };
        let leaf = reader.leaf_search(&request).await?;
        if let Some(error) = leaf.first_error {
            return Err(error.into());
        }
        stats.lists_scanned += leaf.stats.lists_scanned;
        stats.codes_scanned += leaf.stats.codes_scanned;
        stats.gets += leaf.stats.gets;
        stats.bytes_read += leaf.stats.bytes_read;
        hits.extend(leaf.hits);
    }
    // Lists are disjoint across calls: no hit comes twice.
    hits.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.id.cmp(&b.id)));
    hits.truncate(params.k);
    Ok(SearchResult {
        hits,
        records: Vec::new(),
        stats,
    })
}

#[derive(Serialize)]
struct Latency {
    mean: f64,
    p50: f64,
    p95: f64,
    p99: f64,
    max: f64,
}

#[derive(Serialize)]
struct IndexSummary {
    generation: String,
    n: u64,
    dim: u32,
    nlist: u32,
    ngroups: u32,
    pq_m: u32,
    pq_bits: u8,
    rerank_vectors: String,
}

#[derive(Serialize)]
struct SearchSummary {
    queries: usize,
    k: usize,
    nprobe: usize,
    rerank: usize,
    group_probe: Option<usize>,
    /// `--edge-calls`, `--edge-functions`, `--call-margin` when the Worker's plan ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    edge_calls: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    edge_functions: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    call_margin: Option<f64>,
    threads: usize,
    repeats: usize,
    open_s: f64,
    latency_ms: Latency,
    qps: f64,
    recall_at_k: Option<f64>,
    gets_per_query: f64,
    bytes_per_query: f64,
    lists_per_query: f64,
    /// Routing groups opened (whose lists were ranked).
    groups_per_query: f64,
    codes_per_query: f64,
    index: IndexSummary,
}

fn percentile(sorted: &[f64], fraction: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

pub fn run(args: SearchArgs) -> anyhow::Result<()> {
    if args.k == 0 || args.nprobe == Some(0) || args.repeats == 0 || args.threads == 0 {
        bail!("--k, --nprobe, --repeats and --threads must be at least 1");
    }
    if args.edge_calls == Some(0) || args.edge_functions == 0 {
        bail!("--edge-calls and --edge-functions must be at least 1");
    }
    if !(args.call_margin >= 1.0 && args.call_margin.is_finite()) {
        bail!(
            "--call-margin must be a number of at least 1, not {}",
            args.call_margin
        );
    }
    if args.edge_calls.is_some() && args.group_probe.is_some() {
        bail!("--edge-calls plans its own groups: leave out --group-probe");
    }
    // Names only: rendezvous hashing needs distinct URLs, nothing is called.
    let scanner_urls: Vec<String> = (0..args.edge_functions)
        .map(|function| format!("https://scanner-{function}.invalid/"))
        .collect();
    let queries = clipedge_datagen::read_vectors(&args.queries)?;
    let truth = match &args.truth {
        Some(path) => {
            let truth = clipedge_datagen::read_ivecs(path)?;
            if truth.rows != queries.rows {
                bail!(
                    "{} has {} rows for {} queries",
                    path.display(),
                    truth.rows,
                    queries.rows
                );
            }
            if truth.dim < args.k {
                bail!(
                    "{} has {} neighbours per query, recall@{} needs at least {}",
                    path.display(),
                    truth.dim,
                    args.k,
                    args.k
                );
            }
            Some(truth)
        }
        None => None,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let pool = if args.threads > 1 {
        Some(crate::thread_pool(args.threads)?)
    } else {
        None
    };
    let storage = Storage::open(&args.index)?;
    let options = OpenOptions {
        list_cache_bytes: args.cache_mb << 20,
        generation: args.generation.clone(),
        ..OpenOptions::default()
    };
    let open_started = Instant::now();
    let reader = runtime
        .block_on(IndexReader::open(storage, options))
        .with_context(|| format!("opening index {}", args.index))?;
    let open_s = open_started.elapsed().as_secs_f64();
    let manifest = reader.manifest().clone();
    if queries.dim != manifest.dim as usize {
        bail!(
            "queries have dimension {}, index {} has {}",
            queries.dim,
            args.index,
            manifest.dim
        );
    }
    let nprobe = args
        .nprobe
        .unwrap_or_else(|| manifest.default_nprobe().unwrap_or(DEFAULT_NPROBE));
    let params = SearchParams {
        group_probe: args.group_probe,
        parallel: args.threads > 1,
        ..SearchParams::new(args.k, nprobe, args.rerank)
    };
    let search_one = |row: usize| -> anyhow::Result<SearchResult> {
        let query = queries.row(row);
        // One thread scans on the calling thread: a hop into a pool costs two wake-ups a query.
        if args.edge_calls.is_some() {
            let edge = edge_search(&reader, query, &params, &args, &scanner_urls);
            return match &pool {
                Some(pool) => pool.install(|| runtime.block_on(edge)),
                None => runtime.block_on(edge),
            };
        }
        let result = match &pool {
            Some(pool) => pool.install(|| runtime.block_on(reader.search(query, &params))),
            None => runtime.block_on(reader.search(query, &params)),
        };
        Ok(result?)
    };
    for _ in 0..args.warmup {
        for row in 0..queries.rows {
            search_one(row)?;
        }
    }
    let mut latencies_ms = Vec::with_capacity(queries.rows * args.repeats);
    let mut last_results: Vec<SearchResult> = Vec::with_capacity(queries.rows);
    let (mut gets, mut bytes, mut lists, mut codes) = (0u64, 0u64, 0u64, 0u64);
    let mut groups = 0u64;
    let timed_started = Instant::now();
    for repeat in 0..args.repeats {
        for row in 0..queries.rows {
            let started = Instant::now();
            let result = search_one(row)?;
            latencies_ms.push(started.elapsed().as_secs_f64() * 1000.0);
            gets += result.stats.gets;
            bytes += result.stats.bytes_read;
            lists += result.stats.lists_scanned as u64;
            groups += result.stats.groups_probed as u64;
            codes += result.stats.codes_scanned;
            if repeat + 1 == args.repeats {
                last_results.push(result);
            }
        }
    }
    let timed_s = timed_started.elapsed().as_secs_f64();
    let ids: Vec<i32> = last_results
        .iter()
        .flat_map(|result| {
            (0..args.k).map(|rank| {
                result
                    .hits
                    .get(rank)
                    .map_or(-1, |hit| i32::try_from(hit.id).unwrap_or(-1))
            })
        })
        .collect();
    if let Some(path) = &args.out {
        clipedge_datagen::write_ivecs(path, &ids, args.k)?;
    }
    if let Some(path) = &args.jsonl {
        write_jsonl(
            path,
            &last_results,
            &latencies_ms[latencies_ms.len() - queries.rows..],
        )?;
    }
    let recall_at_k = truth.as_ref().map(|truth| {
        let truth_u32: Vec<u32> = truth.data.iter().map(|id| *id as u32).collect();
        let result_u32: Vec<u32> = ids.iter().map(|id| *id as u32).collect();
        clipedge_datagen::recall_at_k(&result_u32, args.k, &truth_u32, truth.dim, args.k)
    });
    let mut sorted = latencies_ms.clone();
    sorted.sort_by(f64::total_cmp);
    let runs = latencies_ms.len() as f64;
    let summary = SearchSummary {
        queries: queries.rows,
        k: args.k,
        nprobe,
        rerank: args.rerank,
        group_probe: args.group_probe,
        edge_calls: args.edge_calls,
        edge_functions: args.edge_calls.map(|_| args.edge_functions),
        call_margin: args.edge_calls.map(|_| args.call_margin),
        threads: args.threads,
        repeats: args.repeats,
        open_s,
        latency_ms: Latency {
            mean: latencies_ms.iter().sum::<f64>() / runs,
            p50: percentile(&sorted, 0.50),
            p95: percentile(&sorted, 0.95),
            p99: percentile(&sorted, 0.99),
            max: sorted.last().copied().unwrap_or(0.0),
        },
        qps: runs / timed_s.max(1e-9),
        recall_at_k,
        gets_per_query: gets as f64 / runs,
        bytes_per_query: bytes as f64 / runs,
        lists_per_query: lists as f64 / runs,
        groups_per_query: groups as f64 / runs,
        codes_per_query: codes as f64 / runs,
        index: IndexSummary {
            generation: manifest.generation.clone(),
            n: manifest.count,
            dim: manifest.dim,
            nlist: manifest.nlist,
            ngroups: manifest.ngroups,
            pq_m: manifest.pq.m,
            pq_bits: manifest.pq.bits,
            rerank_vectors: manifest.rerank.as_str().to_string(),
        },
    };
    println!("{}", serde_json::to_string(&summary)?);
    Ok(())
}

fn write_jsonl(
    path: &PathBuf,
    results: &[SearchResult],
    latencies_ms: &[f64],
) -> anyhow::Result<()> {
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut writer = std::io::BufWriter::new(file);
    for (query, (result, latency_ms)) in results.iter().zip(latencies_ms).enumerate() {
        let line = serde_json::json!({
            "query": query,
            "ids": result.hits.iter().map(|hit| hit.id).collect::<Vec<_>>(),
            "scores": result.hits.iter().map(|hit| hit.score).collect::<Vec<_>>(),
            "content_hashes": result.hits.iter().map(|hit| format!("{:016x}", hit.content_hash)).collect::<Vec<_>>(),
            "latency_ms": latency_ms,
            "gets": result.stats.gets,
            "bytes": result.stats.bytes_read,
        });
        writeln!(writer, "{line}")?;
    }
    writer.flush()?;
    Ok(())
}
