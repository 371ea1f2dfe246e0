//! Request signing: HMAC-SHA256 with a secret shared by the callers and the scanners.
//!
//! The signature covers a version tag, the timestamp and the exact body bytes:
//! `HMAC-SHA256(secret, "clipedge-scan-v1\n" || timestamp || "\n" || body)`, sent hex-encoded in
//! [`SIGNATURE_HEADER`] as `v1=<64 hex digits>` with the timestamp (unix milliseconds, decimal)
//! in [`TIMESTAMP_HEADER`]. A scanner refuses a request whose timestamp is further than the
//! allowed skew from its own clock, so a captured request stops working after a few minutes
//! (within the window a replay only repeats a read-only scan).

use hmac::{Hmac, Mac};
use sha2::Sha256;
use thiserror::Error;

pub const TIMESTAMP_HEADER: &str = "x-clipedge-timestamp";
pub const SIGNATURE_HEADER: &str = "x-clipedge-signature";
/// Clock difference accepted between caller and scanner.
pub const DEFAULT_MAX_SKEW_MS: u64 = 5 * 60 * 1000;

const SIGNATURE_PREFIX: &str = "v1=";
const DOMAIN_TAG: &[u8] = b"clipedge-scan-v1\n";

type HmacSha256 = Hmac<Sha256>;

/// Why a request is not authenticated. [`AuthError::is_unauthenticated`] separates "no
/// credentials" (HTTP 401) from "wrong credentials" (HTTP 403).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("missing {header} header: requests must be signed")]
    Missing { header: &'static str },
    #[error("malformed {header} header: {reason}")]
    Malformed {
        header: &'static str,
        reason: String,
    },
    #[error("signature does not match the body and timestamp")]
    BadSignature,
    #[error("timestamp {timestamp_ms} is {skew_ms} ms from the scanner's clock (limit {max_skew_ms} ms)")]
    Stale {
        timestamp_ms: u64,
        skew_ms: u64,
        max_skew_ms: u64,
    },
}

impl AuthError {
    pub fn is_unauthenticated(&self) -> bool {
        matches!(self, AuthError::Missing { .. })
    }
}

/// The two header values that authenticate a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedHeaders {
    pub timestamp: String,
    pub signature: String,
}

impl SignedHeaders {
    /// `(name, value)` pairs, ready to set on an HTTP request.
    pub fn pairs(&self) -> [(&'static str, &str); 2] {
        [
            (TIMESTAMP_HEADER, self.timestamp.as_str()),
            (SIGNATURE_HEADER, self.signature.as_str()),
        ]
    }
}

fn mac(secret: &[u8], timestamp: &str, body: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = HmacSha256::new_from_slice(secret).expect("hmac accepts any key length");
    mac.update(DOMAIN_TAG);
    mac.update(timestamp.as_bytes());
    mac.update(b"\n");
    mac.update(body);
    mac
}

/// Signs `body` at `timestamp_ms` (unix milliseconds, the caller's clock).
pub fn sign(secret: &[u8], timestamp_ms: u64, body: &[u8]) -> SignedHeaders {
    let timestamp = timestamp_ms.to_string();
    let digest = mac(secret, &timestamp, body).finalize().into_bytes();
    let mut signature = String::with_capacity(SIGNATURE_PREFIX.len() + 64);
    signature.push_str(SIGNATURE_PREFIX);
    for byte in digest {
        signature.push_str(&format!("{byte:02x}"));
    }
    SignedHeaders {
        timestamp,
        signature,
    }
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    let digits = hex.as_bytes();
    let mut bytes = Vec::with_capacity(hex.len() / 2);
    for pair in digits.chunks_exact(2) {
        let high = (pair[0] as char).to_digit(16)?;
        let low = (pair[1] as char).to_digit(16)?;
        bytes.push((high * 16 + low) as u8);
    }
    Some(bytes)
}

/// Verifies the headers of a request against its body: the signature in constant time, then
/// the timestamp against `now_ms` (the verifier's clock).
pub fn verify(
    secret: &[u8],
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now_ms: u64,
    max_skew_ms: u64,
) -> Result<(), AuthError> {
    let Some(timestamp) = timestamp else {
        return Err(AuthError::Missing {
            header: TIMESTAMP_HEADER,
        });
    };
    let Some(signature) = signature else {
        return Err(AuthError::Missing {
            header: SIGNATURE_HEADER,
        });
    };
    let timestamp_ms: u64 = timestamp.trim().parse().map_err(|_| AuthError::Malformed {
        header: TIMESTAMP_HEADER,
        reason: "expected unix milliseconds".to_string(),
    })?;
    let Some(hex) = signature.trim().strip_prefix(SIGNATURE_PREFIX) else {
        return Err(AuthError::Malformed {
            header: SIGNATURE_HEADER,
            reason: format!("expected {SIGNATURE_PREFIX}<hex hmac-sha256>"),
        });
    };
    let Some(expected) = decode_hex(hex) else {
        return Err(AuthError::Malformed {
            header: SIGNATURE_HEADER,
            reason: "not hexadecimal".to_string(),
        });
    };
    // Verified over the header text as sent, so "0123" and "123" are different signatures.
    mac(secret, timestamp.trim(), body)
        .verify_slice(&expected)
        .map_err(|_| AuthError::BadSignature)?;
    let skew_ms = now_ms.abs_diff(timestamp_ms);
    if skew_ms > max_skew_ms {
        return Err(AuthError::Stale {
            timestamp_ms,
            skew_ms,
            max_skew_ms,
        });
    }
    Ok(())
}

/// [`verify`] against each of `secrets` in turn (the current one, then the previous one during
/// a rotation): accepted when the signature matches any of them.
pub fn verify_any<'a>(
    secrets: impl IntoIterator<Item = &'a [u8]>,
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now_ms: u64,
    max_skew_ms: u64,
) -> Result<(), AuthError> {
    for secret in secrets {
        match verify(secret, timestamp, signature, body, now_ms, max_skew_ms) {
            Err(AuthError::BadSignature) => continue,
            // Missing, malformed and stale do not depend on the secret: no other can help.
            other => return other,
        }
    }
    Err(AuthError::BadSignature)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"shared secret";
    const NOW: u64 = 1_795_371_411_698;

    fn check(headers: &SignedHeaders, body: &[u8], now_ms: u64) -> Result<(), AuthError> {
        verify(
            SECRET,
            Some(&headers.timestamp),
            Some(&headers.signature),
            body,
            now_ms,
            DEFAULT_MAX_SKEW_MS,
        )
    }

    #[test]
    fn a_signed_request_verifies_and_any_change_breaks_it() {
        let headers = sign(SECRET, NOW, b"body");
        assert!(headers.signature.starts_with("v1="));
        assert_eq!(headers.signature.len(), 3 + 64);
        assert_eq!(check(&headers, b"body", NOW + 1000), Ok(()));
        assert_eq!(check(&headers, b"bodY", NOW), Err(AuthError::BadSignature));

        let other_secret = verify(
            b"another secret",
            Some(&headers.timestamp),
            Some(&headers.signature),
            b"body",
            NOW,
            DEFAULT_MAX_SKEW_MS,
        );
        assert_eq!(other_secret, Err(AuthError::BadSignature));

        let moved_timestamp = SignedHeaders {
            timestamp: (NOW + 1).to_string(),
            ..headers.clone()
        };
        assert_eq!(
            check(&moved_timestamp, b"body", NOW),
            Err(AuthError::BadSignature)
        );
    }

    #[test]
    fn during_a_rotation_both_secrets_verify() {
        let secrets: [&[u8]; 2] = [b"new secret", b"old secret"];
        for signer in secrets {
            let headers = sign(signer, NOW, b"body");
            let verified = verify_any(
                secrets,
                Some(&headers.timestamp),
                Some(&headers.signature),
                b"body",
                NOW,
                DEFAULT_MAX_SKEW_MS,
            );
            assert_eq!(verified, Ok(()));
        }
        let retired = sign(b"retired secret", NOW, b"body");
        let refused = verify_any(
            secrets,
            Some(&retired.timestamp),
            Some(&retired.signature),
            b"body",
            NOW,
            DEFAULT_MAX_SKEW_MS,
        );
        assert_eq!(refused, Err(AuthError::BadSignature));
        let old = sign(b"old secret", NOW, b"body");
        let stale = verify_any(
            secrets,
            Some(&old.timestamp),
            Some(&old.signature),
            b"body",
            NOW + DEFAULT_MAX_SKEW_MS + 1,
            DEFAULT_MAX_SKEW_MS,
        );
        assert!(matches!(stale, Err(AuthError::Stale { .. })), "{stale:?}");
        let none: [&[u8]; 0] = [];
        let nothing = verify_any(
            none,
            Some(&old.timestamp),
            Some(&old.signature),
            b"body",
            NOW,
            1,
        );
        assert_eq!(nothing, Err(AuthError::BadSignature));
    }

    #[test]
    fn stale_and_future_timestamps_are_refused() {
        let headers = sign(SECRET, NOW, b"body");
        let late = check(&headers, b"body", NOW + DEFAULT_MAX_SKEW_MS + 1).unwrap_err();
        assert!(matches!(late, AuthError::Stale { .. }), "{late}");
        let early = check(&headers, b"body", NOW - DEFAULT_MAX_SKEW_MS - 1).unwrap_err();
        assert!(matches!(early, AuthError::Stale { .. }), "{early}");
        assert!(!late.is_unauthenticated());
    }

    #[test]
    fn missing_and_malformed_headers_are_named() {
        let headers = sign(SECRET, NOW, b"body");
        let missing = verify(SECRET, None, Some(&headers.signature), b"body", NOW, 1).unwrap_err();
        assert!(missing.is_unauthenticated());
        assert!(missing.to_string().contains(TIMESTAMP_HEADER), "{missing}");
        let missing = verify(SECRET, Some(&headers.timestamp), None, b"body", NOW, 1).unwrap_err();
        assert!(missing.to_string().contains(SIGNATURE_HEADER), "{missing}");

        for (timestamp, signature, expected) in [
            ("yesterday", headers.signature.as_str(), TIMESTAMP_HEADER),
            (headers.timestamp.as_str(), "deadbeef", SIGNATURE_HEADER),
            (headers.timestamp.as_str(), "v1=zz", SIGNATURE_HEADER),
            (headers.timestamp.as_str(), "v1=abc", SIGNATURE_HEADER),
        ] {
            let error =
                verify(SECRET, Some(timestamp), Some(signature), b"body", NOW, 1).unwrap_err();
            assert!(
                matches!(error, AuthError::Malformed { header, .. } if header == expected),
                "{error}"
            );
            assert!(!error.is_unauthenticated());
        }
        // A truncated but well-formed signature is a mismatch, not a panic.
        let short = format!("v1={}", &headers.signature[3..35]);
        let error = verify(
            SECRET,
            Some(&headers.timestamp),
            Some(&short),
            b"body",
            NOW,
            10,
        )
        .unwrap_err();
        assert_eq!(error, AuthError::BadSignature);
    }
}
