//! The behaviour every [`ObjectSource`] must have, as one suite each implementation runs:
//! in memory and local directories (`clipedge-storage`'s tests), an S3-compatible server
//! (`tests/tests/storage_s3.rs`), and the edge Worker's R2 binding and presigned GETs inside
//! workerd (`tests/tests/edge_worker.rs`, through the Worker's conformance route).
//!
//! Usage: write [`objects`] under some root with the backend's own writer, then call [`check`]
//! on a source that reads that root.

use std::ops::Range;

use bytes::Bytes;

use crate::{ObjectSource, SourceError};

/// Large enough to arrive in several chunks from a streaming backend.
const LARGE_BYTES: usize = (1 << 20) + 17;

fn pattern(len: usize, seed: u8) -> Bytes {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(31).wrapping_add((i >> 8) as u32) as u8 ^ seed)
        .collect::<Vec<u8>>()
        .into()
}

/// The objects [`check`] expects under the source's root: `(key, bytes)`.
pub fn objects() -> Vec<(String, Bytes)> {
    vec![
        ("small.bin".to_string(), pattern(1000, 0)),
        ("empty.bin".to_string(), Bytes::new()),
        (
            "nested/dir/large.bin".to_string(),
            pattern(LARGE_BYTES, 0x5a),
        ),
    ]
}

/// A failed expectation, naming the check.
#[derive(Debug, thiserror::Error)]
#[error("object source conformance: {check}: {detail}")]
pub struct ConformanceFailure {
    pub check: &'static str,
    pub detail: String,
}

fn fail(check: &'static str, detail: impl Into<String>) -> ConformanceFailure {
    ConformanceFailure {
        check,
        detail: detail.into(),
    }
}

fn expect_bytes(
    check: &'static str,
    got: Result<Bytes, SourceError>,
    want: &[u8],
) -> Result<(), ConformanceFailure> {
    let got = got.map_err(|error| fail(check, format!("unexpected error: {error}")))?;
    if got.len() != want.len() {
        return Err(fail(
            check,
            format!("{} bytes, expected {}", got.len(), want.len()),
        ));
    }
    if let Some(at) = (0..want.len()).find(|i| got[*i] != want[*i]) {
        return Err(fail(check, format!("bytes differ first at offset {at}")));
    }
    Ok(())
}

fn slice(bytes: &Bytes, range: &Range<u64>) -> Bytes {
    bytes.slice(range.start as usize..range.end as usize)
}

/// Runs every check against `source`, which must hold [`objects`]. Returns the first failure.
pub async fn check<S: ObjectSource>(source: &S) -> Result<(), ConformanceFailure> {
    let objects = objects();
    let small = &objects[0].1;
    let large = &objects[2].1;
    let large_key = objects[2].0.as_str();

    expect_bytes("whole object", source.get("small.bin", None).await, small)?;
    expect_bytes("empty object", source.get("empty.bin", None).await, b"")?;
    expect_bytes(
        "large object in chunks",
        source.get(large_key, None).await,
        large,
    )?;
    expect_bytes(
        "limit equal to the size",
        source.get("small.bin", Some(1000)).await,
        small,
    )?;
    match source.get("small.bin", Some(999)).await {
        Err(SourceError::TooLarge {
            size: 1000,
            limit: 999,
            ..
        }) => {}
        other => {
            return Err(fail(
                "limit below the size",
                format!("expected too large (1000 > 999), got {other:?}"),
            ))
        }
    }
    match source.get("missing.bin", None).await {
        Err(SourceError::NotFound { .. }) => {}
        other => {
            return Err(fail(
                "missing object",
                format!("expected not found, got {other:?}"),
            ))
        }
    }
    match source.get_range("missing.bin", 0..10).await {
        Err(SourceError::NotFound { .. }) => {}
        other => {
            return Err(fail(
                "range of a missing object",
                format!("expected not found, got {other:?}"),
            ))
        }
    }

    for (check, range) in [
        ("range inside", 100..164),
        ("range at the start", 0..1),
        ("range to the end", 900..1000),
    ] {
        expect_bytes(
            check,
            source.get_range("small.bin", range.clone()).await,
            &slice(small, &range),
        )?;
    }
    expect_bytes(
        "empty range",
        source.get_range("small.bin", 10..10).await,
        b"",
    )?;
    let deep = 700_000..(LARGE_BYTES as u64);
    expect_bytes(
        "range deep in a large object",
        source.get_range(large_key, deep.clone()).await,
        &slice(large, &deep),
    )?;
    if let Ok(bytes) = source.get_range("small.bin", 990..1010).await {
        return Err(fail(
            "range past the end",
            format!("expected an error, got {} bytes", bytes.len()),
        ));
    }

    // Unordered, overlapping, repeated, empty and far-apart ranges, each answered exactly.
    let ranges = [
        900_000..900_100,
        0..10,
        5..30,
        0..10,
        400..400,
        1000..2000,
        (LARGE_BYTES as u64 - 5)..(LARGE_BYTES as u64),
    ];
    let read = source
        .get_ranges(large_key, &ranges)
        .await
        .map_err(|error| fail("many ranges", format!("unexpected error: {error}")))?;
    if read.parts.len() != ranges.len() {
        return Err(fail(
            "many ranges",
            format!("{} parts for {} ranges", read.parts.len(), ranges.len()),
        ));
    }
    for (part, range) in read.parts.iter().zip(&ranges) {
        let want = if range.start < range.end {
            slice(large, range)
        } else {
            Bytes::new()
        };
        expect_bytes("many ranges", Ok(part.clone()), &want)?;
    }
    if read.requests == 0 || read.bytes < 10 + 25 + 1000 + 100 + 5 {
        return Err(fail(
            "many ranges",
            format!(
                "reported {} requests and {} bytes, fewer than were needed",
                read.requests, read.bytes
            ),
        ));
    }
    let none = source
        .get_ranges("small.bin", &[])
        .await
        .map_err(|error| fail("no ranges", format!("unexpected error: {error}")))?;
    if !none.parts.is_empty() || none.requests != 0 {
        return Err(fail("no ranges", "expected no parts and no requests"));
    }
    Ok(())
}
