//! Fuzz checks of every decoder that reads bytes from outside the process: the index format
//! (manifest, `CURRENT`, routing, codebooks, group and list blobs, catalog), the scanner
//! protocol (frames and request signing) and the API's JSON bodies (`/v1`, `/knn-service`,
//! `/metadata`).
//!
//! Each target is one function of the input bytes that panics when a property fails: the
//! decoder must not panic, must not allocate more than its [`alloc_cap::Budget`] allows, and
//! whatever it accepts must encode and decode back to itself; the same bytes also drive a
//! structured round trip (`arbitrary`) through the encoder. `fuzz/` (cargo-fuzz, nightly)
//! calls these functions from libFuzzer; `tests/replay.rs` (stable, part of `cargo test`)
//! replays the committed corpora and crashes through them and runs a short mutation pass.
//! See `docs/fuzzing.md`.

pub mod alloc_cap;
pub mod mutate;
pub mod seeds;
pub mod targets;

pub use alloc_cap::CappedAllocator;

/// One fuzz target: its name (the `fuzz/fuzz_targets/<name>.rs` binary and the
/// `fuzz/corpus/<name>/` directory) and its check.
#[derive(Clone, Copy)]
pub struct Target {
    pub name: &'static str,
    pub check: fn(&[u8]),
}

pub const TARGETS: &[Target] = &[
    Target {
        name: "manifest",
        check: targets::manifest,
    },
    Target {
        name: "current",
        check: targets::current,
    },
    Target {
        name: "routing",
        check: targets::routing,
    },
    Target {
        name: "codebooks",
        check: targets::codebooks,
    },
    Target {
        name: "group_blob",
        check: targets::group_blob,
    },
    Target {
        name: "list_blob",
        check: targets::list_blob,
    },
    Target {
        name: "catalog",
        check: targets::catalog,
    },
    Target {
        name: "scan_request",
        check: targets::scan_request,
    },
    Target {
        name: "scan_response",
        check: targets::scan_response,
    },
    Target {
        name: "signing",
        check: targets::signing,
    },
    Target {
        name: "v1_search",
        check: targets::v1_search,
    },
    Target {
        name: "knn_service",
        check: targets::knn_service,
    },
];

/// The target named `name`.
pub fn target(name: &str) -> Option<Target> {
    TARGETS.iter().copied().find(|target| target.name == name)
}

/// Splits a fuzz input into `count` fields: each but the last is a u16 little-endian length
/// and that many bytes (cut short at the end of the input), the last is the rest. Lets one
/// byte string carry a decoder's parameters next to its bytes; [`join_fields`] is the inverse.
pub fn split_fields(data: &[u8], count: usize) -> Vec<&[u8]> {
    let mut fields = Vec::with_capacity(count);
    let mut rest = data;
    for _ in 1..count {
        let (len, after) = match rest {
            [low, high, after @ ..] => (u16::from_le_bytes([*low, *high]) as usize, after),
            _ => (0, &[][..]),
        };
        let (field, after) = after.split_at(len.min(after.len()));
        fields.push(field);
        rest = after;
    }
    fields.push(rest);
    fields
}

/// The input [`split_fields`] splits into `fields`.
pub fn join_fields(fields: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    let Some((last, leading)) = fields.split_last() else {
        return out;
    };
    for field in leading {
        let len = u16::try_from(field.len()).expect("a field is at most 64 KiB");
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(field);
    }
    out.extend_from_slice(last);
    out
}

/// Little-endian integer from up to 8 bytes (missing bytes are zero).
pub fn le_u64(bytes: &[u8]) -> u64 {
    let mut padded = [0u8; 8];
    let len = bytes.len().min(8);
    padded[..len].copy_from_slice(&bytes[..len]);
    u64::from_le_bytes(padded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_split_back_into_what_was_joined() {
        let fields: [&[u8]; 3] = [b"ab", b"", b"rest of it"];
        let joined = join_fields(&fields);
        assert_eq!(split_fields(&joined, 3), fields.to_vec());
        // Short and empty inputs give empty fields, never a panic.
        let empty: &[u8] = &[];
        assert_eq!(split_fields(&[5], 3), vec![empty, empty, empty]);
        assert_eq!(split_fields(&[9, 0, 1, 2], 2), vec![&[1, 2][..], &[][..]]);
        assert_eq!(le_u64(&[1, 2]), 0x0201);
    }
}
