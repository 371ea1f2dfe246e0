//! The Worker's settings, from its environment (`[vars]` and secrets in `wrangler.toml`).
//!
//! Plain code over a lookup function, so the host tests cover it without a Workers runtime.

use thiserror::Error;

/// The scanner-facing index root, `s3://bucket/prefix`: sent in every scan request.
pub const INDEX_VAR: &str = "CLIPEDGE_INDEX";
/// Name of an R2 bucket binding holding the index and the model (reads then skip HTTP).
pub const R2_BINDING_VAR: &str = "CLIPEDGE_R2_BINDING";
/// S3 endpoint for the Worker's own reads when there is no R2 binding.
pub const S3_ENDPOINT_VAR: &str = "CLIPEDGE_S3_ENDPOINT";
pub const S3_REGION_VAR: &str = "CLIPEDGE_S3_REGION";
/// Secrets: S3 keys for presigned reads (unset: the objects must be publicly readable).
pub const S3_ACCESS_KEY_VAR: &str = "CLIPEDGE_S3_ACCESS_KEY_ID";
pub const S3_SECRET_KEY_VAR: &str = "CLIPEDGE_S3_SECRET_ACCESS_KEY";
/// Key prefix of the text model package in the same bucket (`model.toml`, `tokenizer.json`, …).
pub const MODEL_PREFIX_VAR: &str = "CLIPEDGE_MODEL_PREFIX";
/// Comma-separated scanner function URLs; each routing group goes to the function that wins it
/// by rendezvous hashing (cache affinity), a retry to its second choice (`plan::plan_calls`).
pub const SCANNER_URLS_VAR: &str = "CLIPEDGE_SCANNER_URLS";
/// Secret: the HMAC key shared with the scanners.
pub const SCANNER_SECRET_VAR: &str = "CLIPEDGE_SCANNER_SECRET";
pub const MAX_SCANNER_CALLS_VAR: &str = "CLIPEDGE_MAX_SCANNER_CALLS";
pub const MIN_LISTS_PER_CALL_VAR: &str = "CLIPEDGE_MIN_LISTS_PER_CALL";
pub const SCANNER_TIMEOUT_VAR: &str = "CLIPEDGE_SCANNER_TIMEOUT_MS";
/// Milliseconds a request may take from arrival: the scanner fan-out (calls and retries) gets
/// what is left of it, and unanswered lists are reported as failed when it runs out.
pub const REQUEST_DEADLINE_VAR: &str = "CLIPEDGE_REQUEST_DEADLINE_MS";
pub const CURRENT_TTL_VAR: &str = "CLIPEDGE_CURRENT_TTL_MS";
/// Entries of the per-isolate text → embedding LRU (0 turns it off).
pub const EMBED_CACHE_ENTRIES_VAR: &str = "CLIPEDGE_EMBED_CACHE_ENTRIES";
/// How long the data centre's Cache API keeps an embedding, in seconds (0 turns it off).
pub const EMBED_CACHE_TTL_VAR: &str = "CLIPEDGE_EMBED_CACHE_TTL_S";
/// A bucket prefix holding `clipedge_io::conformance::objects()`: turns on
/// `GET /v1/conformance/object-source`, which runs the object-source suite against the Worker's own
/// source (R2 binding or presigned GETs) inside workerd. Unset in production.
pub const CONFORMANCE_PREFIX_VAR: &str = "CLIPEDGE_CONFORMANCE_PREFIX";
pub const LABEL_VAR: &str = "CLIPEDGE_LABEL";
/// The name clip-retrieval clients select the index by (`indice_name`); default: the last
/// segment of `CLIPEDGE_INDEX`.
pub const INDEX_NAME_VAR: &str = "CLIPEDGE_INDEX_NAME";
/// More indexes beside `CLIPEDGE_INDEX` (the default), in the same bucket:
/// `NAME=s3://bucket/prefix,NAME2=s3://bucket/prefix2`. clip-retrieval's `indice_name` and
/// `/v1/search`'s `index` select one; all must be built with the Worker's model.
pub const INDEXES_VAR: &str = "CLIPEDGE_INDEXES";

/// A Worker may hold 6 outgoing connections at once: more concurrent calls only queue.
pub const MAX_CONCURRENT_CALLS: usize = 6;
/// A scanner call per this many scanned lists: the default nprobe (16) and 32 take one call.
/// Each call costs a Lambda request ($0.20/M), and from two calls on the planner scans 2 ×
/// nprobe lists in all; measured on loopback, one call at nprobe 32 was as fast as two and
/// scanned half the lists (README "Scale and cost", `benches/affinity_bench.py`).
pub const DEFAULT_MIN_LISTS_PER_CALL: usize = 32;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{name} is not set: {hint}")]
    Missing {
        name: &'static str,
        hint: &'static str,
    },
    #[error("invalid {name}={value:?}: {reason}")]
    Invalid {
        name: &'static str,
        value: String,
        reason: String,
    },
}

/// Where the Worker reads index and model objects from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObjectSourceConfig {
    /// An R2 bucket binding (the binding's name).
    R2 { binding: String },
    /// An S3-compatible endpoint, path-style, with presigned GETs when keys are given.
    S3 {
        endpoint: String,
        region: String,
        keys: Option<(String, String)>,
    },
}

/// One served index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexConfig {
    /// `indice_name` for clip-retrieval clients, `index` for `/v1/search`.
    pub name: String,
    /// `s3://bucket/prefix` as given: what scanner requests name.
    pub url: String,
    /// The index root's key prefix inside the bucket, without a trailing slash (may be empty).
    pub prefix: String,
}

impl IndexConfig {
    /// The bucket key of an object under the index root.
    pub fn key(&self, object: &str) -> String {
        join_key(&self.prefix, object)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerConfig {
    /// The served indexes, all in [`WorkerConfig::bucket`]: `CLIPEDGE_INDEX` first (the
    /// default), then `CLIPEDGE_INDEXES` in order. Names are distinct.
    pub indexes: Vec<IndexConfig>,
    pub bucket: String,
    pub model_prefix: String,
    pub source: ObjectSourceConfig,
    pub scanner_urls: Vec<String>,
    pub scanner_secret: Vec<u8>,
    pub max_scanner_calls: usize,
    pub min_lists_per_call: usize,
    pub scanner_timeout_ms: u32,
    pub request_deadline_ms: u32,
    pub current_ttl_ms: u64,
    pub embed_cache_entries: usize,
    pub embed_cache_ttl_s: u64,
    pub label: String,
    /// See [`CONFORMANCE_PREFIX_VAR`].
    pub conformance_prefix: Option<String>,
}

fn parse_number<T: std::str::FromStr>(
    name: &'static str,
    value: Option<String>,
    default: T,
    valid: impl Fn(&T) -> bool,
    expected: &str,
) -> Result<T, ConfigError> {
    let Some(value) = value else {
        return Ok(default);
    };
    match value.trim().parse::<T>() {
        Ok(parsed) if valid(&parsed) => Ok(parsed),
        _ => Err(ConfigError::Invalid {
            name,
            value,
            reason: format!("expected {expected}"),
        }),
    }
}

/// Splits `s3://bucket/prefix` into the bucket and the prefix (no trailing slash).
pub fn split_s3_url(url: &str) -> Option<(String, String)> {
    let rest = url.strip_prefix("s3://")?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return None;
    }
    Some((bucket.to_string(), prefix.trim_matches('/').to_string()))
}

impl WorkerConfig {
    /// Reads the configuration through `lookup` (vars and secrets by name; empty counts as unset).
    pub fn from_lookup(
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<WorkerConfig, ConfigError> {
        let get = |name: &str| lookup(name).filter(|value| !value.trim().is_empty());
        let index = get(INDEX_VAR).ok_or(ConfigError::Missing {
            name: INDEX_VAR,
            hint: "the index root the scanners read, e.g. s3://my-bucket/indexes/laion",
        })?;
        let (bucket, index_prefix) =
            split_s3_url(index.trim()).ok_or_else(|| ConfigError::Invalid {
                name: INDEX_VAR,
                value: index.clone(),
                reason: "expected s3://bucket/prefix".to_string(),
            })?;
        let model_prefix = get(MODEL_PREFIX_VAR)
            .ok_or(ConfigError::Missing {
                name: MODEL_PREFIX_VAR,
                hint: "the key prefix of the text model package in the index bucket, e.g. models/clip-b32",
            })?
            .trim()
            .trim_matches('/')
            .to_string();
        let source = if let Some(binding) = get(R2_BINDING_VAR) {
            ObjectSourceConfig::R2 {
                binding: binding.trim().to_string(),
            }
        } else {
            let endpoint = get(S3_ENDPOINT_VAR).ok_or(ConfigError::Missing {
                name: S3_ENDPOINT_VAR,
                hint: "an S3 endpoint (https://s3.us-east-1.amazonaws.com) or set CLIPEDGE_R2_BINDING",
            })?;
            let endpoint = endpoint.trim().trim_end_matches('/').to_string();
            if !(endpoint.starts_with("https://") || endpoint.starts_with("http://")) {
                return Err(ConfigError::Invalid {
                    name: S3_ENDPOINT_VAR,
                    value: endpoint,
                    reason: "expected an http(s):// URL".to_string(),
                });
            }
            let keys = match (get(S3_ACCESS_KEY_VAR), get(S3_SECRET_KEY_VAR)) {
                (Some(key), Some(secret)) => Some((key, secret)),
                (None, None) => None,
                _ => {
                    return Err(ConfigError::Invalid {
                        name: S3_ACCESS_KEY_VAR,
                        value: String::new(),
                        reason: format!(
                            "set both {S3_ACCESS_KEY_VAR} and {S3_SECRET_KEY_VAR}, or neither"
                        ),
                    })
                }
            };
            ObjectSourceConfig::S3 {
                endpoint,
                region: get(S3_REGION_VAR).unwrap_or_else(|| "us-east-1".to_string()),
                keys,
            }
        };
        let scanner_urls: Vec<String> = get(SCANNER_URLS_VAR)
            .unwrap_or_default()
            .split(',')
            .map(|url| url.trim().to_string())
            .filter(|url| !url.is_empty())
            .collect();
        if scanner_urls.is_empty() {
            return Err(ConfigError::Missing {
                name: SCANNER_URLS_VAR,
                hint: "comma-separated scanner function URLs",
            });
        }
        if let Some(bad) = scanner_urls
            .iter()
            .find(|url| !(url.starts_with("https://") || url.starts_with("http://")))
        {
            return Err(ConfigError::Invalid {
                name: SCANNER_URLS_VAR,
                value: bad.clone(),
                reason: "expected http(s):// URLs".to_string(),
            });
        }
        let scanner_secret = get(SCANNER_SECRET_VAR)
            .ok_or(ConfigError::Missing {
                name: SCANNER_SECRET_VAR,
                hint: "the request-signing secret shared with the scanners (wrangler secret put)",
            })?
            .into_bytes();
        let max_scanner_calls = parse_number(
            MAX_SCANNER_CALLS_VAR,
            get(MAX_SCANNER_CALLS_VAR),
            MAX_CONCURRENT_CALLS,
            |calls| (1..=MAX_CONCURRENT_CALLS).contains(calls),
            "1..=6 (a Worker holds at most 6 connections at once)",
        )?;
        let min_lists_per_call = parse_number(
            MIN_LISTS_PER_CALL_VAR,
            get(MIN_LISTS_PER_CALL_VAR),
            DEFAULT_MIN_LISTS_PER_CALL,
            |lists| *lists >= 1,
            "a positive integer",
        )?;
        let scanner_timeout_ms = parse_number(
            SCANNER_TIMEOUT_VAR,
            get(SCANNER_TIMEOUT_VAR),
            5_000,
            |ms| (100..=60_000).contains(ms),
            "100..=60000 milliseconds",
        )?;
        let request_deadline_ms = parse_number(
            REQUEST_DEADLINE_VAR,
            get(REQUEST_DEADLINE_VAR),
            20_000,
            |ms| (1_000..=120_000).contains(ms),
            "1000..=120000 milliseconds",
        )?;
        let current_ttl_ms = parse_number(
            CURRENT_TTL_VAR,
            get(CURRENT_TTL_VAR),
            10_000,
            |_| true,
            "milliseconds",
        )?;
        let embed_cache_entries = parse_number(
            EMBED_CACHE_ENTRIES_VAR,
            get(EMBED_CACHE_ENTRIES_VAR),
            crate::embed_cache::DEFAULT_CAPACITY,
            |entries| *entries <= 100_000,
            "0..=100000 entries",
        )?;
        let embed_cache_ttl_s = parse_number(
            EMBED_CACHE_TTL_VAR,
            get(EMBED_CACHE_TTL_VAR),
            7 * 24 * 3600,
            |seconds| *seconds <= 365 * 24 * 3600,
            "0..=31536000 seconds",
        )?;
        let default_index = IndexConfig {
            name: get(INDEX_NAME_VAR)
                .map(|name| name.trim().to_string())
                .unwrap_or_else(|| clipedge_api::clip_retrieval::index_name(index.trim())),
            url: index.trim().to_string(),
            prefix: index_prefix,
        };
        let indexes = parse_indexes(get(INDEXES_VAR), default_index, &bucket)?;
        Ok(WorkerConfig {
            indexes,
            bucket,
            model_prefix,
            source,
            scanner_urls,
            scanner_secret,
            max_scanner_calls,
            min_lists_per_call,
            scanner_timeout_ms,
            request_deadline_ms,
            current_ttl_ms,
            embed_cache_entries,
            embed_cache_ttl_s,
            label: get(LABEL_VAR).unwrap_or_default(),
            conformance_prefix: get(CONFORMANCE_PREFIX_VAR).map(|prefix| prefix.trim().to_string()),
        })
    }

    /// The default index: `CLIPEDGE_INDEX`.
    pub fn default_index(&self) -> &IndexConfig {
        &self.indexes[0]
    }

    /// The served index names, in order (`GET /indices-list`).
    pub fn index_names(&self) -> Vec<String> {
        self.indexes
            .iter()
            .map(|index| index.name.clone())
            .collect()
    }

    /// The bucket key of a file of the model package.
    pub fn model_key(&self, file: &str) -> String {
        join_key(&self.model_prefix, file)
    }

    /// The deadline sent to scanners: short of the call timeout, so a slow scanner answers with
    /// what it has (lists marked timed out) instead of being cut off with nothing.
    pub fn scan_deadline_ms(&self) -> u32 {
        (self.scanner_timeout_ms.saturating_mul(4) / 5).max(50)
    }
}

/// `CLIPEDGE_INDEXES` after the default index: each entry `NAME=s3://bucket/prefix`, in the
/// default index's bucket (one object source serves them all), names distinct.
fn parse_indexes(
    value: Option<String>,
    default_index: IndexConfig,
    bucket: &str,
) -> Result<Vec<IndexConfig>, ConfigError> {
    let mut indexes = vec![default_index];
    let Some(value) = value else {
        return Ok(indexes);
    };
    let invalid = |reason: String| ConfigError::Invalid {
        name: INDEXES_VAR,
        value: value.clone(),
        reason,
    };
    for entry in value
        .split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
    {
        let Some((name, url)) = entry.split_once('=') else {
            return Err(invalid(format!(
                "entry {entry:?}: expected NAME=s3://{bucket}/prefix"
            )));
        };
        let (name, url) = (name.trim(), url.trim());
        if !clipedge_api::clip_retrieval::is_valid_index_name(name) {
            return Err(invalid(format!(
                "entry {entry:?}: an index name is 1 to 64 letters, digits, '.', '_' or '-'"
            )));
        }
        let Some((entry_bucket, prefix)) = split_s3_url(url) else {
            return Err(invalid(format!(
                "entry {entry:?}: expected NAME=s3://{bucket}/prefix"
            )));
        };
        if entry_bucket != bucket {
            return Err(invalid(format!(
                "index {name:?} is in bucket {entry_bucket:?}, but every index must be in \
                 {INDEX_VAR}'s bucket {bucket:?}"
            )));
        }
        if indexes.iter().any(|index| index.name == name) {
            return Err(invalid(format!(
                "two indexes are named {name:?} (the default one is named by {INDEX_NAME_VAR} \
                 or the last segment of {INDEX_VAR})"
            )));
        }
        indexes.push(IndexConfig {
            name: name.to_string(),
            url: url.to_string(),
            prefix,
        });
    }
    Ok(indexes)
}

fn join_key(prefix: &str, object: &str) -> String {
    if prefix.is_empty() {
        object.to_string()
    } else {
        format!("{prefix}/{object}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(pairs: &[(&str, &str)]) -> Result<WorkerConfig, ConfigError> {
        let vars: HashMap<String, String> = pairs
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect();
        WorkerConfig::from_lookup(|name| vars.get(name).cloned())
    }

    const BASE: &[(&str, &str)] = &[
        (INDEX_VAR, "s3://bucket/indexes/demo/"),
        (MODEL_PREFIX_VAR, "/models/tiny/"),
        (S3_ENDPOINT_VAR, "http://127.0.0.1:9000/"),
        (SCANNER_URLS_VAR, "http://a/scan, http://b/scan,"),
        (SCANNER_SECRET_VAR, "s3cret"),
    ];

    #[test]
    fn a_complete_environment_parses_with_defaults() {
        let config = config(BASE).unwrap();
        assert_eq!(config.bucket, "bucket");
        assert_eq!(
            config.default_index().key("CURRENT"),
            "indexes/demo/CURRENT"
        );
        assert_eq!(config.indexes.len(), 1);
        assert_eq!(config.model_key("model.toml"), "models/tiny/model.toml");
        assert_eq!(config.scanner_urls, vec!["http://a/scan", "http://b/scan"]);
        assert_eq!(config.max_scanner_calls, MAX_CONCURRENT_CALLS);
        assert_eq!(config.min_lists_per_call, DEFAULT_MIN_LISTS_PER_CALL);
        assert_eq!(
            config.source,
            ObjectSourceConfig::S3 {
                endpoint: "http://127.0.0.1:9000".to_string(),
                region: "us-east-1".to_string(),
                keys: None
            }
        );
        assert!(config.scan_deadline_ms() < config.scanner_timeout_ms);
        assert_eq!(config.request_deadline_ms, 20_000);
        assert_eq!(
            config.default_index().name,
            "demo",
            "the index root's last segment"
        );
    }

    #[test]
    fn the_index_name_can_be_set() {
        let mut named = BASE.to_vec();
        named.push((INDEX_NAME_VAR, " laion5B "));
        assert_eq!(config(&named).unwrap().default_index().name, "laion5B");
    }

    #[test]
    fn more_indexes_follow_the_default_one() {
        let mut pairs = BASE.to_vec();
        pairs.push((
            INDEXES_VAR,
            " coyo=s3://bucket/indexes/coyo/, cc12m = s3://bucket/cc12m ,",
        ));
        let config = config(&pairs).unwrap();
        assert_eq!(config.index_names(), vec!["demo", "coyo", "cc12m"]);
        assert_eq!(config.indexes[1].url, "s3://bucket/indexes/coyo/");
        assert_eq!(config.indexes[1].key("CURRENT"), "indexes/coyo/CURRENT");
        assert_eq!(config.indexes[2].key("CURRENT"), "cc12m/CURRENT");
    }

    #[test]
    fn bad_index_lists_are_named() {
        for (value, expected) in [
            ("coyo", "expected NAME=s3://bucket/prefix"),
            ("coyo=/local/dir", "expected NAME=s3://bucket/prefix"),
            ("a/b=s3://bucket/x", "an index name is"),
            ("coyo=s3://other/coyo", "every index must be in"),
            ("demo=s3://bucket/other", "two indexes are named \"demo\""),
            (
                "x=s3://bucket/a,x=s3://bucket/b",
                "two indexes are named \"x\"",
            ),
        ] {
            let mut pairs = BASE.to_vec();
            pairs.push((INDEXES_VAR, value));
            let error = config(&pairs).unwrap_err().to_string();
            assert!(error.contains(INDEXES_VAR), "{value}: {error}");
            assert!(error.contains(expected), "{value}: {error}");
        }
    }

    #[test]
    fn missing_and_invalid_settings_are_named() {
        let without = |name: &str| -> Vec<(&str, &str)> {
            BASE.iter().copied().filter(|(n, _)| *n != name).collect()
        };
        for name in [
            INDEX_VAR,
            MODEL_PREFIX_VAR,
            S3_ENDPOINT_VAR,
            SCANNER_URLS_VAR,
            SCANNER_SECRET_VAR,
        ] {
            let error = config(&without(name)).unwrap_err();
            assert!(error.to_string().contains(name), "{error}");
        }
        let mut bad = BASE.to_vec();
        bad.push((MAX_SCANNER_CALLS_VAR, "7"));
        assert!(config(&bad)
            .unwrap_err()
            .to_string()
            .contains(MAX_SCANNER_CALLS_VAR));
        let mut bad = BASE.to_vec();
        bad.retain(|(name, _)| *name != INDEX_VAR);
        bad.push((INDEX_VAR, "/local/dir"));
        assert!(config(&bad).unwrap_err().to_string().contains("s3://"));
        let mut bad = BASE.to_vec();
        bad.push((REQUEST_DEADLINE_VAR, "500"));
        assert!(config(&bad)
            .unwrap_err()
            .to_string()
            .contains(REQUEST_DEADLINE_VAR));
        let mut half_keys = BASE.to_vec();
        half_keys.push((S3_ACCESS_KEY_VAR, "key"));
        assert!(config(&half_keys).is_err());
    }

    #[test]
    fn an_r2_binding_replaces_the_endpoint() {
        let mut pairs = BASE.to_vec();
        pairs.retain(|(name, _)| *name != S3_ENDPOINT_VAR);
        pairs.push((R2_BINDING_VAR, "INDEX_BUCKET"));
        assert_eq!(
            config(&pairs).unwrap().source,
            ObjectSourceConfig::R2 {
                binding: "INDEX_BUCKET".to_string()
            }
        );
    }

    #[test]
    fn s3_urls_split_into_bucket_and_prefix() {
        assert_eq!(split_s3_url("s3://b"), Some(("b".into(), "".into())));
        assert_eq!(
            split_s3_url("s3://b/x/y/"),
            Some(("b".into(), "x/y".into()))
        );
        assert_eq!(split_s3_url("s3:///x"), None);
        assert_eq!(split_s3_url("https://b/x"), None);
    }
}
