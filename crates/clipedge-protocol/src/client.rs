//! The caller's side: build a signed request, read the answer, merge several answers.

use std::collections::HashMap;

use crate::{
    encode_request, sign, Candidate, Encoding, ProtocolError, ScanRequest, ScanResponse,
    SignedHeaders,
};

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

/// The best `k` candidates over several scanner responses, best first.
///
/// With `dedupe_by_content`, only the best-scoring candidate of each content hash is kept
/// (the same image indexed twice shows once). Ties on score resolve by the smaller id, so the
/// result does not depend on the order in which responses arrived.
pub fn merge_candidates<'a>(
    responses: impl IntoIterator<Item = &'a ScanResponse>,
    k: usize,
    dedupe_by_content: bool,
) -> Vec<Candidate> {
    let mut merged: Vec<Candidate> = Vec::new();
    if dedupe_by_content {
        let mut best_by_hash: HashMap<u64, Candidate> = HashMap::new();
        for response in responses {
            for candidate in &response.candidates {
                best_by_hash
                    .entry(candidate.content_hash)
                    .and_modify(|kept| {
                        if ranks_before(candidate, kept) {
                            *kept = *candidate;
                        }
                    })
                    .or_insert(*candidate);
            }
        }
        merged.extend(best_by_hash.into_values());
    } else {
        for response in responses {
            merged.extend_from_slice(&response.candidates);
        }
    }
    merged.sort_by(|a, b| {
        if ranks_before(a, b) {
            std::cmp::Ordering::Less
        } else if ranks_before(b, a) {
            std::cmp::Ordering::Greater
        } else {
            std::cmp::Ordering::Equal
        }
    });
    merged.truncate(k);
    merged
}

/// Higher score first, then smaller id, then smaller list id; NaN scores last.
fn ranks_before(a: &Candidate, b: &Candidate) -> bool {
    match (a.score.is_nan(), b.score.is_nan()) {
        (false, true) => return true,
        (true, false) => return false,
        _ => {}
    }
    if a.score != b.score {
        return a.score > b.score;
    }
    (a.id, a.list_id) < (b.id, b.list_id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{decode_request, verify, ScanStats, ScanTargets, DEFAULT_MAX_SKEW_MS};

    fn candidate(id: u64, score: f32, content_hash: u64) -> Candidate {
        Candidate {
            id,
            score,
            content_hash,
            metadata_ref: id,
            list_id: (id % 7) as u32,
        }
    }

    fn response(candidates: Vec<Candidate>) -> ScanResponse {
        ScanResponse {
            request_id: "r".to_string(),
            generation: "g".to_string(),
            groups: vec![],
            lists: vec![],
            candidates,
            stats: ScanStats::default(),
        }
    }

    #[test]
    fn merging_keeps_the_best_and_dedupes_by_content() {
        let first = response(vec![candidate(1, 0.9, 100), candidate(2, 0.5, 200)]);
        let second = response(vec![
            candidate(3, 0.95, 100),
            candidate(4, 0.5, 400),
            candidate(5, 0.1, 500),
        ]);
        let merged = merge_candidates([&first, &second], 3, true);
        let ids: Vec<u64> = merged.iter().map(|c| c.id).collect();
        assert_eq!(ids, vec![3, 2, 4], "hash 100 kept once (best), tie by id");

        let all = merge_candidates([&second, &first], 10, false);
        let ids: Vec<u64> = all.iter().map(|c| c.id).collect();
        assert_eq!(ids, vec![3, 1, 2, 4, 5]);
        assert_eq!(
            merge_candidates([&first, &second], 10, true),
            merge_candidates([&second, &first], 10, true),
            "order of arrival does not matter"
        );
    }

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
