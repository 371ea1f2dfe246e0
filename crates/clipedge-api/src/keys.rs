//! API keys, shared by both fronts: the `Authorization: Bearer KEY` header, SHA-256 key hashes
//! (only hashes are stored or held in memory) and their constant-time comparison.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::{ApiError, ErrorCode};

/// A key's SHA-256 digest: what a key table stores instead of the key.
pub type KeyHash = [u8; 32];

pub fn key_hash(key: &str) -> KeyHash {
    Sha256::digest(key.as_bytes()).into()
}

/// Lowercase hex of a key's hash, the form key tables hold (`printf %s KEY | sha256sum`).
pub fn key_hash_hex(key: &str) -> String {
    hex(&key_hash(key))
}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        text.push(DIGITS[(byte >> 4) as usize] as char);
        text.push(DIGITS[(byte & 0x0f) as usize] as char);
    }
    text
}

/// Parses 64 hex digits (either case) into a hash.
pub fn parse_key_hash(text: &str) -> Option<KeyHash> {
    let text = text.trim().as_bytes();
    if text.len() != 64 {
        return None;
    }
    let mut hash = [0u8; 32];
    for (byte, pair) in hash.iter_mut().zip(text.chunks_exact(2)) {
        let high = (pair[0] as char).to_digit(16)?;
        let low = (pair[1] as char).to_digit(16)?;
        *byte = (high * 16 + low) as u8;
    }
    Some(hash)
}

/// Compares two hashes in constant time (no early exit on the first differing byte).
pub fn hashes_equal(left: &KeyHash, right: &KeyHash) -> bool {
    left.ct_eq(right).into()
}

/// The key of an `Authorization` header value: `Ok(None)` when there is no header,
/// `Ok(Some(key))` for `Bearer KEY` (scheme case-insensitive), else a `missing_api_key` error
/// naming the expected form (another scheme carries no key this API accepts).
pub fn bearer_key(authorization: Option<&str>) -> Result<Option<&str>, ApiError> {
    let Some(value) = authorization else {
        return Ok(None);
    };
    let value = value.trim();
    let (scheme, key) = value.split_once(' ').unwrap_or((value, ""));
    let key = key.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || key.is_empty() {
        return Err(ApiError::new(
            ErrorCode::MissingApiKey,
            "the Authorization header must be `Bearer KEY`",
        ));
    }
    Ok(Some(key))
}

pub fn missing_key_error() -> ApiError {
    ApiError::new(
        ErrorCode::MissingApiKey,
        "this API needs a key: send `Authorization: Bearer KEY`",
    )
}

pub fn invalid_key_error() -> ApiError {
    ApiError::new(ErrorCode::InvalidApiKey, "the API key is not valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_sha256_in_hex() {
        // sha256("abc"), the FIPS 180-2 test vector.
        let expected = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(key_hash_hex("abc"), expected);
        assert_eq!(parse_key_hash(expected), Some(key_hash("abc")));
        assert_eq!(
            parse_key_hash(&expected.to_uppercase()),
            Some(key_hash("abc"))
        );
        assert_eq!(parse_key_hash(&expected[1..]), None);
        assert_eq!(parse_key_hash(&format!("{}zz", &expected[2..])), None);
        assert!(hashes_equal(&key_hash("abc"), &key_hash("abc")));
        assert!(!hashes_equal(&key_hash("abc"), &key_hash("abd")));
    }

    #[test]
    fn bearer_headers_parse() {
        assert_eq!(bearer_key(None), Ok(None));
        assert_eq!(bearer_key(Some("Bearer k-1")), Ok(Some("k-1")));
        assert_eq!(bearer_key(Some("  bearer   k-1 ")), Ok(Some("k-1")));
        for bad in ["Basic dXNlcjpwYXNz", "Bearer", "Bearer   ", "k-1", ""] {
            let error = bearer_key(Some(bad)).unwrap_err();
            assert_eq!(error.code, ErrorCode::MissingApiKey, "{bad:?}");
            assert_eq!(error.status(), 401);
        }
        assert_eq!(invalid_key_error().status(), 403);
        assert_eq!(
            missing_key_error().to_json(),
            r#"{"error":{"code":"missing_api_key","message":"this API needs a key: send `Authorization: Bearer KEY`"}}"#
        );
    }
}
