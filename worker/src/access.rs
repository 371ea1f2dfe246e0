//! Who may query the Worker and how often: API keys, auth modes, rate-limit bindings per tier
//! and per client IP, CORS origins.
//!
//! Plain code over a lookup function (no `worker` types), so the host tests cover it; `lib.rs`
//! asks the rate-limit bindings what this module decides to ask.
//!
//! Keys live in one secret, `CLIPEDGE_API_KEYS`: a JSON array of
//! `{"sha256": "<hex of the key's SHA-256>", "name": "acme", "tier": "pro", "monthly_quota": 100000}`.
//! The Worker never sees a key table with keys in it, only their hashes.

use std::collections::BTreeMap;

use clipedge_api::keys::{
    bearer_key, hashes_equal, hex, invalid_key_error, key_hash, missing_key_error, parse_key_hash,
    KeyHash,
};
use clipedge_api::ApiError;
use serde::Deserialize;

use crate::config::ConfigError;

/// `open` (default: no key needed), `keyed` (every metered request needs a key) or `mixed`
/// (anonymous requests allowed at the anonymous tier's limits).
pub const AUTH_MODE_VAR: &str = "CLIPEDGE_AUTH_MODE";
/// Secret: the key table (JSON, see the module documentation).
pub const API_KEYS_VAR: &str = "CLIPEDGE_API_KEYS";
/// `tier=BINDING/PERIOD_S,…`: the rate-limit binding each tier's callers count against
/// (`anonymous` for callers without a key). A tier without one is not limited.
pub const TIER_LIMITS_VAR: &str = "CLIPEDGE_TIER_LIMITS";
/// `BINDING/PERIOD_S`: the binding every metered request counts against, by client IP.
pub const IP_LIMIT_VAR: &str = "CLIPEDGE_IP_LIMIT";
/// Comma-separated allowed origins, or `*`. Default: `*` in open and mixed mode, none in keyed.
pub const CORS_ORIGINS_VAR: &str = "CLIPEDGE_CORS_ORIGINS";
/// Name of a Workers Analytics Engine dataset binding for usage data points (unset: the
/// structured log line only).
pub const USAGE_DATASET_VAR: &str = "CLIPEDGE_USAGE_DATASET";

/// The tier, and the name, of callers without a key.
pub const ANONYMOUS: &str = "anonymous";

/// Hex digits of a key's hash that identify it in logs and rate-limit keys: enough to tell keys
/// apart, far too few to help guess one.
const HASH_PREFIX_HEX: usize = 12;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    Open,
    Keyed,
    Mixed,
}

/// One entry of the key table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub hash: KeyHash,
    pub name: String,
    pub tier: String,
    /// Queries per calendar month (UTC) the key's contract allows; checked by the billing job.
    pub monthly_quota: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    sha256: String,
    name: String,
    tier: String,
    #[serde(default)]
    monthly_quota: Option<u64>,
}

/// A rate-limit binding (`[[ratelimits]]` in wrangler.toml) and the period it was declared with
/// (the binding does not say; `Retry-After` is this period).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limiter {
    pub binding: String,
    pub period_s: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CorsPolicy {
    /// `Access-Control-Allow-Origin: *`.
    Any,
    /// The request's `Origin` echoed when it is one of these (else no CORS headers).
    Origins(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessConfig {
    pub mode: AuthMode,
    pub keys: Vec<ApiKey>,
    pub tier_limits: BTreeMap<String, Limiter>,
    pub ip_limit: Option<Limiter>,
    pub cors: CorsPolicy,
    pub usage_dataset: Option<String>,
}

/// Who a request is accounted to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The key's name, or `anonymous`.
    pub name: String,
    pub tier: String,
    /// The first hex digits of the key's hash (never the key); `None` for anonymous callers.
    pub key_id: Option<String>,
}

impl Caller {
    pub fn anonymous() -> Caller {
        Caller {
            name: ANONYMOUS.to_string(),
            tier: ANONYMOUS.to_string(),
            key_id: None,
        }
    }

    fn of(key: &ApiKey) -> Caller {
        Caller {
            name: key.name.clone(),
            tier: key.tier.clone(),
            key_id: Some(hex(&key.hash)[..HASH_PREFIX_HEX].to_string()),
        }
    }
}

/// One rate-limit check to make: the binding, the key counted, and the `Retry-After` if over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitCheck {
    pub binding: String,
    pub key: String,
    pub period_s: u32,
}

fn invalid(name: &'static str, value: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        name,
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// `BINDING/PERIOD_S`, the period 10 or 60 (what the Rate Limiting binding accepts).
fn parse_limiter(name: &'static str, text: &str) -> Result<Limiter, ConfigError> {
    let expected = "expected BINDING/PERIOD_S with a period of 10 or 60 seconds";
    let Some((binding, period)) = text.trim().split_once('/') else {
        return Err(invalid(name, text, expected));
    };
    let binding = binding.trim();
    let valid_binding = !binding.is_empty()
        && binding
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_');
    match period.trim().parse::<u32>() {
        Ok(period_s @ (10 | 60)) if valid_binding => Ok(Limiter {
            binding: binding.to_string(),
            period_s,
        }),
        _ => Err(invalid(name, text, expected)),
    }
}

fn parse_keys(text: &str) -> Result<Vec<ApiKey>, ConfigError> {
    // The value is a secret: errors name the entry, never echo the text.
    let entries: Vec<KeyEntry> = serde_json::from_str(text).map_err(|error| {
        invalid(
            API_KEYS_VAR,
            "(secret)",
            // serde's message may quote a value from the secret: only the position is given.
            format!(
                "expected a JSON array of {{\"sha256\", \"name\", \"tier\", \"monthly_quota\"}} \
                 (error at line {}, column {})",
                error.line(),
                error.column()
            ),
        )
    })?;
    let mut keys: Vec<ApiKey> = Vec::with_capacity(entries.len());
    for (position, entry) in entries.into_iter().enumerate() {
        let Some(hash) = parse_key_hash(&entry.sha256) else {
            return Err(invalid(
                API_KEYS_VAR,
                "(secret)",
                format!("entry {position} ({:?}): sha256 is not 64 hex digits (the key's SHA-256, not the key)", entry.name),
            ));
        };
        if entry.name.trim().is_empty() || entry.tier.trim().is_empty() {
            return Err(invalid(
                API_KEYS_VAR,
                "(secret)",
                format!("entry {position}: name and tier must not be empty"),
            ));
        }
        if keys.iter().any(|key| key.hash == hash) {
            return Err(invalid(
                API_KEYS_VAR,
                "(secret)",
                format!("entry {position} ({:?}): the same key twice", entry.name),
            ));
        }
        keys.push(ApiKey {
            hash,
            name: entry.name.trim().to_string(),
            tier: entry.tier.trim().to_string(),
            monthly_quota: entry.monthly_quota,
        });
    }
    Ok(keys)
}

impl AccessConfig {
    /// Reads the access settings through `lookup` (empty counts as unset).
    pub fn from_lookup(
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<AccessConfig, ConfigError> {
        let get = |name: &str| lookup(name).filter(|value| !value.trim().is_empty());
        let mode = match get(AUTH_MODE_VAR).as_deref().map(str::trim) {
            None | Some("open") => AuthMode::Open,
            Some("keyed") => AuthMode::Keyed,
            Some("mixed") => AuthMode::Mixed,
            Some(other) => {
                return Err(invalid(
                    AUTH_MODE_VAR,
                    other,
                    "expected open, keyed or mixed",
                ))
            }
        };
        let keys = match get(API_KEYS_VAR) {
            Some(text) => parse_keys(&text)?,
            None => Vec::new(),
        };
        if mode == AuthMode::Keyed && keys.is_empty() {
            return Err(ConfigError::Missing {
                name: API_KEYS_VAR,
                hint: "keyed mode needs a key table (wrangler secret put CLIPEDGE_API_KEYS)",
            });
        }
        let mut tier_limits = BTreeMap::new();
        if let Some(text) = get(TIER_LIMITS_VAR) {
            for assignment in text.split(',').filter(|part| !part.trim().is_empty()) {
                let Some((tier, limiter)) = assignment.split_once('=') else {
                    return Err(invalid(
                        TIER_LIMITS_VAR,
                        assignment,
                        "expected tier=BINDING/PERIOD_S",
                    ));
                };
                let tier = tier.trim();
                if tier.is_empty() {
                    return Err(invalid(TIER_LIMITS_VAR, assignment, "empty tier name"));
                }
                tier_limits.insert(tier.to_string(), parse_limiter(TIER_LIMITS_VAR, limiter)?);
            }
        }
        let ip_limit = get(IP_LIMIT_VAR)
            .map(|text| parse_limiter(IP_LIMIT_VAR, &text))
            .transpose()?;
        let cors = match get(CORS_ORIGINS_VAR) {
            Some(text) if text.trim() == "*" => CorsPolicy::Any,
            Some(text) => {
                let origins: Vec<String> = text
                    .split(',')
                    .map(|origin| origin.trim().trim_end_matches('/').to_string())
                    .filter(|origin| !origin.is_empty())
                    .collect();
                if let Some(bad) = origins.iter().find(|origin| {
                    !(origin.starts_with("https://") || origin.starts_with("http://"))
                }) {
                    return Err(invalid(
                        CORS_ORIGINS_VAR,
                        bad,
                        "expected * or comma-separated origins like https://app.example.com",
                    ));
                }
                CorsPolicy::Origins(origins)
            }
            None if mode == AuthMode::Keyed => CorsPolicy::Origins(Vec::new()),
            None => CorsPolicy::Any,
        };
        Ok(AccessConfig {
            mode,
            keys,
            tier_limits,
            ip_limit,
            cors,
            usage_dataset: get(USAGE_DATASET_VAR).map(|name| name.trim().to_string()),
        })
    }

    /// The key table entry of `key`: every entry is compared, each in constant time.
    fn find_key(&self, key: &str) -> Option<&ApiKey> {
        let hash = key_hash(key);
        let mut found = None;
        for entry in &self.keys {
            if hashes_equal(&entry.hash, &hash) {
                found = Some(entry);
            }
        }
        found
    }

    /// Who sent a request with this `Authorization` header, or the 401/403 to answer.
    ///
    /// Open mode never refuses (a known key is still accounted to its name); mixed mode takes
    /// requests without the header as anonymous but refuses a wrong key rather than serve it
    /// anonymously, so a client with a revoked key finds out.
    pub fn caller(&self, authorization: Option<&str>) -> Result<Caller, ApiError> {
        let key = match (self.mode, bearer_key(authorization)) {
            (AuthMode::Open, Ok(Some(key))) => key,
            (AuthMode::Open, _) => return Ok(Caller::anonymous()),
            (_, Err(error)) => return Err(error),
            (AuthMode::Keyed, Ok(None)) => return Err(missing_key_error()),
            (AuthMode::Mixed, Ok(None)) => return Ok(Caller::anonymous()),
            (_, Ok(Some(key))) => key,
        };
        match self.find_key(key) {
            Some(entry) => Ok(Caller::of(entry)),
            None if self.mode == AuthMode::Open => Ok(Caller::anonymous()),
            None => Err(invalid_key_error()),
        }
    }

    /// The rate-limit checks for one metered request, in order: the caller's tier (keyed by the
    /// key, or by the client IP for anonymous callers), then the per-IP backstop.
    pub fn limit_checks(&self, caller: &Caller, client_ip: &str) -> Vec<LimitCheck> {
        let mut checks = Vec::new();
        if let Some(limiter) = self.tier_limits.get(&caller.tier) {
            let key = match &caller.key_id {
                Some(key_id) => format!("key:{key_id}"),
                None => format!("ip:{client_ip}"),
            };
            checks.push(LimitCheck {
                binding: limiter.binding.clone(),
                key,
                period_s: limiter.period_s,
            });
        }
        if let Some(limiter) = &self.ip_limit {
            checks.push(LimitCheck {
                binding: limiter.binding.clone(),
                key: format!("ip:{client_ip}"),
                period_s: limiter.period_s,
            });
        }
        checks
    }

    /// The `Access-Control-Allow-Origin` value for a request from `origin`, if any.
    pub fn allow_origin(&self, origin: Option<&str>) -> Option<String> {
        match &self.cors {
            CorsPolicy::Any => Some("*".to_string()),
            CorsPolicy::Origins(allowed) => {
                let origin = origin?.trim().trim_end_matches('/');
                allowed
                    .iter()
                    .any(|allowed| allowed.eq_ignore_ascii_case(origin))
                    .then(|| origin.to_string())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use clipedge_api::keys::key_hash_hex;
    use clipedge_api::ErrorCode;

    use super::*;

    fn access(pairs: &[(&str, &str)]) -> Result<AccessConfig, ConfigError> {
        let vars: HashMap<String, String> = pairs
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect();
        AccessConfig::from_lookup(|name| vars.get(name).cloned())
    }

    fn key_table() -> String {
        format!(
            r#"[{{"sha256": "{}", "name": "acme", "tier": "pro", "monthly_quota": 1000}},
                {{"sha256": "{}", "name": "hobby", "tier": "free"}}]"#,
            key_hash_hex("acme-secret-key"),
            key_hash_hex("hobby-key").to_uppercase()
        )
    }

    #[test]
    fn open_mode_is_the_default_and_never_refuses() {
        let config = access(&[]).unwrap();
        assert_eq!(config.mode, AuthMode::Open);
        assert_eq!(config.cors, CorsPolicy::Any);
        assert!(config
            .limit_checks(&Caller::anonymous(), "1.2.3.4")
            .is_empty());
        for header in [None, Some("Bearer nope"), Some("Basic x")] {
            assert_eq!(config.caller(header).unwrap(), Caller::anonymous());
        }
        let keys = key_table();
        let config = access(&[(API_KEYS_VAR, &keys)]).unwrap();
        let caller = config.caller(Some("Bearer acme-secret-key")).unwrap();
        assert_eq!(
            caller.name, "acme",
            "a known key is still accounted to its name"
        );
    }

    #[test]
    fn keyed_mode_refuses_missing_and_wrong_keys() {
        let keys = key_table();
        let config = access(&[(AUTH_MODE_VAR, "keyed"), (API_KEYS_VAR, &keys)]).unwrap();
        assert_eq!(config.keys[0].monthly_quota, Some(1000));
        assert_eq!(config.keys[1].monthly_quota, None);
        let missing = config.caller(None).unwrap_err();
        assert_eq!(
            (missing.code, missing.status()),
            (ErrorCode::MissingApiKey, 401)
        );
        let malformed = config.caller(Some("acme-secret-key")).unwrap_err();
        assert_eq!(malformed.code, ErrorCode::MissingApiKey);
        let wrong = config.caller(Some("Bearer acme-secret-kex")).unwrap_err();
        assert_eq!(
            (wrong.code, wrong.status()),
            (ErrorCode::InvalidApiKey, 403)
        );
        let caller = config.caller(Some("Bearer acme-secret-key")).unwrap();
        assert_eq!(
            (caller.name.as_str(), caller.tier.as_str()),
            ("acme", "pro")
        );
        let key_id = caller.key_id.unwrap();
        assert_eq!(key_id.len(), HASH_PREFIX_HEX);
        assert!(key_hash_hex("acme-secret-key").starts_with(&key_id));
        // Hashes are matched whatever their case in the table.
        assert_eq!(
            config.caller(Some("Bearer hobby-key")).unwrap().tier,
            "free"
        );
        // No CORS unless origins are named.
        assert_eq!(config.allow_origin(Some("https://evil.example")), None);
    }

    #[test]
    fn mixed_mode_lets_anonymous_callers_in_but_not_wrong_keys() {
        let keys = key_table();
        let config = access(&[(AUTH_MODE_VAR, "mixed"), (API_KEYS_VAR, &keys)]).unwrap();
        assert_eq!(config.caller(None).unwrap(), Caller::anonymous());
        assert_eq!(
            config.caller(Some("Bearer revoked")).unwrap_err().code,
            ErrorCode::InvalidApiKey
        );
        assert_eq!(
            config.caller(Some("Bearer hobby-key")).unwrap().name,
            "hobby"
        );
    }

    #[test]
    fn limits_apply_per_tier_and_per_ip() {
        let keys = key_table();
        let config = access(&[
            (AUTH_MODE_VAR, "mixed"),
            (API_KEYS_VAR, &keys),
            (TIER_LIMITS_VAR, "anonymous=RL_ANON/10, pro=RL_PRO/60,"),
            (IP_LIMIT_VAR, "RL_IP/60"),
        ])
        .unwrap();
        let anonymous = config.limit_checks(&Caller::anonymous(), "1.2.3.4");
        assert_eq!(
            anonymous,
            vec![
                LimitCheck {
                    binding: "RL_ANON".into(),
                    key: "ip:1.2.3.4".into(),
                    period_s: 10
                },
                LimitCheck {
                    binding: "RL_IP".into(),
                    key: "ip:1.2.3.4".into(),
                    period_s: 60
                },
            ]
        );
        let pro = config.caller(Some("Bearer acme-secret-key")).unwrap();
        let checks = config.limit_checks(&pro, "1.2.3.4");
        assert_eq!(checks[0].binding, "RL_PRO");
        assert_eq!(checks[0].key, format!("key:{}", pro.key_id.unwrap()));
        // The free tier has no limiter: only the IP backstop.
        let free = config.caller(Some("Bearer hobby-key")).unwrap();
        assert_eq!(config.limit_checks(&free, "5.6.7.8").len(), 1);
    }

    #[test]
    fn bad_settings_are_named() {
        for (pairs, named) in [
            (vec![(AUTH_MODE_VAR, "closed")], AUTH_MODE_VAR),
            (vec![(AUTH_MODE_VAR, "keyed")], API_KEYS_VAR),
            (vec![(API_KEYS_VAR, "{}")], API_KEYS_VAR),
            (
                vec![(
                    API_KEYS_VAR,
                    r#"[{"sha256": "abc", "name": "a", "tier": "t"}]"#,
                )],
                API_KEYS_VAR,
            ),
            (vec![(TIER_LIMITS_VAR, "pro=RL_PRO/30")], TIER_LIMITS_VAR),
            (vec![(TIER_LIMITS_VAR, "RL_PRO/60")], TIER_LIMITS_VAR),
            (vec![(IP_LIMIT_VAR, "RL-IP/60")], IP_LIMIT_VAR),
            (vec![(CORS_ORIGINS_VAR, "example.com")], CORS_ORIGINS_VAR),
        ] {
            let error = access(&pairs).unwrap_err().to_string();
            assert!(error.contains(named), "{pairs:?}: {error}");
        }
        // A key table's text is a secret: never echoed in an error.
        let secret = r#"[{"sha256": "my-raw-key-by-mistake", "name": "a", "tier": "t"}]"#;
        let error = access(&[(API_KEYS_VAR, secret)]).unwrap_err().to_string();
        assert!(!error.contains("my-raw-key-by-mistake"), "{error}");
        let duplicate = format!(
            r#"[{{"sha256": "{0}", "name": "a", "tier": "t"}}, {{"sha256": "{0}", "name": "b", "tier": "t"}}]"#,
            key_hash_hex("k")
        );
        assert!(access(&[(API_KEYS_VAR, &duplicate)]).is_err());
    }

    #[test]
    fn cors_echoes_only_allowed_origins() {
        let config = access(&[(
            CORS_ORIGINS_VAR,
            "https://app.example.com/, http://localhost:3000",
        )])
        .unwrap();
        assert_eq!(
            config.allow_origin(Some("https://app.example.com")),
            Some("https://app.example.com".to_string())
        );
        assert_eq!(
            config.allow_origin(Some("http://localhost:3000")),
            Some("http://localhost:3000".to_string())
        );
        assert_eq!(config.allow_origin(Some("https://other.example.com")), None);
        assert_eq!(config.allow_origin(None), None);
        let any = access(&[(CORS_ORIGINS_VAR, "*")]).unwrap();
        assert_eq!(any.allow_origin(None), Some("*".to_string()));
    }
}
