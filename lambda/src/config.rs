//! Scanner configuration, read from the environment once per cold start.

use std::time::Duration;

use clipedge_protocol::DEFAULT_MAX_SKEW_MS;
use clipedge_storage::StorageConfig;
use thiserror::Error;

/// Shared secret for request signatures.
pub const SECRET_ENV: &str = "CLIPEDGE_SCANNER_SECRET";
/// During a rotation: the secret being retired, still accepted (callers sign with the new one).
pub const PREVIOUS_SECRET_ENV: &str = "CLIPEDGE_SCANNER_SECRET_PREVIOUS";
/// `hmac` (default) or `none` (only behind a function URL with `AWS_IAM` auth).
pub const AUTH_ENV: &str = "CLIPEDGE_SCANNER_AUTH";
pub const MAX_SKEW_ENV: &str = "CLIPEDGE_MAX_SKEW_MS";
pub const LIST_CACHE_ENV: &str = "CLIPEDGE_LIST_CACHE_BYTES";
pub const GROUP_CACHE_ENV: &str = "CLIPEDGE_GROUP_CACHE_BYTES";
pub const FETCH_CONCURRENCY_ENV: &str = "CLIPEDGE_FETCH_CONCURRENCY";
pub const OPEN_GENERATIONS_ENV: &str = "CLIPEDGE_OPEN_GENERATIONS";
/// Comma-separated index roots (prefixes) the scanner may read; unset: any.
pub const INDEX_ALLOWLIST_ENV: &str = "CLIPEDGE_INDEX_ALLOWLIST";
pub const STORAGE_RETRIES_ENV: &str = "CLIPEDGE_STORAGE_RETRIES";
pub const STORAGE_TIMEOUT_ENV: &str = "CLIPEDGE_STORAGE_TIMEOUT_MS";
/// Set by the Lambda runtime: the function's memory in MB.
const LAMBDA_MEMORY_ENV: &str = "AWS_LAMBDA_FUNCTION_MEMORY_SIZE";

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("{name} is not set: set the shared request-signing secret, or {AUTH_ENV}=none when the function URL uses AWS_IAM auth")]
    MissingSecret { name: &'static str },
    #[error("invalid {name}={value:?}: {reason}")]
    Invalid {
        name: &'static str,
        value: String,
        reason: String,
    },
}

/// How requests are authenticated.
#[derive(Clone)]
pub enum Auth {
    /// HMAC-SHA256 signatures (see `clipedge_protocol::auth`) by any of `secrets`: the current
    /// one, and during a rotation the previous one.
    Hmac {
        secrets: Vec<Vec<u8>>,
        max_skew_ms: u64,
    },
    /// No check: the function URL's `AWS_IAM` auth (SigV4 by the caller) guards the function.
    Disabled,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::Hmac {
                secrets,
                max_skew_ms,
            } => f
                .debug_struct("Hmac")
                .field("secrets", &secrets.len())
                .field("max_skew_ms", max_skew_ms)
                .finish_non_exhaustive(),
            Auth::Disabled => f.write_str("Disabled"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ScannerConfig {
    pub auth: Auth,
    /// Bytes of verified lists kept across warm invocations.
    pub list_cache_bytes: u64,
    /// Bytes of group blobs kept per open generation.
    pub group_cache_bytes: u64,
    /// Lists fetched at once.
    pub fetch_concurrency: usize,
    /// Generations kept open (manifest, routing table, codebooks).
    pub open_generations: usize,
    /// Index roots the scanner may read (prefix match); empty: any.
    pub index_allowlist: Vec<String>,
    pub storage: StorageConfig,
}

impl ScannerConfig {
    /// A configuration with HMAC auth and the default sizes.
    pub fn with_secret(secret: &[u8]) -> ScannerConfig {
        ScannerConfig {
            auth: Auth::Hmac {
                secrets: vec![secret.to_vec()],
                max_skew_ms: DEFAULT_MAX_SKEW_MS,
            },
            list_cache_bytes: 512 << 20,
            group_cache_bytes: 64 << 20,
            fetch_concurrency: 32,
            open_generations: 4,
            index_allowlist: Vec::new(),
            storage: StorageConfig {
                // A scanner has a deadline: fail fast and let the caller retry the list elsewhere.
                retries: 2,
                backoff: Duration::from_millis(25),
                request_timeout: Duration::from_secs(10),
                connect_timeout: Duration::from_secs(2),
                ..StorageConfig::default()
            },
        }
    }

    pub fn from_env() -> Result<ScannerConfig, ConfigError> {
        ScannerConfig::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the configuration through `lookup` (the environment, or a map in tests).
    pub fn from_lookup(
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<ScannerConfig, ConfigError> {
        let auth_mode = lookup(AUTH_ENV).unwrap_or_else(|| "hmac".to_string());
        let mut config = match auth_mode.as_str() {
            "hmac" => {
                let secret = lookup(SECRET_ENV).filter(|secret| !secret.is_empty());
                let Some(secret) = secret else {
                    return Err(ConfigError::MissingSecret { name: SECRET_ENV });
                };
                let mut config = ScannerConfig::with_secret(secret.as_bytes());
                if let Some(previous) = lookup(PREVIOUS_SECRET_ENV).filter(|s| !s.is_empty()) {
                    if let Auth::Hmac { secrets, .. } = &mut config.auth {
                        secrets.push(previous.into_bytes());
                    }
                }
                config
            }
            "none" => ScannerConfig {
                auth: Auth::Disabled,
                ..ScannerConfig::with_secret(b"")
            },
            other => {
                return Err(ConfigError::Invalid {
                    name: AUTH_ENV,
                    value: other.to_string(),
                    reason: "expected hmac or none".to_string(),
                })
            }
        };
        if let Auth::Hmac { max_skew_ms, .. } = &mut config.auth {
            if let Some(value) = parse_number(&lookup, MAX_SKEW_ENV)? {
                *max_skew_ms = value;
            }
        }
        // Half the function's memory by default: the rest holds the request and the scan.
        if let Some(memory_mb) = parse_number(&lookup, LAMBDA_MEMORY_ENV)? {
            config.list_cache_bytes = (memory_mb << 20) / 2;
        }
        if let Some(bytes) = parse_number(&lookup, LIST_CACHE_ENV)? {
            config.list_cache_bytes = bytes;
        }
        if let Some(bytes) = parse_number(&lookup, GROUP_CACHE_ENV)? {
            config.group_cache_bytes = bytes;
        }
        if let Some(count) = parse_number(&lookup, FETCH_CONCURRENCY_ENV)? {
            config.fetch_concurrency = count.max(1) as usize;
        }
        if let Some(count) = parse_number(&lookup, OPEN_GENERATIONS_ENV)? {
            config.open_generations = count.max(1) as usize;
        }
        if let Some(retries) = parse_number(&lookup, STORAGE_RETRIES_ENV)? {
            config.storage.retries = retries.min(10) as u32;
        }
        if let Some(timeout_ms) = parse_number(&lookup, STORAGE_TIMEOUT_ENV)? {
            config.storage.request_timeout = Duration::from_millis(timeout_ms.max(1));
        }
        if let Some(allowlist) = lookup(INDEX_ALLOWLIST_ENV) {
            config.index_allowlist = allowlist
                .split(',')
                .map(|root| root.trim().to_string())
                .filter(|root| !root.is_empty())
                .collect();
        }
        Ok(config)
    }

    /// Whether `index` is under one of the allowed roots (any root when the list is empty).
    pub fn allows_index(&self, index: &str) -> bool {
        if self.index_allowlist.is_empty() {
            return true;
        }
        self.index_allowlist.iter().any(|root| {
            let root = root.trim_end_matches('/');
            index == root
                || index
                    .strip_prefix(root)
                    .is_some_and(|rest| rest.starts_with('/'))
        })
    }
}

fn parse_number(
    lookup: &impl Fn(&str) -> Option<String>,
    name: &'static str,
) -> Result<Option<u64>, ConfigError> {
    let Some(value) = lookup(name) else {
        return Ok(None);
    };
    value
        .trim()
        .parse()
        .map(Some)
        .map_err(|_| ConfigError::Invalid {
            name,
            value,
            reason: "expected a non-negative integer".to_string(),
        })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn config(pairs: &[(&str, &str)]) -> Result<ScannerConfig, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect();
        ScannerConfig::from_lookup(|name| map.get(name).cloned())
    }

    #[test]
    fn a_secret_is_required_unless_auth_is_off() {
        let error = config(&[]).unwrap_err();
        assert!(error.to_string().contains(SECRET_ENV), "{error}");
        assert!(matches!(
            config(&[(AUTH_ENV, "none")]).unwrap().auth,
            Auth::Disabled
        ));
        let error = config(&[(AUTH_ENV, "iam")]).unwrap_err();
        assert!(
            error.to_string().contains("expected hmac or none"),
            "{error}"
        );
    }

    #[test]
    fn a_previous_secret_is_accepted_during_a_rotation() {
        let secrets = |config: ScannerConfig| match config.auth {
            Auth::Hmac { secrets, .. } => secrets,
            Auth::Disabled => panic!("hmac expected"),
        };
        let rotating = config(&[(SECRET_ENV, "new"), (PREVIOUS_SECRET_ENV, "old")]).unwrap();
        assert_eq!(
            format!("{:?}", rotating.auth),
            "Hmac { secrets: 2, max_skew_ms: 300000, .. }",
            "the debug form never shows a secret"
        );
        assert_eq!(secrets(rotating), vec![b"new".to_vec(), b"old".to_vec()]);
        let settled = config(&[(SECRET_ENV, "new"), (PREVIOUS_SECRET_ENV, "")]).unwrap();
        assert_eq!(secrets(settled), vec![b"new".to_vec()]);
        // The previous secret alone is no configuration: the current one is required.
        let error = config(&[(PREVIOUS_SECRET_ENV, "old")]).unwrap_err();
        assert!(error.to_string().contains(SECRET_ENV), "{error}");
    }

    #[test]
    fn sizes_come_from_the_environment() {
        let parsed = config(&[
            (SECRET_ENV, "s"),
            (LAMBDA_MEMORY_ENV, "2048"),
            (GROUP_CACHE_ENV, "1000"),
            (INDEX_ALLOWLIST_ENV, "s3://bucket/a, s3://bucket/b/"),
        ])
        .unwrap();
        assert_eq!(parsed.list_cache_bytes, 1 << 30);
        assert_eq!(parsed.group_cache_bytes, 1000);
        assert!(parsed.allows_index("s3://bucket/a"));
        assert!(parsed.allows_index("s3://bucket/b/laion"));
        assert!(!parsed.allows_index("s3://bucket/ab"));
        assert!(!parsed.allows_index("s3://other/a"));
        let explicit = config(&[(SECRET_ENV, "s"), (LIST_CACHE_ENV, "0")]).unwrap();
        assert_eq!(explicit.list_cache_bytes, 0);
        let error = config(&[(SECRET_ENV, "s"), (LIST_CACHE_ENV, "1GB")]).unwrap_err();
        assert!(error.to_string().contains(LIST_CACHE_ENV), "{error}");
    }
}
