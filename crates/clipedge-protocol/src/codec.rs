//! Encoding of requests and responses.
//!
//! Binary frame (the normal case): 4-byte magic (`CESQ` request, `CESR` response), protocol
//! version as u16 little-endian, two reserved zero bytes, then the message in bincode 2's
//! standard configuration (via serde). JSON (`application/json`) carries the same fields for
//! debugging. Both directions are size-guarded well below the 6 MB Lambda payload cap.

use serde::de::DeserializeOwned;
use serde::Serialize;
use thiserror::Error;

use crate::{ScanRequest, ScanResponse};

/// Bumped on any change to the messages' fields or the frame.
pub const PROTOCOL_VERSION: u16 = 2;
/// A request is a query vector and a batch of ids: 1 MiB is far more than enough.
pub const MAX_REQUEST_BYTES: usize = 1 << 20;
/// Below the 6 MB Lambda response cap even after base64 (×4/3) in the function-URL envelope.
pub const MAX_RESPONSE_BYTES: usize = 4 << 20;

pub const REQUEST_MAGIC: [u8; 4] = *b"CESQ";
pub const RESPONSE_MAGIC: [u8; 4] = *b"CESR";
const FRAME_HEADER_BYTES: usize = 8;

/// Content type of the binary frame.
pub const BINARY_CONTENT_TYPE: &str = "application/x-clipedge-scan";
pub const JSON_CONTENT_TYPE: &str = "application/json";

#[derive(Debug, Error)]
pub enum ProtocolError {
    #[error("{what} is {size} bytes, over the limit of {limit}")]
    TooLarge {
        what: &'static str,
        size: usize,
        limit: usize,
    },
    #[error("malformed {what}: {reason}")]
    Malformed { what: &'static str, reason: String },
    #[error(
        "unsupported protocol version {found} in {what} (this build speaks version {supported})"
    )]
    Version {
        what: &'static str,
        found: u16,
        supported: u16,
    },
    #[error("invalid request: {reason}")]
    InvalidRequest { reason: String },
    #[error("cannot encode {what}: {reason}")]
    Encode { what: &'static str, reason: String },
}

/// How a message is encoded on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Binary,
    Json,
}

impl Encoding {
    /// JSON for `application/json` (parameters ignored), the binary frame otherwise.
    pub fn from_content_type(content_type: Option<&str>) -> Encoding {
        let is_json = content_type
            .and_then(|value| value.split(';').next())
            .is_some_and(|media_type| media_type.trim().eq_ignore_ascii_case(JSON_CONTENT_TYPE));
        if is_json {
            Encoding::Json
        } else {
            Encoding::Binary
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Encoding::Binary => BINARY_CONTENT_TYPE,
            Encoding::Json => JSON_CONTENT_TYPE,
        }
    }
}

fn bincode_config() -> bincode::config::Configuration {
    bincode::config::standard()
}

fn encode<T: Serialize>(
    value: &T,
    encoding: Encoding,
    what: &'static str,
    magic: [u8; 4],
    limit: usize,
) -> Result<Vec<u8>, ProtocolError> {
    let encoded = match encoding {
        Encoding::Json => serde_json::to_vec(value).map_err(|error| ProtocolError::Encode {
            what,
            reason: error.to_string(),
        })?,
        Encoding::Binary => {
            let mut framed = Vec::with_capacity(256);
            framed.extend_from_slice(&magic);
            framed.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
            framed.extend_from_slice(&[0, 0]);
            bincode::serde::encode_into_std_write(value, &mut framed, bincode_config()).map_err(
                |error| ProtocolError::Encode {
                    what,
                    reason: error.to_string(),
                },
            )?;
            framed
        }
    };
    if encoded.len() > limit {
        return Err(ProtocolError::TooLarge {
            what,
            size: encoded.len(),
            limit,
        });
    }
    Ok(encoded)
}

/// `LIMIT` is the frame size limit of the direction, so it is also all a length prefix may make
/// the decoder allocate (bincode allocates a string's claimed length before reading it).
fn decode<T: DeserializeOwned, const LIMIT: usize>(
    bytes: &[u8],
    encoding: Encoding,
    what: &'static str,
    magic: [u8; 4],
) -> Result<T, ProtocolError> {
    let limit = LIMIT;
    if bytes.len() > limit {
        return Err(ProtocolError::TooLarge {
            what,
            size: bytes.len(),
            limit,
        });
    }
    let malformed = |reason: String| ProtocolError::Malformed { what, reason };
    if encoding == Encoding::Json {
        return serde_json::from_slice(bytes).map_err(|error| malformed(error.to_string()));
    }
    if bytes.len() < FRAME_HEADER_BYTES {
        return Err(malformed(format!(
            "{} bytes is shorter than the {FRAME_HEADER_BYTES}-byte frame header",
            bytes.len()
        )));
    }
    if bytes[0..4] != magic {
        return Err(malformed(format!(
            "bad magic {:?}, expected {:?}",
            String::from_utf8_lossy(&bytes[0..4]),
            String::from_utf8_lossy(&magic)
        )));
    }
    let version = u16::from_le_bytes([bytes[4], bytes[5]]);
    if version != PROTOCOL_VERSION {
        return Err(ProtocolError::Version {
            what,
            found: version,
            supported: PROTOCOL_VERSION,
        });
    }
    let payload = &bytes[FRAME_HEADER_BYTES..];
    // The byte limit also bounds what a length prefix may make the decoder allocate.
    let config = bincode_config().with_limit::<LIMIT>();
    let (value, read): (T, usize) = bincode::serde::decode_from_slice(payload, config)
        .map_err(|error| malformed(error.to_string()))?;
    if read != payload.len() {
        return Err(malformed(format!(
            "{} trailing bytes after the message",
            payload.len() - read
        )));
    }
    Ok(value)
}

/// Encodes and validates a request (an invalid request is refused before it is sent).
pub fn encode_request(request: &ScanRequest, encoding: Encoding) -> Result<Vec<u8>, ProtocolError> {
    request.validate()?;
    encode(
        request,
        encoding,
        "scan request",
        REQUEST_MAGIC,
        MAX_REQUEST_BYTES,
    )
}

/// Decodes and validates a request.
pub fn decode_request(bytes: &[u8], encoding: Encoding) -> Result<ScanRequest, ProtocolError> {
    let request: ScanRequest =
        decode::<_, MAX_REQUEST_BYTES>(bytes, encoding, "scan request", REQUEST_MAGIC)?;
    request.validate()?;
    Ok(request)
}

pub fn encode_response(
    response: &ScanResponse,
    encoding: Encoding,
) -> Result<Vec<u8>, ProtocolError> {
    encode(
        response,
        encoding,
        "scan response",
        RESPONSE_MAGIC,
        MAX_RESPONSE_BYTES,
    )
}

pub fn decode_response(bytes: &[u8], encoding: Encoding) -> Result<ScanResponse, ProtocolError> {
    decode::<_, MAX_RESPONSE_BYTES>(bytes, encoding, "scan response", RESPONSE_MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ListResult, ScanStats, ScanStatus, ScanTargets};
    use clipedge_format::Hit;

    pub(crate) fn sample_request() -> ScanRequest {
        ScanRequest {
            request_id: "req-1".to_string(),
            index: "s3://bucket/indexes/laion".to_string(),
            generation: "1795371411698-1c6521d3".to_string(),
            query: vec![0.25, -1.5, 3.0e-7, 0.0],
            targets: ScanTargets::Groups {
                group_ids: vec![7, 3, 11],
                nprobe: 8,
            },
            k: 100,
            rerank: 10,
            deadline_ms: 2_000,
        }
    }

    fn sample_response() -> ScanResponse {
        ScanResponse {
            request_id: "req-1".to_string(),
            generation: "g".to_string(),
            groups: vec![],
            lists: vec![ListResult {
                list_id: 4,
                status: ScanStatus::Corrupt,
                cached: false,
                detail: "checksum mismatch in list 4".to_string(),
            }],
            candidates: vec![Hit {
                id: u64::MAX,
                score: -0.123_456_79,
                content_hash: 0xdead_beef_cafe_f00d,
                metadata_ref: 17,
                list_id: 3,
            }],
            records: vec![r#"{"caption":"a dog","url":"https://img.example/1.jpg"}"#.to_string()],
            stats: ScanStats {
                gets: 3,
                bytes_read: 1 << 40,
                ..ScanStats::default()
            },
        }
    }

    /// The bytes of a response as the protocol has always encoded it: a change here breaks
    /// deployed scanners and callers (`docs/protocol.md`).
    #[test]
    fn the_response_frame_keeps_its_bytes() {
        let binary = encode_response(&sample_response(), Encoding::Binary).unwrap();
        let hex: String = binary.iter().map(|byte| format!("{byte:02x}")).collect();
        assert_eq!(
            hex,
            "4345535202000000057265712d31016700010402001b636865636b73756d206d69736d6174636820\
             696e206c697374203401fdffffffffffffffffead6fcbdfd0df0fecaefbeadde110301357b226361\
             7074696f6e223a226120646f67222c2275726c223a2268747470733a2f2f696d672e6578616d706c\
             652f312e6a7067227d03fd00000000000100000000000000000000000000000000000000000000"
        );
        let json = encode_response(&sample_response(), Encoding::Json).unwrap();
        assert_eq!(
            String::from_utf8(json).unwrap(),
            r#"{"request_id":"req-1","generation":"g","groups":[],"lists":[{"list_id":4,"status":"Corrupt","cached":false,"detail":"checksum mismatch in list 4"}],"candidates":[{"id":18446744073709551615,"score":-0.12345679,"content_hash":16045690984503111693,"metadata_ref":17,"list_id":3}],"records":["{\"caption\":\"a dog\",\"url\":\"https://img.example/1.jpg\"}"],"stats":{"gets":3,"bytes_read":1099511627776,"list_cache_hits":0,"lists_scanned":0,"codes_scanned":0,"generation_cached":false,"fetch_ms":0.0,"scan_ms":0.0,"rerank_ms":0.0,"total_ms":0.0}}"#
        );
    }

    #[test]
    fn binary_and_json_round_trip_exactly() {
        let request = sample_request();
        let response = sample_response();
        for encoding in [Encoding::Binary, Encoding::Json] {
            let bytes = encode_request(&request, encoding).unwrap();
            assert_eq!(decode_request(&bytes, encoding).unwrap(), request);
            let bytes = encode_response(&response, encoding).unwrap();
            let decoded = decode_response(&bytes, encoding).unwrap();
            assert_eq!(decoded, response);
            assert_eq!(
                decoded.candidates[0].score.to_bits(),
                response.candidates[0].score.to_bits()
            );
        }
        let binary = encode_request(&request, Encoding::Binary).unwrap();
        assert_eq!(&binary[0..4], b"CESQ");
        assert_eq!(u16::from_le_bytes([binary[4], binary[5]]), PROTOCOL_VERSION);
    }

    #[test]
    fn malformed_frames_are_named_errors() {
        let good = encode_request(&sample_request(), Encoding::Binary).unwrap();
        let short = decode_request(&good[..3], Encoding::Binary).unwrap_err();
        assert!(short.to_string().contains("frame header"), "{short}");

        let mut wrong_magic = good.clone();
        wrong_magic[0] = b'X';
        let error = decode_request(&wrong_magic, Encoding::Binary).unwrap_err();
        assert!(error.to_string().contains("bad magic"), "{error}");

        let response_bytes = encode_response(&sample_response(), Encoding::Binary).unwrap();
        let error = decode_request(&response_bytes, Encoding::Binary).unwrap_err();
        assert!(error.to_string().contains("bad magic"), "{error}");

        let mut future = good.clone();
        future[4] = 3;
        let error = decode_request(&future, Encoding::Binary).unwrap_err();
        assert!(
            matches!(error, ProtocolError::Version { found: 3, .. }),
            "{error}"
        );

        let truncated = decode_request(&good[..good.len() - 2], Encoding::Binary).unwrap_err();
        assert!(
            matches!(truncated, ProtocolError::Malformed { .. }),
            "{truncated}"
        );

        let mut trailing = good.clone();
        trailing.push(0);
        let error = decode_request(&trailing, Encoding::Binary).unwrap_err();
        assert!(error.to_string().contains("trailing"), "{error}");

        let error = decode_request(b"{\"request_id\":1}", Encoding::Json).unwrap_err();
        assert!(matches!(error, ProtocolError::Malformed { .. }), "{error}");
    }

    #[test]
    fn a_huge_length_prefix_does_not_allocate_past_the_limit() {
        // Header, then a string length prefix claiming 2^60 bytes (bincode varint: 0xfd + u64).
        let mut bytes = Vec::from(REQUEST_MAGIC);
        bytes.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
        bytes.extend_from_slice(&[0, 0, 0xfd]);
        bytes.extend_from_slice(&(1u64 << 60).to_le_bytes());
        let error = decode_request(&bytes, Encoding::Binary).unwrap_err();
        assert!(matches!(error, ProtocolError::Malformed { .. }), "{error}");
    }

    /// Found by the fuzzing's allocation cap (`fuzz/regressions/scan_request/`): a request's
    /// length prefix was checked against the 4 MiB response limit, so a 16-byte request could
    /// make the scanner allocate up to 4 MiB. A claim over the request limit is now refused.
    #[test]
    fn a_request_length_prefix_is_held_to_the_request_limit() {
        let mut bytes = Vec::from(REQUEST_MAGIC);
        bytes.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
        bytes.extend_from_slice(&[0, 0, 0xfc]);
        bytes.extend_from_slice(&((MAX_REQUEST_BYTES + 1) as u32).to_le_bytes());
        bytes.extend_from_slice(b"abc");
        let error = decode_request(&bytes, Encoding::Binary).unwrap_err();
        assert!(error.to_string().contains("LimitExceeded"), "{error}");
    }

    #[test]
    fn size_guards_hold_in_both_directions() {
        let oversized = vec![0u8; MAX_REQUEST_BYTES + 1];
        let error = decode_request(&oversized, Encoding::Binary).unwrap_err();
        assert!(matches!(error, ProtocolError::TooLarge { .. }), "{error}");

        let mut response = sample_response();
        response.candidates = vec![response.candidates[0]; MAX_RESPONSE_BYTES / 16];
        let error = encode_response(&response, Encoding::Binary).unwrap_err();
        assert!(matches!(error, ProtocolError::TooLarge { .. }), "{error}");

        // The largest valid answer (MAX_CANDIDATES worst-case candidates) still fits.
        let mut largest = sample_response();
        largest.candidates = vec![largest.candidates[0]; crate::MAX_CANDIDATES];
        let bytes = encode_response(&largest, Encoding::Binary).unwrap();
        assert!(bytes.len() <= MAX_RESPONSE_BYTES, "{}", bytes.len());
    }

    /// What the README says a `/v1` k of 10,000 costs a scanner answer: with dedup the root asks
    /// each call for 20,000 candidates. Realistic values (large ids, random hashes and record
    /// references) in both encodings, far under the 6 MB Lambda payload cap.
    #[test]
    fn a_ten_thousand_result_answer_stays_far_under_the_lambda_cap() {
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut response = sample_response();
        response.candidates = (0..20_000)
            .map(|rank| Hit {
                id: next() % 5_000_000_000,
                score: 0.4 - rank as f32 * 1e-5,
                content_hash: next(),
                metadata_ref: next() >> 8,
                list_id: (next() % 1_000_000) as u32,
            })
            .collect();
        let binary = encode_response(&response, Encoding::Binary).unwrap();
        let json = encode_response(&response, Encoding::Json).unwrap();
        println!(
            "20,000 candidates: binary {} bytes, json {} bytes",
            binary.len(),
            json.len()
        );
        assert!(binary.len() <= 800_000, "{}", binary.len());
        assert!(json.len() <= MAX_RESPONSE_BYTES, "{}", json.len());
    }

    #[test]
    fn invalid_requests_are_refused_with_the_reason() {
        type Mutation = Box<dyn Fn(&mut ScanRequest)>;
        let cases: Vec<(Mutation, &str)> = vec![
            (Box::new(|r| r.query.clear()), "dimension"),
            (Box::new(|r| r.query[1] = f32::NAN), "non-finite"),
            (Box::new(|r| r.k = 0), "k (0)"),
            (Box::new(|r| r.rerank = 1_000_000), "rerank"),
            (Box::new(|r| r.deadline_ms = 0), "deadline"),
            (Box::new(|r| r.index.clear()), "index"),
            (
                Box::new(|r| {
                    r.targets = ScanTargets::Lists { list_ids: vec![] };
                }),
                "0 groups or lists",
            ),
            (
                Box::new(|r| {
                    r.targets = ScanTargets::Groups {
                        group_ids: vec![1],
                        nprobe: 0,
                    };
                }),
                "nprobe",
            ),
        ];
        for (mutate, expected) in cases {
            let mut request = sample_request();
            mutate(&mut request);
            let error = encode_request(&request, Encoding::Json).unwrap_err();
            assert!(
                error.to_string().contains(expected),
                "{error} lacks {expected}"
            );
            // Framed without validation, as a careless or hostile caller would send it.
            let bytes = encode(
                &request,
                Encoding::Binary,
                "scan request",
                REQUEST_MAGIC,
                MAX_REQUEST_BYTES,
            )
            .unwrap();
            let error = decode_request(&bytes, Encoding::Binary).unwrap_err();
            assert!(
                error.to_string().contains(expected),
                "{error} lacks {expected}"
            );
        }
    }

    #[test]
    fn content_types_choose_the_encoding() {
        assert_eq!(Encoding::from_content_type(None), Encoding::Binary);
        assert_eq!(
            Encoding::from_content_type(Some("Application/JSON; charset=utf-8")),
            Encoding::Json
        );
        assert_eq!(
            Encoding::from_content_type(Some(BINARY_CONTENT_TYPE)),
            Encoding::Binary
        );
    }
}
