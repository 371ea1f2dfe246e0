//! The caller's side: build a signed request.

use crate::{encode_request, sign, Encoding, ProtocolError, ScanRequest, SignedHeaders};

/// An encoded, signed request: POST `body` with `content_type` and the signature headers.
#[derive(Debug, Clone)]
pub struct SignedRequest {
    pub body: Vec<u8>,
    pub content_type: &'static str,
    pub headers: SignedHeaders,
}

impl SignedRequest {
    /// Encodes and signs `request` at `now_ms` (the caller's clock, unix milliseconds).
    pub fn new(
        request: &ScanRequest,
        encoding: Encoding,
        secret: &[u8],
        now_ms: u64,
    ) -> Result<SignedRequest, ProtocolError> {
        let body = encode_request(request, encoding)?;
        let headers = sign(secret, now_ms, &body);
        Ok(SignedRequest {
            body,
            content_type: encoding.content_type(),
            headers,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{decode_request, verify, ScanTargets, DEFAULT_MAX_SKEW_MS};

    #[test]
    fn a_signed_request_verifies_on_the_other_side() {
        let request = ScanRequest {
            request_id: "r".to_string(),
            index: "s3://b/i".to_string(),
            generation: "g".to_string(),
            query: vec![1.0, 2.0],
            targets: ScanTargets::Lists {
                list_ids: vec![1, 2],
            },
            k: 10,
            rerank: 4,
            deadline_ms: 500,
        };
        let signed = SignedRequest::new(&request, Encoding::Binary, b"s", 1_000).unwrap();
        assert_eq!(signed.content_type, Encoding::Binary.content_type());
        verify(
            b"s",
            Some(&signed.headers.timestamp),
            Some(&signed.headers.signature),
            &signed.body,
            1_500,
            DEFAULT_MAX_SKEW_MS,
        )
        .unwrap();
        assert_eq!(
            decode_request(&signed.body, Encoding::Binary).unwrap(),
            request
        );
    }
}
