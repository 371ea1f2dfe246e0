//! Round trips, corruption detection and validation of every object of the on-storage format.
//!
//! The blobs here are small on purpose: corruption tests flip every single byte position and
//! decode every truncated prefix, so each case stays in the thousands of decodes.

use clipedge_format::{
    checksum, code_bytes, decode_codebooks, encode_codebooks, fastscan_block_bytes,
    generation_path, BuildInfo, Codebooks, CurrentPointer, FileRef, FormatError, GroupBlob,
    GroupEntry, ListBlobBuilder, ListExpectation, ListLocation, ListView, Manifest, Metric,
    ModelInfo, PqParams, RerankData, RerankKind, RoutingTable, ShardRef, CURRENT_OBJECT,
    FORMAT_VERSION, LIST_LOCATION_BYTES, LIST_MAGIC,
};

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

/// Deterministic pseudo-random floats without a RNG dependency (SplitMix64 bits).
fn floats(count: usize, seed: u64) -> Vec<f32> {
    let mut state = seed;
    (0..count)
        .map(|_| {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            (z >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}

fn sample_manifest() -> Manifest {
    Manifest {
        format_version: FORMAT_VERSION,
        generation: "0001700000000000-deadbeef".to_string(),
        created_unix_ms: 1_700_000_000_000,
        model: ModelInfo {
            id: "clip-vit-b32".to_string(),
            fingerprint: "sha256:abc".to_string(),
        },
        dim: 64,
        metric: Metric::InnerProduct,
        count: 12_345,
        nlist: 32,
        ngroups: 4,
        pq: PqParams {
            m: 16,
            bits: 8,
            dsub: 4,
            by_residual: true,
        },
        rerank: RerankKind::Int8,
        routing: FileRef {
            path: "routing.bin".to_string(),
            bytes: 1234,
            crc32: 0xdead_beef,
        },
        groups: FileRef {
            path: "groups.bin".to_string(),
            bytes: 99_999,
            crc32: 7,
        },
        codebooks: FileRef {
            path: "codebooks.bin".to_string(),
            bytes: 65_568,
            crc32: u32::MAX,
        },
        shards: vec![
            ShardRef {
                path: "shard-00000.bin".to_string(),
                bytes: 1 << 33,
                lists: 20,
            },
            ShardRef {
                path: "shard-00001.bin".to_string(),
                bytes: 77,
                lists: 12,
            },
        ],
        build: BuildInfo {
            seed: u64::MAX,
            train_size: 12_345,
            kmeans_iters: 20,
            builder: "test".to_string(),
        },
        catalog: None,
        search_defaults: None,
    }
}

/// A routing table of 3 groups covering 7 lists in 4 dimensions.
fn sample_routing() -> RoutingTable {
    let dim = 4;
    let counts = [2u32, 4, 1];
    let mut groups = Vec::new();
    let mut first_list = 0;
    let mut offset = 0u64;
    for (index, count) in counts.iter().enumerate() {
        let length = *count * (dim as u32 * 4 + LIST_LOCATION_BYTES as u32);
        groups.push(GroupEntry {
            first_list,
            list_count: *count,
            offset,
            length,
            crc32: 0x1000 + index as u32,
            radius: index as f32 * 0.25,
        });
        first_list += count;
        offset += u64::from(length);
    }
    RoutingTable {
        dim,
        nlist: first_list,
        centroids: floats(counts.len() * dim, 1),
        groups,
    }
}

fn sample_group() -> GroupBlob {
    let dim = 3;
    GroupBlob {
        first_list: 5,
        dim,
        centroids: floats(2 * dim, 2),
        lists: vec![
            ListLocation {
                shard: 0,
                count: 17,
                offset: 0,
                length: 1000,
                crc32: 0xabcd_ef01,
            },
            ListLocation {
                shard: 3,
                count: 1,
                offset: (1 << 40) + 64,
                length: 64,
                crc32: 42,
            },
        ],
    }
}

fn sample_codebooks(m: usize, ksub: usize, dsub: usize) -> Codebooks {
    Codebooks {
        m,
        ksub,
        dsub,
        centroids: floats(m * ksub * dsub, 3),
    }
}

/// Owned columns of a list blob, so tests can build a [`ListBlobBuilder`] from them.
struct ListFixture {
    list_id: u32,
    dim: usize,
    m: usize,
    bits: u8,
    ids: Vec<u64>,
    hashes: Vec<u64>,
    metas: Vec<u64>,
    codes: Vec<u8>,
    rerank: RerankData,
}

impl ListFixture {
    fn new(count: usize, dim: usize, m: usize, bits: u8, rerank: RerankKind) -> Self {
        let rerank = match rerank {
            RerankKind::None => RerankData::None,
            RerankKind::Fp16 => {
                RerankData::Fp16((0..count * dim).map(|i| (i * 2654 + 7) as u16).collect())
            }
            RerankKind::Int8 => RerankData::Int8 {
                scales: floats(count, 4).iter().map(|x| x.abs() + 0.01).collect(),
                values: (0..count * dim).map(|i| (i % 255) as i8).collect(),
            },
        };
        ListFixture {
            list_id: 9,
            dim,
            m,
            bits,
            ids: (0..count as u64).map(|i| 1_000_000 + 3 * i).collect(),
            hashes: (0..count as u64)
                .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
                .collect(),
            metas: (0..count as u64).map(|i| u64::MAX - i).collect(),
            codes: (0..code_bytes(count, m, bits))
                .map(|i| (i * 31 % 251) as u8)
                .collect(),
            rerank,
        }
    }

    fn count(&self) -> usize {
        self.ids.len()
    }

    fn rerank_kind(&self) -> RerankKind {
        match self.rerank {
            RerankData::None => RerankKind::None,
            RerankData::Fp16(_) => RerankKind::Fp16,
            RerankData::Int8 { .. } => RerankKind::Int8,
        }
    }

    fn encode(&self) -> Vec<u8> {
        ListBlobBuilder {
            list_id: self.list_id,
            dim: self.dim,
            m: self.m,
            bits: self.bits,
            ids: &self.ids,
            content_hashes: &self.hashes,
            metadata_refs: &self.metas,
            codes: &self.codes,
            rerank: &self.rerank,
            records: None,
        }
        .encode()
    }

    /// What a reader would expect of this list, given the blob's checksum.
    fn expectation(&self, crc32: u32) -> ListExpectation {
        ListExpectation {
            list_id: self.list_id,
            count: self.count() as u32,
            crc32,
            dim: self.dim,
            m: self.m,
            bits: self.bits,
            rerank: self.rerank_kind(),
        }
    }
}

const RERANK_KINDS: [RerankKind; 3] = [RerankKind::None, RerankKind::Fp16, RerankKind::Int8];

/// Asserts every single-byte flip of `bytes` makes `decode` fail with a checksum error.
fn assert_every_flip_is_a_checksum_error(
    what: &str,
    bytes: &[u8],
    decode: impl Fn(&[u8]) -> Result<(), FormatError>,
) {
    assert!(decode(bytes).is_ok(), "{what}: pristine bytes must decode");
    let mut corrupt = bytes.to_vec();
    for position in 0..bytes.len() {
        for flip in [0x01u8, 0x80, 0xff] {
            corrupt[position] ^= flip;
            match decode(&corrupt) {
                Err(FormatError::Checksum { .. }) => {}
                other => panic!(
                    "{what}: flipping byte {position} of {} with {flip:#04x} gave {other:?}",
                    bytes.len()
                ),
            }
            corrupt[position] ^= flip;
        }
    }
}

/// Asserts every strict prefix of `bytes` is an error (never a panic, never a success).
fn assert_every_truncation_is_an_error(
    what: &str,
    bytes: &[u8],
    decode: impl Fn(&[u8]) -> Result<(), FormatError>,
) {
    for length in 0..bytes.len() {
        assert!(
            decode(&bytes[..length]).is_err(),
            "{what}: a {length}-byte prefix of {} bytes decoded",
            bytes.len()
        );
    }
}

fn assert_invalid(result: Result<impl std::fmt::Debug, FormatError>, reason_part: &str) {
    match result {
        Err(FormatError::Invalid { reason, .. }) if reason.contains(reason_part) => {}
        other => panic!("expected an Invalid error mentioning {reason_part:?}, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------------

#[test]
fn code_bytes_pads_4_bit_codes_to_blocks_of_32() {
    assert_eq!(code_bytes(0, 16, 8), 0);
    assert_eq!(code_bytes(33, 16, 8), 33 * 16);
    assert_eq!(fastscan_block_bytes(16), 256);
    assert_eq!(code_bytes(0, 16, 4), 0);
    assert_eq!(code_bytes(1, 16, 4), 256);
    assert_eq!(code_bytes(32, 16, 4), 256);
    assert_eq!(code_bytes(33, 16, 4), 512);
}

#[test]
fn checksum_is_crc32_ieee() {
    // The standard CRC-32 check value: readers in other languages must agree with it.
    assert_eq!(checksum(b"123456789"), 0xcbf4_3926);
    assert_eq!(checksum(b""), 0);
}

#[test]
fn generation_paths_nest_under_generations() {
    assert_eq!(
        generation_path("g1", "manifest.json"),
        "generations/g1/manifest.json"
    );
}

// ---------------------------------------------------------------------------------------------
// Manifest
// ---------------------------------------------------------------------------------------------

#[test]
fn manifest_round_trips_through_json() {
    let manifest = sample_manifest();
    let json = manifest.to_json();
    assert_eq!(json.last(), Some(&b'\n'));
    assert_eq!(Manifest::from_json(&json).unwrap(), manifest);
}

#[test]
fn manifest_json_uses_snake_case_enum_names() {
    // Other readers (the edge Worker) parse these names: they are part of the format.
    let value: serde_json::Value = serde_json::from_slice(&sample_manifest().to_json()).unwrap();
    assert_eq!(value["metric"], "inner_product");
    assert_eq!(value["rerank"], "int8");
    assert_eq!(value["pq"]["bits"], 8);
    assert_eq!(value["shards"][0]["bytes"], 1u64 << 33);
}

#[test]
fn manifest_readers_ignore_unknown_fields() {
    // docs/format.md: fields may be added within a version without breaking old readers.
    let mut value: serde_json::Value =
        serde_json::from_slice(&sample_manifest().to_json()).unwrap();
    value["added_later"] = serde_json::json!({"anything": [1, 2, 3]});
    value["pq"]["also_new"] = serde_json::Value::Bool(true);
    assert_eq!(
        Manifest::from_json(value.to_string().as_bytes()).unwrap(),
        sample_manifest()
    );
}

#[test]
fn manifest_rejects_garbage_json() {
    assert!(matches!(
        Manifest::from_json(b"{not json"),
        Err(FormatError::Json { .. })
    ));
    let mut value: serde_json::Value =
        serde_json::from_slice(&sample_manifest().to_json()).unwrap();
    value.as_object_mut().unwrap().remove("pq");
    assert!(matches!(
        Manifest::from_json(value.to_string().as_bytes()),
        Err(FormatError::Json { .. })
    ));
}

/// `mutate` breaks one invariant; both `validate` and `from_json` must refuse the result.
fn assert_manifest_refused(mutate: impl Fn(&mut Manifest), check: impl Fn(FormatError)) {
    let mut manifest = sample_manifest();
    mutate(&mut manifest);
    check(manifest.validate().expect_err("validate accepted it"));
    check(Manifest::from_json(&manifest.to_json()).expect_err("from_json accepted it"));
}

#[test]
fn manifest_validation_rejects_a_foreign_version() {
    assert_manifest_refused(
        |manifest| manifest.format_version = FORMAT_VERSION + 1,
        |error| {
            assert!(
                matches!(error, FormatError::Version { found, supported, .. }
                    if found == FORMAT_VERSION + 1 && supported == FORMAT_VERSION),
                "{error:?}"
            )
        },
    );
}

#[test]
fn manifest_validation_rejects_m_not_dividing_dim() {
    // 64 = 16 * 4; m = 3 with dsub = 21 covers 63 dimensions.
    assert_manifest_refused(
        |manifest| {
            manifest.pq.m = 3;
            manifest.pq.dsub = 21;
        },
        |error| assert!(matches!(error, FormatError::Invalid { .. }), "{error:?}"),
    );
    // dsub that disagrees with dim / m.
    assert_manifest_refused(
        |manifest| manifest.pq.dsub = 8,
        |error| assert!(matches!(error, FormatError::Invalid { .. }), "{error:?}"),
    );
    assert_manifest_refused(
        |manifest| {
            manifest.pq.m = 0;
            manifest.pq.dsub = 0;
        },
        |error| assert!(matches!(error, FormatError::Invalid { .. }), "{error:?}"),
    );
}

#[test]
fn manifest_validation_rejects_unsupported_bits() {
    for bits in [0u8, 1, 5, 7, 16] {
        assert_manifest_refused(
            |manifest| manifest.pq.bits = bits,
            |error| match error {
                FormatError::Invalid { reason, .. } => assert!(reason.contains("bits"), "{reason}"),
                other => panic!("{other:?}"),
            },
        );
    }
}

#[test]
fn manifest_validation_rejects_odd_m_with_4_bits() {
    assert_manifest_refused(
        |manifest| {
            manifest.dim = 48;
            manifest.pq = PqParams {
                m: 3,
                bits: 4,
                dsub: 16,
                by_residual: true,
            };
        },
        |error| match error {
            FormatError::Invalid { reason, .. } => assert!(reason.contains("even"), "{reason}"),
            other => panic!("{other:?}"),
        },
    );
    // The same shape with 8 bits is fine.
    let mut manifest = sample_manifest();
    manifest.dim = 48;
    manifest.pq = PqParams {
        m: 3,
        bits: 8,
        dsub: 16,
        by_residual: true,
    };
    manifest.validate().unwrap();
}

#[test]
fn manifest_validation_rejects_more_groups_than_lists_and_zero_sizes() {
    assert_manifest_refused(
        |manifest| manifest.ngroups = manifest.nlist + 1,
        |error| assert!(matches!(error, FormatError::Invalid { .. }), "{error:?}"),
    );
    for zero in 0..3 {
        assert_manifest_refused(
            |manifest| match zero {
                0 => manifest.dim = 0,
                1 => manifest.nlist = 0,
                _ => manifest.ngroups = 0,
            },
            |error| assert!(matches!(error, FormatError::Invalid { .. }), "{error:?}"),
        );
    }
    // ngroups == nlist (flat routing) is valid.
    let mut flat = sample_manifest();
    flat.ngroups = flat.nlist;
    flat.validate().unwrap();
}

// ---------------------------------------------------------------------------------------------
// CURRENT pointer
// ---------------------------------------------------------------------------------------------

#[test]
fn current_pointer_round_trips() {
    assert_eq!(CURRENT_OBJECT, "CURRENT");
    let pointer = CurrentPointer::new("0001700000000000-0badf00d");
    assert_eq!(pointer.format_version, FORMAT_VERSION);
    let json = pointer.to_json();
    assert_eq!(CurrentPointer::from_json(&json).unwrap(), pointer);
}

#[test]
fn current_pointer_rejects_unsafe_generation_names() {
    // A generation name becomes part of object paths: it must not escape generations/.
    for name in [
        "", "..", "../x", "a/b", "/abs", "a\\b", "a b", "g.1", "g\n", "é",
    ] {
        let json = CurrentPointer::new(name).to_json();
        match CurrentPointer::from_json(&json) {
            Err(FormatError::Invalid { .. }) => {}
            other => panic!("generation {name:?} gave {other:?}"),
        }
    }
    for name in ["a", "A-b_9", "0001700000000000-deadbeef"] {
        CurrentPointer::from_json(&CurrentPointer::new(name).to_json()).unwrap();
    }
}

#[test]
fn current_pointer_rejects_other_versions_and_garbage() {
    let mut pointer = CurrentPointer::new("g");
    pointer.format_version = FORMAT_VERSION + 1;
    assert!(matches!(
        CurrentPointer::from_json(&pointer.to_json()),
        Err(FormatError::Version { .. })
    ));
    assert!(matches!(
        CurrentPointer::from_json(b""),
        Err(FormatError::Json { .. })
    ));
    assert!(matches!(
        CurrentPointer::from_json(b"{\"generation\":\"g\"}"),
        Err(FormatError::Json { .. })
    ));
}

// ---------------------------------------------------------------------------------------------
// Routing table
// ---------------------------------------------------------------------------------------------

#[test]
fn routing_table_round_trips() {
    let routing = sample_routing();
    let bytes = routing.encode();
    let decoded = RoutingTable::decode(&bytes).unwrap();
    assert_eq!(decoded, routing);
    assert_eq!(decoded.ngroups(), 3);
    assert_eq!(decoded.centroid(1), &routing.centroids[4..8]);
    assert_eq!(
        bytes.len(),
        32 + routing.centroids.len() * 4 + 3 * clipedge_format::GROUP_ENTRY_BYTES + 4
    );
}

#[test]
fn routing_table_detects_every_single_byte_flip() {
    let bytes = sample_routing().encode();
    assert_every_flip_is_a_checksum_error("routing.bin", &bytes, |bytes| {
        RoutingTable::decode(bytes).map(drop)
    });
}

#[test]
fn routing_table_truncations_are_errors() {
    let bytes = sample_routing().encode();
    assert_every_truncation_is_an_error("routing.bin", &bytes, |bytes| {
        RoutingTable::decode(bytes).map(drop)
    });
}

/// Re-seals a body whose trailer is a CRC-32 of everything before it.
fn reseal(mut body: Vec<u8>) -> Vec<u8> {
    let crc = checksum(&body);
    body.extend_from_slice(&crc.to_le_bytes());
    body
}

#[test]
fn routing_table_with_a_valid_checksum_is_still_structurally_checked() {
    // Groups that skip a list.
    let mut gapped = sample_routing();
    gapped.groups[1].first_list += 1;
    assert_invalid(RoutingTable::decode(&gapped.encode()), "contiguously");
    // Header nlist that disagrees with the groups.
    let mut wrong_nlist = sample_routing();
    wrong_nlist.nlist += 1;
    assert_invalid(RoutingTable::decode(&wrong_nlist.encode()), "cover");
    // An empty group.
    let mut empty = sample_routing();
    empty.groups[2].list_count = 0;
    empty.nlist -= 1;
    assert_invalid(RoutingTable::decode(&empty.encode()), "contiguously");
    // Trailing bytes after the last entry, under a valid checksum.
    let bytes = sample_routing().encode();
    let mut body = bytes[..bytes.len() - 4].to_vec();
    body.extend_from_slice(&[0; 8]);
    assert_invalid(RoutingTable::decode(&reseal(body)), "trailing");
    // Wrong magic and version.
    let mut body = bytes[..bytes.len() - 4].to_vec();
    body[0] ^= 0x20;
    assert!(matches!(
        RoutingTable::decode(&reseal(body)),
        Err(FormatError::BadMagic { .. })
    ));
    let mut body = bytes[..bytes.len() - 4].to_vec();
    body[8..12].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
    assert!(matches!(
        RoutingTable::decode(&reseal(body)),
        Err(FormatError::Version { .. })
    ));
}

// ---------------------------------------------------------------------------------------------
// Group blobs
// ---------------------------------------------------------------------------------------------

#[test]
fn group_blob_round_trips() {
    let group = sample_group();
    let bytes = group.encode();
    assert_eq!(bytes.len(), 2 * (3 * 4 + LIST_LOCATION_BYTES));
    let decoded = GroupBlob::decode(&bytes, 5, 2, 3, checksum(&bytes)).unwrap();
    assert_eq!(decoded, group);
    assert_eq!(decoded.centroid(1), &group.centroids[3..6]);
}

#[test]
fn group_blob_detects_every_single_byte_flip() {
    let bytes = sample_group().encode();
    let crc = checksum(&bytes);
    assert_every_flip_is_a_checksum_error("group blob", &bytes, |bytes| {
        GroupBlob::decode(bytes, 5, 2, 3, crc).map(drop)
    });
}

#[test]
fn group_blob_truncations_and_shape_mismatches_are_errors() {
    let bytes = sample_group().encode();
    let crc = checksum(&bytes);
    assert_every_truncation_is_an_error("group blob", &bytes, |bytes| {
        GroupBlob::decode(bytes, 5, 2, 3, crc).map(drop)
    });
    // Truncations whose checksum was recorded as such still fail on length.
    for length in 0..bytes.len() {
        let prefix = &bytes[..length];
        assert_invalid(
            GroupBlob::decode(prefix, 5, 2, 3, checksum(prefix)),
            "length",
        );
    }
    // Right checksum, wrong list count or dimension.
    assert_invalid(GroupBlob::decode(&bytes, 5, 3, 3, crc), "length");
    assert_invalid(GroupBlob::decode(&bytes, 5, 1, 3, crc), "length");
    assert_invalid(GroupBlob::decode(&bytes, 5, 2, 4, crc), "length");
}

// ---------------------------------------------------------------------------------------------
// Codebooks
// ---------------------------------------------------------------------------------------------

#[test]
fn codebooks_round_trip_for_both_code_sizes() {
    for (m, ksub, dsub) in [(4, 256, 2), (8, 16, 3)] {
        let codebooks = sample_codebooks(m, ksub, dsub);
        let bytes = encode_codebooks(&codebooks);
        assert_eq!(bytes.len(), 24 + m * ksub * dsub * 4 + 4);
        assert_eq!(decode_codebooks(&bytes).unwrap(), codebooks);
    }
}

#[test]
fn codebooks_detect_every_single_byte_flip_and_truncation() {
    let bytes = encode_codebooks(&sample_codebooks(2, 16, 2));
    assert_every_flip_is_a_checksum_error("codebooks.bin", &bytes, |bytes| {
        decode_codebooks(bytes).map(drop)
    });
    assert_every_truncation_is_an_error("codebooks.bin", &bytes, |bytes| {
        decode_codebooks(bytes).map(drop)
    });
}

#[test]
fn codebooks_with_a_valid_checksum_are_still_structurally_checked() {
    assert_invalid(
        decode_codebooks(&encode_codebooks(&sample_codebooks(2, 17, 2))),
        "ksub",
    );
    // More floats than m * ksub * dsub.
    let mut long = sample_codebooks(2, 16, 2);
    long.centroids.push(1.0);
    assert_invalid(decode_codebooks(&encode_codebooks(&long)), "trailing");
    // Fewer.
    let mut short = sample_codebooks(2, 16, 2);
    short.centroids.pop();
    assert!(matches!(
        decode_codebooks(&encode_codebooks(&short)),
        Err(FormatError::Truncated { .. })
    ));
}

// ---------------------------------------------------------------------------------------------
// List blobs
// ---------------------------------------------------------------------------------------------

fn assert_view_matches(view: &ListView<'_>, fixture: &ListFixture) {
    assert_eq!(view.list_id, fixture.list_id);
    assert_eq!(view.count, fixture.count());
    assert_eq!(view.dim, fixture.dim);
    assert_eq!(view.m, fixture.m);
    assert_eq!(view.bits, fixture.bits);
    assert_eq!(view.rerank, fixture.rerank_kind());
    assert_eq!(view.codes(), &fixture.codes[..]);
    for row in 0..fixture.count() {
        assert_eq!(view.id(row), fixture.ids[row]);
        assert_eq!(view.content_hash(row), fixture.hashes[row]);
        assert_eq!(view.metadata_ref(row), fixture.metas[row]);
        let dim = fixture.dim;
        match &fixture.rerank {
            RerankData::None => {}
            RerankData::Fp16(values) => {
                let expected: Vec<u8> = values[row * dim..(row + 1) * dim]
                    .iter()
                    .flat_map(|value| value.to_le_bytes())
                    .collect();
                assert_eq!(view.rerank_fp16(row), &expected[..], "fp16 row {row}");
            }
            RerankData::Int8 { scales, values } => {
                let (scale, stored) = view.rerank_int8(row);
                assert_eq!(scale.to_bits(), scales[row].to_bits());
                let expected: Vec<u8> = values[row * dim..(row + 1) * dim]
                    .iter()
                    .map(|value| *value as u8)
                    .collect();
                assert_eq!(stored, &expected[..], "int8 row {row}");
            }
        }
    }
}

#[test]
fn list_blobs_round_trip_for_every_code_size_and_rerank_kind() {
    // 37 rows: a partial 4-bit block (32 + 5), and 8-bit codes that need padding to 8 bytes.
    for count in [0usize, 1, 37] {
        for bits in [8u8, 4] {
            for kind in RERANK_KINDS {
                let fixture = ListFixture::new(count, 6, 2, bits, kind);
                let bytes = fixture.encode();
                assert_eq!(&bytes[..4], LIST_MAGIC);
                let expected_len = 32
                    + 24 * count
                    + code_bytes(count, 2, bits).next_multiple_of(8)
                    + kind.bytes_per_vector(6) * count;
                assert_eq!(
                    bytes.len(),
                    expected_len,
                    "bits {bits} {kind:?} count {count}"
                );
                let view = ListView::parse(&bytes, &fixture.expectation(checksum(&bytes)))
                    .unwrap_or_else(|error| panic!("bits {bits} {kind:?} count {count}: {error}"));
                assert_view_matches(&view, &fixture);
                let verified = ListView::parse_verified(&bytes, &fixture.expectation(0)).unwrap();
                assert_view_matches(&verified, &fixture);
            }
        }
    }
}

#[test]
fn list_blobs_detect_every_single_byte_flip() {
    for bits in [8u8, 4] {
        for kind in RERANK_KINDS {
            let fixture = ListFixture::new(5, 4, 2, bits, kind);
            let bytes = fixture.encode();
            let expectation = fixture.expectation(checksum(&bytes));
            assert_every_flip_is_a_checksum_error(
                &format!("list bits {bits} {kind:?}"),
                &bytes,
                |bytes| ListView::parse(bytes, &expectation).map(drop),
            );
        }
    }
}

#[test]
fn list_blob_truncations_are_errors_even_without_the_checksum_pass() {
    for bits in [8u8, 4] {
        for kind in RERANK_KINDS {
            let fixture = ListFixture::new(5, 4, 2, bits, kind);
            let bytes = fixture.encode();
            let what = format!("list bits {bits} {kind:?}");
            let expectation = fixture.expectation(checksum(&bytes));
            assert_every_truncation_is_an_error(&what, &bytes, |bytes| {
                ListView::parse(bytes, &expectation).map(drop)
            });
            // parse_verified skips the checksum: structure alone must catch truncation.
            assert_every_truncation_is_an_error(&what, &bytes, |bytes| {
                ListView::parse_verified(bytes, &expectation).map(drop)
            });
            let mut longer = bytes.clone();
            longer.push(0);
            assert_invalid(ListView::parse_verified(&longer, &expectation), "trailing");
        }
    }
}

#[test]
fn list_header_disagreeing_with_the_expectation_is_an_error() {
    let fixture = ListFixture::new(7, 4, 2, 8, RerankKind::Fp16);
    let bytes = fixture.encode();
    let good = fixture.expectation(checksum(&bytes));
    ListView::parse(&bytes, &good).unwrap();
    let mismatches: [(&str, ListExpectation); 6] = [
        (
            "list id",
            ListExpectation {
                list_id: good.list_id + 1,
                ..good
            },
        ),
        (
            "count",
            ListExpectation {
                count: good.count - 1,
                ..good
            },
        ),
        ("dim", ListExpectation { dim: 8, ..good }),
        ("m", ListExpectation { m: 4, ..good }),
        ("bits", ListExpectation { bits: 4, ..good }),
        (
            "rerank kind",
            ListExpectation {
                rerank: RerankKind::Int8,
                ..good
            },
        ),
    ];
    for (field, expectation) in mismatches {
        match ListView::parse(&bytes, &expectation) {
            Err(FormatError::Invalid { reason, .. }) => {
                assert!(reason.contains("header"), "{field}: {reason}")
            }
            other => panic!("wrong {field} gave {other:?}"),
        }
    }
    // And a checksum that does not match is a checksum error before anything else.
    assert!(matches!(
        ListView::parse(
            &bytes,
            &ListExpectation {
                crc32: good.crc32 ^ 1,
                ..good
            }
        ),
        Err(FormatError::Checksum { .. })
    ));
}

#[test]
fn list_blob_with_foreign_magic_or_version_is_refused() {
    let fixture = ListFixture::new(3, 4, 2, 8, RerankKind::None);
    let mut bytes = fixture.encode();
    bytes[0] = b'X';
    assert!(matches!(
        ListView::parse(&bytes, &fixture.expectation(checksum(&bytes))),
        Err(FormatError::BadMagic { .. })
    ));
    let mut bytes = fixture.encode();
    bytes[4..8].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
    assert!(matches!(
        ListView::parse(&bytes, &fixture.expectation(checksum(&bytes))),
        Err(FormatError::Version { .. })
    ));
}

// ---------------------------------------------------------------------------------------------
// Crafted headers: a CRC-32 is an integrity check, not authentication, so a header with absurd
// sizes can carry a valid checksum. Decoders must answer such bytes with errors, not panics.
// ---------------------------------------------------------------------------------------------

fn routing_header(dim: u32, ngroups: u32, nlist: u32) -> Vec<u8> {
    let mut body = sample_routing().encode();
    body.truncate(32);
    body[12..16].copy_from_slice(&dim.to_le_bytes());
    body[16..20].copy_from_slice(&ngroups.to_le_bytes());
    body[20..24].copy_from_slice(&nlist.to_le_bytes());
    body
}

#[test]
fn crafted_routing_table_with_overflowing_list_counts_is_an_error() {
    // Two groups whose list counts sum past u32::MAX.
    let mut body = routing_header(1, 2, 0);
    body.extend_from_slice(&[0; 8]); // two 1-d centroids
    for (first_list, list_count) in [(0u32, u32::MAX), (u32::MAX, 1)] {
        body.extend_from_slice(&first_list.to_le_bytes());
        body.extend_from_slice(&list_count.to_le_bytes());
        body.extend_from_slice(&0u64.to_le_bytes());
        body.extend_from_slice(&0u32.to_le_bytes());
        body.extend_from_slice(&0u32.to_le_bytes());
    }
    let bytes = reseal(body);
    let outcome = std::panic::catch_unwind(|| RoutingTable::decode(&bytes).map(drop));
    assert!(
        matches!(outcome, Ok(Err(_))),
        "decode must return an error, got {:?}",
        outcome.map_err(|_| "a panic")
    );
}

#[test]
fn crafted_routing_table_with_huge_shape_is_an_error() {
    let bytes = reseal(routing_header(u32::MAX, u32::MAX, u32::MAX));
    assert!(RoutingTable::decode(&bytes).is_err());
}

#[test]
fn crafted_codebooks_with_overflowing_shape_are_an_error() {
    let mut body = encode_codebooks(&sample_codebooks(1, 256, 1));
    body.truncate(24);
    body[12..16].copy_from_slice(&u32::MAX.to_le_bytes()); // m
    body[20..24].copy_from_slice(&u32::MAX.to_le_bytes()); // dsub
    let bytes = reseal(body);
    let outcome = std::panic::catch_unwind(|| decode_codebooks(&bytes).map(drop));
    assert!(
        matches!(outcome, Ok(Err(_))),
        "decode must return an error, got {:?}",
        outcome.map_err(|_| "a panic")
    );
}

#[test]
fn crafted_list_header_with_huge_count_is_an_error() {
    // The header agrees with an (equally absurd) expectation, so only the sizes can stop it.
    let fixture = ListFixture::new(0, 4, 2, 8, RerankKind::Fp16);
    let mut bytes = fixture.encode();
    bytes[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
    let expectation = ListExpectation {
        count: u32::MAX,
        ..fixture.expectation(checksum(&bytes))
    };
    assert!(matches!(
        ListView::parse(&bytes, &expectation),
        Err(FormatError::Truncated { .. })
    ));
}

#[test]
fn a_negative_or_non_finite_group_radius_is_an_error() {
    for radius in [-1.0f32, f32::NAN, f32::INFINITY] {
        let table = clipedge_format::RoutingTable {
            dim: 2,
            nlist: 1,
            centroids: vec![1.0, 0.0],
            groups: vec![clipedge_format::GroupEntry {
                first_list: 0,
                list_count: 1,
                offset: 0,
                length: 0,
                crc32: 0,
                radius,
            }],
        };
        let decoded = clipedge_format::RoutingTable::decode(&table.encode());
        assert!(decoded.is_err(), "radius {radius} was accepted");
    }
}
