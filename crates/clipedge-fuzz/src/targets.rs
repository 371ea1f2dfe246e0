//! The check of each fuzz target. Every function takes arbitrary bytes, runs the decoder on
//! them under an allocation budget, checks what it accepted (invariants, re-encoding), then
//! reads the same bytes as a structured value (`arbitrary`) and checks that the encoder's
//! output decodes back to it. A failed property panics, which is what libFuzzer and the
//! replay test look for.

use arbitrary::Unstructured;
use clipedge_api::clip_retrieval::{
    parse_knn_request, parse_metadata_request, IndexShape, KnnRequest, MAX_METADATA_IDS,
    MAX_NUM_IMAGES, MAX_NUM_RESULT_IDS, MAX_RERANK_CANDIDATES,
};
use clipedge_api::{parse_search_request, ErrorCode, Query, SearchRequest};
use clipedge_format::{
    append_catalog_record, checksum, code_bytes, decode_codebooks, decode_record, encode_codebooks,
    record_range, validate_generation_name, BuildInfo, CatalogBuilder, CatalogEntry, CatalogRef,
    Codebooks, CurrentPointer, FileRef, GroupBlob, GroupEntry, ItemRecord, ListBlobBuilder,
    ListExpectation, ListLocation, ListView, Manifest, Metric, ModelInfo, PqParams, RerankData,
    RerankKind, RoutingTable, SearchDefaults, ShardRef,
};
use clipedge_protocol::{
    decode_request, decode_response, encode_request, encode_response, sign, verify, AuthError,
    Encoding, ProtocolError, ScanRequest, ScanResponse, MAX_REQUEST_BYTES, MAX_RESPONSE_BYTES,
};

use crate::alloc_cap::{within_budget, Budget};
use crate::{le_u64, split_fields};

const PROPORTIONAL: Budget = Budget::PROPORTIONAL;

/// A scanner frame may hold one length-prefixed string or byte buffer as large as the frame
/// limit (bincode checks the claim against it before allocating), and serde preallocates at
/// most 1 MiB of a sequence.
fn frame_budget(limit: usize) -> Budget {
    Budget {
        per_byte: 64,
        constant: limit + (64 << 10),
    }
}

/// Rows of a decoded table the checks walk: enough to cover a block boundary, bounded so a
/// large input stays fast.
const MAX_ROWS_WALKED: usize = 1024;

fn structured(data: &[u8], check: impl FnOnce(&mut Unstructured) -> arbitrary::Result<()>) {
    // Running out of bytes ends the structured check early; that is not a failure.
    let _ = check(&mut Unstructured::new(data));
}

/// `bytes` with its last four bytes replaced by the CRC-32 of the rest, so mutated tables get
/// past their trailer check and into the structure.
fn with_valid_trailer(bytes: &[u8]) -> Vec<u8> {
    let body = &bytes[..bytes.len().saturating_sub(4)];
    let mut fixed = body.to_vec();
    fixed.extend_from_slice(&checksum(body).to_le_bytes());
    fixed
}

/// u32 number `index` of `params` (missing bytes are zero).
fn param_u32(params: &[u8], index: usize) -> u32 {
    let start = (index * 4).min(params.len());
    let end = (start + 4).min(params.len());
    le_u64(&params[start..end]) as u32
}

fn slice_of(data: &[u8], range: std::ops::Range<u64>) -> Option<&[u8]> {
    let start = usize::try_from(range.start).ok()?;
    let end = usize::try_from(range.end).ok()?;
    data.get(start..end)
}

fn any_f32(u: &mut Unstructured) -> arbitrary::Result<f32> {
    Ok(f32::from_bits(u.arbitrary()?))
}

fn finite_f32(u: &mut Unstructured) -> arbitrary::Result<f32> {
    Ok(f32::from(u.arbitrary::<i16>()?) / 64.0)
}

fn f32s(u: &mut Unstructured, count: usize, finite: bool) -> arbitrary::Result<Vec<f32>> {
    (0..count)
        .map(|_| if finite { finite_f32(u) } else { any_f32(u) })
        .collect()
}

/// Mostly small values, sometimes any: enough valid structures to reach the round trip, and
/// the odd extreme one to reach the validation.
fn mostly_in(u: &mut Unstructured, range: std::ops::RangeInclusive<u32>) -> arbitrary::Result<u32> {
    if u.ratio(1, 16)? {
        return u.arbitrary();
    }
    u.int_in_range(range)
}

// ---------------------------------------------------------------------------------------------
// Index format

/// `manifest.json`: accepted manifests are valid and encode to themselves; a generated
/// manifest decodes exactly when it validates.
pub fn manifest(data: &[u8]) {
    let decoded = within_budget("manifest.json", data.len(), PROPORTIONAL, || {
        Manifest::from_json(data)
    });
    if let Ok(manifest) = decoded {
        manifest.validate().expect("a decoded manifest validates");
        let again =
            Manifest::from_json(&manifest.to_json()).expect("a decoded manifest re-encodes");
        assert_eq!(again, manifest);
        if let Some(catalog) = &manifest.catalog {
            probe_catalog_ref(catalog);
        }
    }
    structured(data, |u| {
        let manifest = arbitrary_manifest(u)?;
        let decoded = Manifest::from_json(&manifest.to_json());
        match manifest.validate() {
            Ok(()) => assert_eq!(decoded.expect("a valid manifest decodes"), manifest),
            Err(error) => assert!(decoded.is_err(), "decoded an invalid manifest ({error})"),
        }
        Ok(())
    });
}

fn file_ref(u: &mut Unstructured) -> arbitrary::Result<FileRef> {
    Ok(FileRef {
        path: u.arbitrary()?,
        bytes: u.arbitrary()?,
        crc32: u.arbitrary()?,
    })
}

fn arbitrary_manifest(u: &mut Unstructured) -> arbitrary::Result<Manifest> {
    let m = mostly_in(u, 1..=16)?;
    let dsub = mostly_in(u, 1..=8)?;
    let nlist = mostly_in(u, 1..=4096)?;
    let catalog = if u.arbitrary()? {
        Some(CatalogRef {
            path: u.arbitrary()?,
            bytes: u.arbitrary()?,
            crc32: u.arbitrary()?,
            items: u.arbitrary()?,
            block_items: mostly_in(u, 1..=256)?,
            records_offset: u.arbitrary()?,
        })
    } else {
        None
    };
    let shard_count = u.int_in_range(0..=4)?;
    let shards = (0..shard_count)
        .map(|_| {
            Ok(ShardRef {
                path: u.arbitrary()?,
                bytes: u.arbitrary()?,
                lists: u.arbitrary()?,
            })
        })
        .collect::<arbitrary::Result<Vec<_>>>()?;
    Ok(Manifest {
        format_version: if u.ratio(1, 16)? { u.arbitrary()? } else { 1 },
        generation: u.arbitrary()?,
        created_unix_ms: u.arbitrary()?,
        model: ModelInfo {
            id: u.arbitrary()?,
            fingerprint: u.arbitrary()?,
        },
        dim: if u.ratio(1, 16)? {
            u.arbitrary()?
        } else {
            m.wrapping_mul(dsub)
        },
        metric: Metric::InnerProduct,
        count: u.arbitrary()?,
        nlist,
        ngroups: mostly_in(u, 1..=nlist.max(1))?,
        pq: PqParams {
            m,
            bits: *u.choose(&[8, 4, 4, 8, 0, 5])?,
            dsub,
            by_residual: u.arbitrary()?,
        },
        rerank: *u.choose(&[RerankKind::Fp16, RerankKind::Int8, RerankKind::None])?,
        routing: file_ref(u)?,
        groups: file_ref(u)?,
        codebooks: file_ref(u)?,
        shards,
        build: BuildInfo {
            seed: u.arbitrary()?,
            train_size: u.arbitrary()?,
            kmeans_iters: u.arbitrary()?,
            builder: u.arbitrary()?,
        },
        catalog,
        search_defaults: if u.arbitrary()? {
            Some(SearchDefaults {
                nprobe: mostly_in(u, 1..=nlist.max(1))?,
                rerank: u.arbitrary()?,
                recall_at_10: u.arbitrary()?,
                queries: u.arbitrary()?,
            })
        } else {
            None
        },
    })
}

/// What a reader does with a manifest's catalog entry before any read: plan id-table ranges.
fn probe_catalog_ref(catalog: &CatalogRef) {
    let items = catalog.items;
    for id in [
        0,
        1,
        255,
        256,
        items / 2,
        items.saturating_sub(1),
        items,
        u64::MAX,
    ] {
        if let Some((range, index)) = catalog.block_range(id) {
            assert!(id < items, "id {id} of {items} has a block");
            assert!(range.start < range.end, "empty block range {range:?}");
            assert!(
                index < catalog.block_items as usize,
                "entry {index} past the block"
            );
        }
    }
}

/// `CURRENT`: accepted pointers name a safe generation and encode to themselves.
pub fn current(data: &[u8]) {
    let decoded = within_budget("CURRENT", data.len(), PROPORTIONAL, || {
        CurrentPointer::from_json(data)
    });
    if let Ok(pointer) = decoded {
        validate_generation_name(&pointer.generation).expect("a decoded generation is safe");
        let again = CurrentPointer::from_json(&pointer.to_json()).expect("a pointer re-encodes");
        assert_eq!(again, pointer);
    }
    structured(data, |u| {
        let pointer = CurrentPointer {
            format_version: if u.ratio(1, 8)? { u.arbitrary()? } else { 1 },
            generation: u.arbitrary()?,
        };
        let decoded = CurrentPointer::from_json(&pointer.to_json());
        let valid = pointer.format_version == clipedge_format::FORMAT_VERSION
            && validate_generation_name(&pointer.generation).is_ok();
        match decoded {
            Ok(decoded) => {
                assert!(valid, "decoded an invalid pointer {pointer:?}");
                assert_eq!(decoded, pointer);
            }
            Err(error) => assert!(!valid, "a valid pointer failed: {error}"),
        }
        Ok(())
    });
}

/// `routing.bin`, as stored and with its trailer CRC fixed up.
pub fn routing(data: &[u8]) {
    check_routing(data);
    check_routing(&with_valid_trailer(data));
    structured(data, |u| {
        let dim = u.int_in_range(1..=16usize)?;
        let ngroups = u.int_in_range(1..=8usize)?;
        let mut groups = Vec::with_capacity(ngroups);
        let mut next_list = 0u32;
        for _ in 0..ngroups {
            let list_count = u.int_in_range(1..=5)?;
            groups.push(GroupEntry {
                first_list: next_list,
                list_count,
                offset: u.arbitrary()?,
                length: u.arbitrary()?,
                crc32: u.arbitrary()?,
                radius: f32::from(u.arbitrary::<u16>()?) / 64.0,
            });
            next_list += list_count;
        }
        let table = RoutingTable {
            dim,
            nlist: next_list,
            centroids: f32s(u, ngroups * dim, false)?,
            groups,
        };
        let bytes = table.encode();
        let decoded = RoutingTable::decode(&bytes).expect("an encoded routing table decodes");
        // Compared as bytes: the centroids may hold NaNs.
        assert_eq!(decoded.encode(), bytes);
        Ok(())
    });
}

fn check_routing(bytes: &[u8]) {
    let decoded = within_budget("routing.bin", bytes.len(), PROPORTIONAL, || {
        RoutingTable::decode(bytes)
    });
    let Ok(table) = decoded else {
        return;
    };
    assert_eq!(table.centroids.len(), table.ngroups() * table.dim);
    for group in 0..table.ngroups().min(MAX_ROWS_WALKED) {
        assert_eq!(table.centroid(group).len(), table.dim);
    }
    let nlist = table.nlist;
    for list in [0, 1, nlist / 2, nlist.saturating_sub(1), nlist, u32::MAX] {
        match table.group_of_list(list) {
            Some(group) => {
                let entry = table.groups[group];
                assert!(entry.first_list <= list && list - entry.first_list < entry.list_count);
            }
            None => assert!(list >= nlist, "list {list} of {nlist} has no group"),
        }
    }
    let encoded = table.encode();
    let again = RoutingTable::decode(&encoded).expect("a decoded routing table re-encodes");
    assert_eq!(again.encode(), encoded);
}

/// `codebooks.bin`, as stored and with its trailer CRC fixed up.
pub fn codebooks(data: &[u8]) {
    check_codebooks(data);
    check_codebooks(&with_valid_trailer(data));
    structured(data, |u| {
        let m = u.int_in_range(1..=4usize)?;
        let ksub = *u.choose(&[16usize, 256])?;
        let dsub = u.int_in_range(1..=4usize)?;
        let codebooks = Codebooks {
            m,
            ksub,
            dsub,
            centroids: f32s(u, m * ksub * dsub, false)?,
        };
        let bytes = encode_codebooks(&codebooks);
        let decoded = decode_codebooks(&bytes).expect("encoded codebooks decode");
        assert_eq!(encode_codebooks(&decoded), bytes);
        Ok(())
    });
}

fn check_codebooks(bytes: &[u8]) {
    let decoded = within_budget("codebooks.bin", bytes.len(), PROPORTIONAL, || {
        decode_codebooks(bytes)
    });
    if let Ok(codebooks) = decoded {
        assert_eq!(
            codebooks.centroids.len(),
            codebooks.m * codebooks.ksub * codebooks.dsub
        );
        // The layout has no padding or reserved bytes: what decodes is exactly what encodes.
        assert_eq!(encode_codebooks(&codebooks), bytes);
    }
}

/// A group blob. Input: the parameters the routing table gives (first list, list count and
/// dimension, u32 each) as the first field, then the blob.
pub fn group_blob(data: &[u8]) {
    let fields = split_fields(data, 2);
    let (params, blob) = (fields[0], fields[1]);
    let first_list = param_u32(params, 0);
    let list_count = param_u32(params, 1) as usize;
    let dim = param_u32(params, 2) as usize;
    let decoded = within_budget("group blob", blob.len(), PROPORTIONAL, || {
        GroupBlob::decode(blob, first_list, list_count, dim, checksum(blob))
    });
    if let Ok(group) = decoded {
        assert_eq!(group.lists.len(), list_count);
        assert_eq!(group.centroids.len(), list_count * dim);
        for local in 0..list_count.min(MAX_ROWS_WALKED) {
            assert_eq!(group.centroid(local).len(), dim);
        }
        assert_eq!(
            group.encode(),
            blob,
            "a group blob has no bytes the decoder skips"
        );
    }
    let wrong_checksum = GroupBlob::decode(blob, first_list, list_count, dim, !checksum(blob));
    assert!(wrong_checksum.is_err(), "a wrong checksum was accepted");
    structured(data, |u| {
        let dim = u.int_in_range(1..=16usize)?;
        let count = u.int_in_range(1..=8usize)?;
        let lists = (0..count)
            .map(|_| {
                Ok(ListLocation {
                    shard: u.arbitrary()?,
                    count: u.arbitrary()?,
                    offset: u.arbitrary()?,
                    length: u.arbitrary()?,
                    crc32: u.arbitrary()?,
                })
            })
            .collect::<arbitrary::Result<Vec<_>>>()?;
        let group = GroupBlob {
            first_list: u.arbitrary()?,
            dim,
            centroids: f32s(u, count * dim, false)?,
            lists,
        };
        let bytes = group.encode();
        let decoded = GroupBlob::decode(&bytes, group.first_list, count, dim, checksum(&bytes))
            .expect("an encoded group blob decodes");
        assert_eq!(decoded.lists, group.lists);
        assert_eq!(decoded.encode(), bytes);
        Ok(())
    });
}

/// What a reader would expect of `bytes` if the manifest and group blob agreed with its
/// header: lets mutated headers (huge counts and dimensions) reach the length arithmetic.
fn expectation_from_header(bytes: &[u8]) -> ListExpectation {
    let header = bytes.get(..32).unwrap_or(bytes);
    let byte = |at: usize| header.get(at).copied().unwrap_or(0);
    ListExpectation {
        list_id: param_u32(header, 2),
        count: param_u32(header, 3),
        crc32: checksum(bytes),
        dim: param_u32(header, 4) as usize,
        m: param_u32(header, 5) as usize,
        bits: byte(24),
        rerank: match byte(25) % 3 {
            0 => RerankKind::None,
            1 => RerankKind::Fp16,
            _ => RerankKind::Int8,
        },
    }
}

fn rerank_data(view: &ListView) -> RerankData {
    match view.rerank {
        RerankKind::None => RerankData::None,
        RerankKind::Fp16 => RerankData::Fp16(
            (0..view.count)
                .flat_map(|row| view.rerank_fp16(row).chunks_exact(2))
                .map(|pair| u16::from_le_bytes([pair[0], pair[1]]))
                .collect(),
        ),
        RerankKind::Int8 => RerankData::Int8 {
            scales: (0..view.count).map(|row| view.rerank_int8(row).0).collect(),
            values: (0..view.count)
                .flat_map(|row| view.rerank_int8(row).1.iter().map(|value| *value as i8))
                .collect(),
        },
    }
}

fn encode_view(view: &ListView) -> Vec<u8> {
    let ids: Vec<u64> = (0..view.count).map(|row| view.id(row)).collect();
    let hashes: Vec<u64> = (0..view.count).map(|row| view.content_hash(row)).collect();
    let refs: Vec<u64> = (0..view.count).map(|row| view.metadata_ref(row)).collect();
    let records: Vec<&[u8]> = (0..view.count).filter_map(|row| view.record(row)).collect();
    ListBlobBuilder {
        list_id: view.list_id,
        dim: view.dim,
        m: view.m,
        bits: view.bits,
        ids: &ids,
        content_hashes: &hashes,
        metadata_refs: &refs,
        codes: view.codes(),
        rerank: &rerank_data(view),
        records: view.has_records().then_some(&records[..]),
    }
    .encode()
}

/// A list blob, checked against the expectation its own header implies.
pub fn list_blob(data: &[u8]) {
    let expected = expectation_from_header(data);
    let parsed = within_budget("list blob", data.len(), PROPORTIONAL, || {
        ListView::parse(data, &expected)
    });
    let verified = ListView::parse_verified(data, &expected);
    assert_eq!(
        parsed.is_ok(),
        verified.is_ok(),
        "parse and parse_verified disagree"
    );
    if let Ok(view) = parsed {
        assert_eq!(view.count, expected.count as usize);
        assert_eq!(
            view.codes().len(),
            code_bytes(view.count, view.m, view.bits)
        );
        for row in 0..view.count.min(MAX_ROWS_WALKED) {
            let _ = (view.id(row), view.content_hash(row), view.metadata_ref(row));
            match view.rerank {
                RerankKind::Fp16 => assert_eq!(view.rerank_fp16(row).len(), 2 * view.dim),
                RerankKind::Int8 => assert_eq!(view.rerank_int8(row).1.len(), view.dim),
                RerankKind::None => {}
            }
            assert_eq!(view.record(row).is_some(), view.has_records());
        }
        if view.count > 0 {
            let stored = view.stored_vector(view.id(0));
            assert_eq!(stored.is_some(), view.rerank != RerankKind::None);
            assert!(stored.is_none_or(|vector| vector.len() == view.dim));
        }
        if view.count <= MAX_ROWS_WALKED {
            // Reserved and padding bytes are not kept, so compare a second encoding.
            let encoded = encode_view(&view);
            let expected = ListExpectation {
                crc32: checksum(&encoded),
                ..expected
            };
            let again = ListView::parse(&encoded, &expected).expect("a parsed list re-encodes");
            assert_eq!(encode_view(&again), encoded);
        }
    }
    structured(data, |u| {
        let bits = *u.choose(&[8u8, 4])?;
        let m = 2 * u.int_in_range(1..=3usize)?;
        let dim = m * u.int_in_range(1..=3usize)?;
        let count = u.int_in_range(0..=70usize)?;
        let column = |u: &mut Unstructured| -> arbitrary::Result<Vec<u64>> {
            (0..count).map(|_| u.arbitrary()).collect()
        };
        let ids = column(u)?;
        let hashes = column(u)?;
        let refs = column(u)?;
        let codes: Vec<u8> = (0..code_bytes(count, m, bits))
            .map(|_| u.arbitrary())
            .collect::<arbitrary::Result<_>>()?;
        let rerank = match u.int_in_range(0..=2)? {
            0 => RerankData::None,
            1 => RerankData::Fp16(
                (0..count * dim)
                    .map(|_| u.arbitrary())
                    .collect::<arbitrary::Result<_>>()?,
            ),
            _ => RerankData::Int8 {
                scales: f32s(u, count, true)?,
                values: (0..count * dim)
                    .map(|_| u.arbitrary())
                    .collect::<arbitrary::Result<_>>()?,
            },
        };
        let list_id = u.arbitrary()?;
        let record_bytes: Vec<Vec<u8>> = if u.arbitrary()? {
            (0..count)
                .map(|_| u.arbitrary())
                .collect::<arbitrary::Result<_>>()?
        } else {
            Vec::new()
        };
        let records: Vec<&[u8]> = record_bytes.iter().map(Vec::as_slice).collect();
        let builder = ListBlobBuilder {
            list_id,
            dim,
            m,
            bits,
            ids: &ids,
            content_hashes: &hashes,
            metadata_refs: &refs,
            codes: &codes,
            rerank: &rerank,
            records: (!record_bytes.is_empty()).then_some(&records[..]),
        };
        let bytes = builder.encode();
        let expected = ListExpectation {
            list_id,
            count: count as u32,
            crc32: checksum(&bytes),
            dim,
            m,
            bits,
            rerank: match rerank {
                RerankData::None => RerankKind::None,
                RerankData::Fp16(_) => RerankKind::Fp16,
                RerankData::Int8 { .. } => RerankKind::Int8,
            },
        };
        let view = ListView::parse(&bytes, &expected).expect("an encoded list parses");
        assert_eq!((0..count).map(|row| view.id(row)).collect::<Vec<_>>(), ids);
        assert_eq!(view.codes(), &codes[..]);
        assert_eq!(rerank_data(&view), rerank);
        if !record_bytes.is_empty() {
            for (row, record) in record_bytes.iter().enumerate() {
                assert_eq!(view.record(row), Some(&record[..]));
            }
        }
        assert_eq!(encode_view(&view), bytes);
        Ok(())
    });
}

/// `catalog.bin` read the way the edge reads it: header, then for a few ids the id-table
/// block and the record the entry points at, each a range of the input.
pub fn catalog(data: &[u8]) {
    let header = data.get(..32).unwrap_or(data);
    let catalog = CatalogRef {
        path: "catalog.bin".to_string(),
        bytes: data.len() as u64,
        crc32: checksum(data),
        items: le_u64(header.get(16..24).unwrap_or_default()),
        block_items: param_u32(header, 3),
        records_offset: le_u64(header.get(24..32).unwrap_or_default()),
    };
    let header_ok = within_budget("catalog header", header.len(), PROPORTIONAL, || {
        catalog.verify_header(header)
    });
    let intact_header = header.len() == 32
        && header.starts_with(clipedge_format::CATALOG_MAGIC)
        && param_u32(header, 2) == clipedge_format::FORMAT_VERSION;
    assert_eq!(header_ok.is_ok(), intact_header, "{header_ok:?}");
    probe_catalog_ref(&catalog);
    let items = catalog.items;
    for id in [0, 1, 2, 255, 256, 257, items / 2, items.saturating_sub(1)] {
        let Some((range, index)) = catalog.block_range(id) else {
            continue;
        };
        let Some(block) = slice_of(data, range) else {
            continue;
        };
        let entry = within_budget("catalog id table", block.len(), PROPORTIONAL, || {
            catalog.decode_entry(block, index)
        });
        if let Ok(entry) = entry {
            check_record_at(data, entry);
        }
    }
    // Bytes that are not a catalog at all, read as a block and as a record.
    let index = param_u32(data, 0) as usize;
    let _ = within_budget("catalog id table", data.len(), PROPORTIONAL, || {
        catalog.decode_entry(data, index)
    });
    check_record(data);
    structured(data, |u| {
        let count = u.int_in_range(0..=300usize)?;
        let records = (0..count)
            .map(|_| {
                let mut extra = serde_json::Map::new();
                if u.ratio(1, 4)? {
                    extra.insert(
                        u.arbitrary()?,
                        serde_json::Value::from(u.arbitrary::<i64>()?),
                    );
                }
                extra.remove("caption");
                extra.remove("url");
                Ok(ItemRecord {
                    caption: u.arbitrary()?,
                    url: u.arbitrary()?,
                    extra,
                })
            })
            .collect::<arbitrary::Result<Vec<_>>>()?;
        let lists: Vec<u32> = (0..count)
            .map(|_| u.arbitrary())
            .collect::<arbitrary::Result<_>>()?;
        let builder = CatalogBuilder::new(&records).expect("records serialize");
        let (bytes, catalog) = builder
            .finish(&lists, "catalog.bin")
            .expect("a catalog lays out");
        catalog
            .verify_header(&bytes[..32])
            .expect("a built header verifies");
        for id in 0..count {
            let (range, index) = catalog
                .block_range(id as u64)
                .expect("every id has a block");
            let block = slice_of(&bytes, range).expect("a block lies in the catalog");
            let entry = catalog
                .decode_entry(block, index)
                .expect("a built entry decodes");
            assert_eq!(entry.list_id, lists[id]);
            let record = slice_of(&bytes, record_range(entry.metadata_ref))
                .expect("a record lies in the catalog");
            assert_eq!(
                decode_record(record).expect("a built record decodes"),
                records[id]
            );
        }
        Ok(())
    });
}

fn check_record_at(data: &[u8], entry: CatalogEntry) {
    if let Some(record) = slice_of(data, record_range(entry.metadata_ref)) {
        check_record(record);
    }
}

/// A stored record: what decodes stores again as a record that decodes to the same fields.
fn check_record(bytes: &[u8]) {
    let decoded = within_budget("catalog record", bytes.len(), PROPORTIONAL, || {
        decode_record(bytes)
    });
    let Ok(record) = decoded else {
        return;
    };
    let json = serde_json::to_vec(&record).expect("a record serializes");
    let mut stored = Vec::new();
    append_catalog_record(&json, 0, &mut stored, 0).expect("a decoded record fits a reference");
    let again = decode_record(&stored).expect("a stored record decodes");
    assert_eq!((&again.caption, &again.url), (&record.caption, &record.url));
    assert!(again.extra.keys().eq(record.extra.keys()));
}

// ---------------------------------------------------------------------------------------------
// Scanner protocol

/// A scanner request frame, read as binary and as JSON: accepted requests are valid and
/// round-trip through both encodings.
pub fn scan_request(data: &[u8]) {
    for encoding in [Encoding::Binary, Encoding::Json] {
        let budget = frame_budget(MAX_REQUEST_BYTES);
        let decoded = within_budget("scan request", data.len(), budget, || {
            decode_request(data, encoding)
        });
        if let Ok(request) = decoded {
            request.validate().expect("a decoded request validates");
            check_request_round_trip(&request);
        }
    }
    structured(data, |u| {
        let request = arbitrary_request(u)?;
        match request.validate() {
            Ok(()) => check_request_round_trip(&request),
            Err(_) => {
                for encoding in [Encoding::Binary, Encoding::Json] {
                    assert!(encode_request(&request, encoding).is_err());
                }
            }
        }
        Ok(())
    });
}

fn check_request_round_trip(request: &ScanRequest) {
    for encoding in [Encoding::Binary, Encoding::Json] {
        let bytes = match encode_request(request, encoding) {
            Ok(bytes) => bytes,
            // JSON of a frame near the limit may not fit (escaped strings grow).
            Err(ProtocolError::TooLarge { .. }) => continue,
            Err(error) => panic!("a valid request does not encode: {error}"),
        };
        let decoded = decode_request(&bytes, encoding).expect("an encoded request decodes");
        assert_eq!(&decoded, request, "{encoding:?}");
    }
}

fn arbitrary_request(u: &mut Unstructured) -> arbitrary::Result<ScanRequest> {
    let dim = mostly_in(u, 1..=16)?.min(5000) as usize;
    let targets = u.int_in_range(0..=6usize)?;
    let ids: Vec<u32> = (0..targets)
        .map(|_| u.arbitrary())
        .collect::<arbitrary::Result<_>>()?;
    Ok(ScanRequest {
        request_id: u.arbitrary()?,
        index: u.arbitrary()?,
        generation: u.arbitrary()?,
        query: {
            let finite = !u.ratio(1, 8)?;
            f32s(u, dim, finite)?
        },
        targets: if u.arbitrary()? {
            clipedge_protocol::ScanTargets::Groups {
                group_ids: ids,
                nprobe: mostly_in(u, 1..=64)?,
            }
        } else {
            clipedge_protocol::ScanTargets::Lists { list_ids: ids }
        },
        k: mostly_in(u, 1..=1000)?,
        rerank: mostly_in(u, 0..=50)?,
        deadline_ms: mostly_in(u, 1..=10_000)?,
    })
}

/// A scanner response frame, read as binary and as JSON.
pub fn scan_response(data: &[u8]) {
    for encoding in [Encoding::Binary, Encoding::Json] {
        let budget = frame_budget(MAX_RESPONSE_BYTES);
        let decoded = within_budget("scan response", data.len(), budget, || {
            decode_response(data, encoding)
        });
        if let Ok(response) = decoded {
            let _ = (
                response.is_complete(),
                response.failed_lists(),
                response.failed_groups(),
            );
            check_response_round_trip(&response);
        }
    }
    structured(data, |u| {
        let status = |u: &mut Unstructured| {
            u.choose(&[
                clipedge_protocol::ScanStatus::Ok,
                clipedge_protocol::ScanStatus::Missing,
                clipedge_protocol::ScanStatus::Corrupt,
                clipedge_protocol::ScanStatus::TimedOut,
                clipedge_protocol::ScanStatus::Unavailable,
            ])
            .copied()
        };
        let groups = (0..u.int_in_range(0..=4)?)
            .map(|_| {
                Ok(clipedge_protocol::GroupResult {
                    group_id: u.arbitrary()?,
                    status: status(u)?,
                    detail: u.arbitrary()?,
                })
            })
            .collect::<arbitrary::Result<_>>()?;
        let lists = (0..u.int_in_range(0..=6)?)
            .map(|_| {
                Ok(clipedge_protocol::ListResult {
                    list_id: u.arbitrary()?,
                    status: status(u)?,
                    cached: u.arbitrary()?,
                    detail: u.arbitrary()?,
                })
            })
            .collect::<arbitrary::Result<_>>()?;
        let candidates = (0..u.int_in_range(0..=20)?)
            .map(|_| {
                Ok(clipedge_format::Hit {
                    id: u.arbitrary()?,
                    score: any_f32(u)?,
                    content_hash: u.arbitrary()?,
                    metadata_ref: u.arbitrary()?,
                    list_id: u.arbitrary()?,
                })
            })
            .collect::<arbitrary::Result<_>>()?;
        let response = ScanResponse {
            request_id: u.arbitrary()?,
            generation: u.arbitrary()?,
            groups,
            lists,
            candidates,
            records: u.arbitrary()?,
            stats: clipedge_protocol::ScanStats {
                gets: u.arbitrary()?,
                bytes_read: u.arbitrary()?,
                list_cache_hits: u.arbitrary()?,
                lists_scanned: u.arbitrary()?,
                codes_scanned: u.arbitrary()?,
                generation_cached: u.arbitrary()?,
                fetch_ms: any_f32(u)?,
                scan_ms: any_f32(u)?,
                rerank_ms: any_f32(u)?,
                total_ms: any_f32(u)?,
            },
        };
        check_response_round_trip(&response);
        Ok(())
    });
}

fn response_is_finite(response: &ScanResponse) -> bool {
    let stats = response.stats;
    response.candidates.iter().all(|hit| hit.score.is_finite())
        && [
            stats.fetch_ms,
            stats.scan_ms,
            stats.rerank_ms,
            stats.total_ms,
        ]
        .iter()
        .all(|value| value.is_finite())
}

/// Compared through a second encoding: scores may be NaN. JSON has no NaN or infinity
/// (serde_json writes `null`, which the decoder refuses), so JSON is checked for finite ones.
fn check_response_round_trip(response: &ScanResponse) {
    for encoding in [Encoding::Binary, Encoding::Json] {
        if encoding == Encoding::Json && !response_is_finite(response) {
            continue;
        }
        let bytes = match encode_response(response, encoding) {
            Ok(bytes) => bytes,
            Err(ProtocolError::TooLarge { .. }) => continue,
            Err(error) => panic!("a response does not encode: {error}"),
        };
        let decoded = decode_response(&bytes, encoding).expect("an encoded response decodes");
        let again = encode_response(&decoded, encoding).expect("a decoded response re-encodes");
        assert_eq!(again, bytes, "{encoding:?}");
    }
}

/// Request signing. Input fields: secret, timestamp header, signature header, the verifier's
/// clock (now and max skew, u64 each), body.
pub fn signing(data: &[u8]) {
    let fields = split_fields(data, 5);
    let (secret, body) = (fields[0], fields[4]);
    // A header value that is not UTF-8 reaches the scanner as a missing header.
    let timestamp = std::str::from_utf8(fields[1]).ok();
    let signature = std::str::from_utf8(fields[2]).ok();
    let now_ms = le_u64(fields[3].get(..8).unwrap_or(fields[3]));
    let max_skew_ms = le_u64(fields[3].get(8..16).unwrap_or_default());
    let verified = within_budget("request signature", data.len(), PROPORTIONAL, || {
        verify(secret, timestamp, signature, body, now_ms, max_skew_ms)
    });
    if verified.is_ok() {
        let timestamp = timestamp.expect("verified with a timestamp").trim();
        let timestamp_ms: u64 = timestamp.parse().expect("a verified timestamp parses");
        assert!(now_ms.abs_diff(timestamp_ms) <= max_skew_ms);
        if timestamp_ms.to_string() == timestamp {
            let expected = sign(secret, timestamp_ms, body).signature;
            let given = signature.expect("verified with a signature").trim();
            assert!(
                given.eq_ignore_ascii_case(&expected),
                "{given} != {expected}"
            );
        }
    }
    // Whatever the secret, body and clock: a fresh signature verifies, any change breaks it.
    let headers = sign(secret, now_ms, body);
    let check = |body: &[u8], signature: &str| {
        verify(
            secret,
            Some(&headers.timestamp),
            Some(signature),
            body,
            now_ms,
            0,
        )
    };
    assert_eq!(check(body, &headers.signature), Ok(()));
    let mut longer = body.to_vec();
    longer.push(0);
    assert_eq!(
        check(&longer, &headers.signature),
        Err(AuthError::BadSignature)
    );
    let mut flipped = headers.signature.clone();
    let last = if flipped.ends_with('0') { "1" } else { "0" };
    flipped.replace_range(flipped.len() - 1.., last);
    assert_eq!(check(body, &flipped), Err(AuthError::BadSignature));
}

// ---------------------------------------------------------------------------------------------
// API bodies

/// `POST /v1/search`. Input fields: the index dimension (u16), the body.
pub fn v1_search(data: &[u8]) {
    let fields = split_fields(data, 2);
    let dim = le_u64(fields[0].get(..2).unwrap_or(fields[0])) as usize;
    let body = fields[1];
    let parsed = within_budget("/v1 search body", body.len(), PROPORTIONAL, || {
        parse_search_request(body)
    });
    match parsed {
        Ok(request) => check_search_request(request, dim),
        Err(error) => assert!(
            matches!(
                error.code,
                ErrorCode::InvalidJson | ErrorCode::PayloadTooLarge
            ),
            "{error}"
        ),
    }
    structured(data, |u| {
        let request = SearchRequest {
            text: u.arbitrary()?,
            vector: if u.arbitrary()? {
                let len = u.int_in_range(0..=8)?;
                Some(f32s(u, len, true)?)
            } else {
                None
            },
            id: u.arbitrary()?,
            k: u.arbitrary()?,
            nprobe: u.arbitrary()?,
            rerank: u.arbitrary()?,
            dedup: u.arbitrary::<Option<bool>>()?.map(serde_json::Value::Bool),
            offset: u.arbitrary()?,
            generation: None,
            safety: u.arbitrary()?,
            multilingual: u.arbitrary()?,
            index: None,
        };
        let body = serde_json::to_vec(&request).expect("a request serializes");
        if body.len() <= clipedge_api::MAX_BODY_BYTES {
            let parsed = parse_search_request(&body).expect("a serialized request parses");
            assert_eq!(parsed, request);
            check_search_request(parsed, dim);
        }
        Ok(())
    });
}

fn check_search_request(request: SearchRequest, dim: usize) {
    let finite = request
        .vector
        .as_ref()
        .is_none_or(|vector| vector.iter().all(|value| value.is_finite()));
    if finite {
        let body = serde_json::to_vec(&request).expect("a request serializes");
        let again = parse_search_request(&body).expect("a parsed request re-parses");
        assert_eq!(again, request);
    }
    let search = match request.validate(dim) {
        Ok(search) => search,
        Err(error) => {
            assert!((400..500).contains(&error.status()), "{error}");
            return;
        }
    };
    assert!((1..=clipedge_api::MAX_K).contains(&search.k));
    assert!((1..=clipedge_api::MAX_NPROBE).contains(&search.nprobe));
    assert!(search.rerank <= clipedge_api::MAX_RERANK);
    assert!(search.end() <= clipedge_api::MAX_K);
    assert!(search.candidates() >= search.k && search.records == search.k);
    assert!(search.candidates() * search.rerank.max(1) <= MAX_RERANK_CANDIDATES);
    match &search.query {
        Query::Text(text) | Query::MultilingualText(text) => {
            assert!(!text.trim().is_empty());
            assert!(text.chars().count() <= clipedge_api::MAX_TEXT_CHARS);
        }
        Query::Vector(vector) => {
            assert_eq!(vector.len(), dim);
            assert!(vector.iter().all(|value| value.is_finite()));
        }
        Query::Id(_) => {}
    }
}

const KNOWN_INDEXES: [&str; 2] = ["laion", "default"];

/// `POST /knn-service` and `POST /metadata`. Input fields: the index shape (dimension u16,
/// count u64, lists u32, measured default nprobe u16; a shorter shape has the fixed one), the body
/// (read as both requests).
pub fn knn_service(data: &[u8]) {
    let fields = split_fields(data, 2);
    let shape = fields[0];
    let index = IndexShape {
        dim: le_u64(shape.get(..2).unwrap_or(shape)) as usize,
        count: le_u64(shape.get(2..10).unwrap_or_default()),
        nlist: le_u64(shape.get(10..14).unwrap_or_default()) as u32,
        // A manifest's measured default, as `IndexShape::of` clamps it.
        default_nprobe: shape
            .get(14..16)
            .map_or(clipedge_api::DEFAULT_NPROBE, |bytes| {
                (le_u64(bytes) as usize).clamp(1, clipedge_api::MAX_NPROBE)
            }),
    };
    let body = fields[1];
    let known: Vec<String> = KNOWN_INDEXES.iter().map(|name| name.to_string()).collect();
    let parsed = within_budget("knn body", body.len(), PROPORTIONAL, || {
        parse_knn_request(body)
    });
    if let Ok(request) = parsed {
        check_knn_request(request, index, &known);
    }
    let metadata = within_budget("metadata body", body.len(), PROPORTIONAL, || {
        parse_metadata_request(body)
    });
    if let Ok(request) = metadata {
        match request.validate(&known) {
            Ok(ids) => assert!(ids.len() <= MAX_METADATA_IDS),
            Err(error) => assert!((400..500).contains(&error.status()), "{error}"),
        }
    }
    for candidates in [1, 20, MAX_NUM_RESULT_IDS * 2, usize::MAX / 2] {
        let nprobe = index.nprobe_for(candidates);
        assert!((index.default_nprobe..=clipedge_api::MAX_NPROBE).contains(&nprobe));
    }
    structured(data, |u| {
        let number = |u: &mut Unstructured| -> arbitrary::Result<Option<serde_json::Value>> {
            Ok(match u.int_in_range(0..=3)? {
                0 => None,
                1 => Some(serde_json::Value::String(String::new())),
                2 => Some(serde_json::Value::from(u.int_in_range(0..=12)?)),
                _ => Some(serde_json::Value::String(u.arbitrary()?)),
            })
        };
        let request = KnnRequest {
            text: u.arbitrary()?,
            image: if u.ratio(1, 8)? { u.arbitrary()? } else { None },
            image_url: None,
            embedding_input: if u.arbitrary()? {
                let len = u.int_in_range(0..=8)?;
                Some(f32s(u, len, true)?)
            } else {
                None
            },
            modality: (*u.choose(&[None, Some("text"), Some("image"), Some("audio")])?)
                .map(str::to_string),
            num_images: u.arbitrary()?,
            num_result_ids: u.arbitrary()?,
            indice_name: (*u.choose(&[None, Some("laion"), Some("other")])?).map(str::to_string),
            use_mclip: u.arbitrary()?,
            deduplicate: u.arbitrary()?,
            use_safety_model: u.arbitrary()?,
            use_violence_detector: u.arbitrary()?,
            aesthetic_score: number(u)?,
            aesthetic_weight: number(u)?,
        };
        let body = serde_json::to_vec(&request).expect("a knn request serializes");
        if body.len() <= clipedge_api::MAX_BODY_BYTES {
            let parsed = parse_knn_request(&body).expect("a serialized knn request parses");
            assert_eq!(parsed, request);
            check_knn_request(parsed, index, &known);
        }
        Ok(())
    });
}

fn check_knn_request(request: KnnRequest, index: IndexShape, known: &[String]) {
    let knn = match request.validate(index, known) {
        Ok(knn) => knn,
        Err(error) => {
            assert!((400..500).contains(&error.status()), "{error}");
            return;
        }
    };
    let search = &knn.search;
    assert!(known.contains(&knn.index_name));
    assert!((1..=MAX_NUM_RESULT_IDS).contains(&search.k));
    assert!(search.records >= 1 && search.records <= search.k.min(MAX_NUM_IMAGES));
    assert!(search.rerank >= 1);
    assert!(search.candidates() * search.rerank <= MAX_RERANK_CANDIDATES);
    if let Query::Vector(vector) = &search.query {
        assert_eq!(vector.len(), index.dim);
    }
}
