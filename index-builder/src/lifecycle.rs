//! Generations after they are written: listing them, deleting old ones ([`gc`]) and moving
//! `CURRENT` back to an earlier one ([`rollback`]).
//!
//! A generation is the objects under `generations/<name>/`; it is *complete* once its
//! `manifest.json` exists (the builder writes the manifest last). Readers pin the generation
//! `CURRENT` names for the length of a request, so garbage collection never touches that one
//! and never one written within a grace period.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use bytes::Bytes;
use clipedge_format::{
    generation_path, validate_generation_name, CurrentPointer, FormatError, Manifest,
    CURRENT_OBJECT, FORMAT_VERSION,
};
use clipedge_storage::{Storage, StorageError, Versioned};
use futures::stream::{self, StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tracing::{info, warn};

/// Where generations live under the index root.
const GENERATIONS_PREFIX: &str = "generations";
const MANIFEST_FILE: &str = "manifest.json";

#[derive(Debug, Error)]
pub enum LifecycleError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("corrupt CURRENT pointer: {0}")]
    Pointer(FormatError),
    #[error("no CURRENT pointer at {location}: nothing is published")]
    NotPublished { location: String },
    #[error("invalid generation name {generation:?}: {source}")]
    InvalidName {
        generation: String,
        source: FormatError,
    },
    #[error("generation {generation} does not exist")]
    UnknownGeneration { generation: String },
    #[error("generation {generation} is unfinished: it has no manifest.json")]
    Unfinished { generation: String },
    #[error(
        "generation {generation} has format version {found}, this release serves version {supported}"
    )]
    FormatVersion {
        generation: String,
        found: u32,
        supported: u32,
    },
    #[error("generation {generation} has an unreadable manifest: {source}")]
    Manifest {
        generation: String,
        source: FormatError,
    },
    #[error("generation {generation} is already the one CURRENT names")]
    AlreadyCurrent { generation: String },
    #[error("no complete generation older than {current} to roll back to")]
    NothingToRollBackTo { current: String },
}

/// One generation found under `generations/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GenerationInfo {
    pub name: String,
    /// The manifest's `created_unix_ms`, else the 13-digit unix-ms prefix of the name the
    /// builder gives generations; `None` for a name that carries no time and no manifest.
    pub created_unix_ms: Option<u64>,
    /// The newest write to any of its objects: an unfinished build still writing is recent
    /// here even when it started long ago.
    pub last_modified_unix_ms: Option<u64>,
    /// It has a `manifest.json`.
    pub complete: bool,
    /// The manifest's `format_version`, when the manifest exists and says.
    pub format_version: Option<u32>,
    /// Object names relative to the index root, sorted.
    pub objects: Vec<String>,
    pub bytes: u64,
}

impl GenerationInfo {
    /// The time after which it is safe to call the generation old: its newest known write.
    fn last_activity_unix_ms(&self) -> Option<u64> {
        match (self.created_unix_ms, self.last_modified_unix_ms) {
            (Some(created), Some(modified)) => Some(created.max(modified)),
            (created, modified) => created.or(modified),
        }
    }

    /// Newest first: by creation time, then by name (which sorts by creation time too).
    fn recency_key(&self) -> (u64, &str) {
        (self.created_unix_ms.unwrap_or(0), self.name.as_str())
    }
}

/// The fields of `manifest.json` listing needs, read without validating the rest, so a
/// generation of another format version is still listed (and refused by name later).
#[derive(Debug, Deserialize)]
struct ManifestHead {
    format_version: u32,
    created_unix_ms: u64,
}

/// The 13-digit unix-ms prefix of a builder-made generation name (`<unix-ms>-<nonce>`).
fn created_from_name(name: &str) -> Option<u64> {
    let (timestamp, _nonce) = name.split_once('-')?;
    if timestamp.len() != 13 || !timestamp.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    timestamp.parse().ok()
}

/// Every generation under `generations/`, oldest first (by creation time, then name).
/// Reads each complete generation's manifest (one GET each).
pub async fn list_generations(storage: &Storage) -> Result<Vec<GenerationInfo>, LifecycleError> {
    let listed = storage.list_objects(GENERATIONS_PREFIX).await?;
    let mut generations: BTreeMap<String, GenerationInfo> = BTreeMap::new();
    for object in listed {
        let mut segments = object.name.splitn(3, '/');
        let (Some(_prefix), Some(name), Some(file)) =
            (segments.next(), segments.next(), segments.next())
        else {
            // Something directly under `generations/` is no generation's object.
            continue;
        };
        let info = generations
            .entry(name.to_string())
            .or_insert_with(|| GenerationInfo {
                name: name.to_string(),
                created_unix_ms: created_from_name(name),
                last_modified_unix_ms: None,
                complete: false,
                format_version: None,
                objects: Vec::new(),
                bytes: 0,
            });
        info.complete |= file == MANIFEST_FILE;
        info.bytes += object.bytes;
        info.last_modified_unix_ms = info.last_modified_unix_ms.max(object.last_modified_unix_ms);
        info.objects.push(object.name);
    }
    let mut generations: Vec<GenerationInfo> = generations.into_values().collect();
    for info in &mut generations {
        if !info.complete {
            continue;
        }
        let manifest_name = generation_path(&info.name, MANIFEST_FILE);
        let Some(manifest) = storage.get_if_exists(&manifest_name).await? else {
            // Deleted since the listing (a concurrent gc): it reads as unfinished now.
            info.complete = false;
            continue;
        };
        match serde_json::from_slice::<ManifestHead>(&manifest.bytes) {
            Ok(head) => {
                info.format_version = Some(head.format_version);
                info.created_unix_ms = Some(head.created_unix_ms);
            }
            Err(error) => {
                warn!(generation = %info.name, %error, "unreadable manifest, dating the generation by its name");
            }
        }
    }
    generations.sort_by(|left, right| left.recency_key().cmp(&right.recency_key()));
    Ok(generations)
}

/// The `CURRENT` pointer with the version a conditional write must name, if one exists.
async fn read_current(
    storage: &Storage,
) -> Result<Option<(CurrentPointer, Versioned)>, LifecycleError> {
    let Some(versioned) = storage.get_if_exists(CURRENT_OBJECT).await? else {
        return Ok(None);
    };
    let pointer = CurrentPointer::from_json(&versioned.bytes).map_err(LifecycleError::Pointer)?;
    Ok(Some((pointer, versioned)))
}

/// The generation `CURRENT` names, if anything is published.
pub async fn current_generation(storage: &Storage) -> Result<Option<String>, LifecycleError> {
    let current = read_current(storage).await?;
    Ok(current.map(|(pointer, _version)| pointer.generation))
}

#[derive(Debug, Clone)]
pub struct GcOptions {
    /// Servable generations to keep, newest first: complete and not refused by their recall
    /// gate (`CURRENT` is kept in any case).
    pub keep: usize,
    /// Nothing written more recently than this is deleted: queries pin a generation while
    /// they run, and a build in progress writes for a long time before its manifest exists.
    pub grace: Duration,
    /// Report what would be deleted, delete nothing.
    pub dry_run: bool,
    /// "Now", in unix ms (a parameter so tests and a dry run can look ahead).
    pub now_unix_ms: u64,
}

/// Why a generation survived a [`gc`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeepReason {
    /// `CURRENT` names it.
    Current,
    /// Written within the grace period.
    WithinGrace,
    /// Among the newest `keep` complete generations.
    NewestComplete,
    /// Nothing says when it was written (no manifest, no time in its name, no write time
    /// from the backend): left alone.
    UnknownAge,
}

/// What [`gc`] did (or, with `dry_run`, would do); the CLI prints it as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GcReport {
    pub dry_run: bool,
    /// The generation `CURRENT` named when the gc started.
    pub current: Option<String>,
    /// Generations deleted (or that would be), oldest first.
    pub deleted: Vec<String>,
    /// Generations kept, oldest first.
    pub kept: Vec<String>,
    /// Why each kept generation was kept.
    pub kept_reasons: BTreeMap<String, KeepReason>,
    pub objects_deleted: u64,
    pub bytes_deleted: u64,
}

/// Deletes the generations outside the newest `keep` complete ones, and unfinished ones,
/// except the one `CURRENT` names and any written within `grace`. Idempotent: a gc that
/// stopped halfway finishes on the next run.
///
/// Each generation loses its manifest first, so one deleted halfway reads as unfinished (and
/// is collected next time), never as a complete generation with missing shards.
pub async fn gc(storage: &Storage, options: &GcOptions) -> Result<GcReport, LifecycleError> {
    // A pointer we cannot read means we cannot tell what is live: refuse rather than guess.
    let current = current_generation(storage).await?;
    let generations = list_generations(storage).await?;
    let grace_ms = u64::try_from(options.grace.as_millis()).unwrap_or(u64::MAX);
    // `keep` counts servable generations: one that failed its recall gate is no rollback
    // target, so it must not push a good one out (it stays for inspection within the grace).
    let mut newest_complete: HashSet<&str> = HashSet::new();
    for info in generations.iter().rev().filter(|info| info.complete) {
        if newest_complete.len() >= options.keep {
            break;
        }
        let failed_gate = matches!(
            crate::gate::read_gate_record(storage, &info.name).await,
            Ok(Some(record)) if !record.decision.passed
        );
        if !failed_gate {
            newest_complete.insert(info.name.as_str());
        }
    }

    let mut report = GcReport {
        dry_run: options.dry_run,
        current: current.clone(),
        deleted: Vec::new(),
        kept: Vec::new(),
        kept_reasons: BTreeMap::new(),
        objects_deleted: 0,
        bytes_deleted: 0,
    };
    for info in &generations {
        let keep_reason = if current.as_deref() == Some(info.name.as_str()) {
            Some(KeepReason::Current)
        } else {
            match info.last_activity_unix_ms() {
                None => Some(KeepReason::UnknownAge),
                Some(active) if options.now_unix_ms.saturating_sub(active) < grace_ms => {
                    Some(KeepReason::WithinGrace)
                }
                Some(_) if newest_complete.contains(info.name.as_str()) => {
                    Some(KeepReason::NewestComplete)
                }
                Some(_) => None,
            }
        };
        // A rollback may have pointed CURRENT here since the gc started: look again right
        // before deleting (this narrows the race to one GET; it cannot close it).
        let keep_reason = match keep_reason {
            None if !options.dry_run
                && current_generation(storage).await?.as_deref() == Some(info.name.as_str()) =>
            {
                Some(KeepReason::Current)
            }
            keep_reason => keep_reason,
        };
        if let Some(reason) = keep_reason {
            report.kept.push(info.name.clone());
            report.kept_reasons.insert(info.name.clone(), reason);
            continue;
        }
        if !options.dry_run {
            delete_generation(storage, info).await?;
        }
        info!(
            generation = %info.name,
            complete = info.complete,
            objects = info.objects.len(),
            bytes = info.bytes,
            dry_run = options.dry_run,
            "garbage-collected generation"
        );
        report.deleted.push(info.name.clone());
        report.objects_deleted += info.objects.len() as u64;
        report.bytes_deleted += info.bytes;
    }
    Ok(report)
}

/// Deletes the manifest first, then every other object of the generation (several at once:
/// a large generation has thousands of shards, one round trip each).
async fn delete_generation(storage: &Storage, info: &GenerationInfo) -> Result<(), LifecycleError> {
    let manifest_name = generation_path(&info.name, MANIFEST_FILE);
    if info.complete {
        storage.delete(&manifest_name).await?;
    }
    let concurrency = storage.config().max_concurrency.max(1);
    stream::iter(
        info.objects
            .iter()
            .filter(|object| **object != manifest_name),
    )
    .map(|object| storage.delete(object))
    .buffer_unordered(concurrency)
    .try_collect::<()>()
    .await?;
    Ok(())
}

/// What [`rollback`] did; the CLI prints it as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RollbackReport {
    pub from: String,
    pub to: String,
}

/// Checks that `generation` can be served: it exists, is complete, and its manifest is of
/// this release's format version and valid.
async fn check_servable(storage: &Storage, generation: &str) -> Result<Manifest, LifecycleError> {
    validate_generation_name(generation).map_err(|source| LifecycleError::InvalidName {
        generation: generation.to_string(),
        source,
    })?;
    let manifest_name = generation_path(generation, MANIFEST_FILE);
    let Some(manifest) = storage.get_if_exists(&manifest_name).await? else {
        let objects = storage
            .list(&format!("{GENERATIONS_PREFIX}/{generation}"))
            .await?;
        if objects.is_empty() {
            return Err(LifecycleError::UnknownGeneration {
                generation: generation.to_string(),
            });
        }
        return Err(LifecycleError::Unfinished {
            generation: generation.to_string(),
        });
    };
    let manifest_error = |source| LifecycleError::Manifest {
        generation: generation.to_string(),
        source,
    };
    let head: ManifestHead = serde_json::from_slice(&manifest.bytes).map_err(|source| {
        manifest_error(FormatError::Json {
            what: manifest_name.clone(),
            source,
        })
    })?;
    if head.format_version != FORMAT_VERSION {
        return Err(LifecycleError::FormatVersion {
            generation: generation.to_string(),
            found: head.format_version,
            supported: FORMAT_VERSION,
        });
    }
    Manifest::from_json(&manifest.bytes).map_err(manifest_error)
}

/// Points `CURRENT` at `to`, or by default at the newest complete generation older than the
/// current one (skipping generations whose recall gate failed), with the same conditional
/// write a publish uses: if `CURRENT` moves meanwhile, the rollback fails rather than
/// overwrite it.
pub async fn rollback(
    storage: &Storage,
    to: Option<&str>,
) -> Result<RollbackReport, LifecycleError> {
    let Some((current, current_version)) = read_current(storage).await? else {
        return Err(LifecycleError::NotPublished {
            location: storage.location().to_string(),
        });
    };
    let target = match to {
        Some(generation) => generation.to_string(),
        None => previous_servable(storage, &current.generation).await?,
    };
    if target == current.generation {
        return Err(LifecycleError::AlreadyCurrent { generation: target });
    }
    check_servable(storage, &target).await?;
    let pointer = CurrentPointer::new(target.clone());
    storage
        .swap_pointer(
            CURRENT_OBJECT,
            Some(&current_version),
            Bytes::from(pointer.to_json()),
        )
        .await?;
    info!(from = %current.generation, to = %target, "rolled CURRENT back");
    Ok(RollbackReport {
        from: current.generation,
        to: target,
    })
}

/// The newest complete generation older than `current` that this release can serve and whose
/// recall gate (if recorded) passed.
async fn previous_servable(storage: &Storage, current: &str) -> Result<String, LifecycleError> {
    let generations = list_generations(storage).await?;
    let current_key = match generations.iter().find(|info| info.name == current) {
        Some(info) => (info.created_unix_ms.unwrap_or(0), info.name.clone()),
        // CURRENT names a generation that is gone: anything older by name is a candidate.
        None => (
            created_from_name(current).unwrap_or(u64::MAX),
            current.to_string(),
        ),
    };
    for info in generations.iter().rev() {
        let key = (info.created_unix_ms.unwrap_or(0), info.name.clone());
        if key >= current_key || !info.complete {
            continue;
        }
        if info.format_version != Some(FORMAT_VERSION) {
            warn!(generation = %info.name, format_version = ?info.format_version, "skipping a generation of another format version");
            continue;
        }
        match crate::gate::read_gate_record(storage, &info.name).await {
            Ok(Some(record)) if !record.decision.passed => {
                warn!(generation = %info.name, reason = %record.decision.reason, "skipping a generation that failed its recall gate");
                continue;
            }
            Ok(_) => {}
            Err(error) => {
                warn!(generation = %info.name, %error, "unreadable gate record, not choosing the generation");
                continue;
            }
        }
        return Ok(info.name.clone());
    }
    Err(LifecycleError::NothingToRollBackTo {
        current: current.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use clipedge_index::{IndexReader, OpenOptions, SearchParams};

    use super::*;
    use crate::gate::{decide, write_gate_record, GateRecord};
    use crate::test_support::*;

    const HOUR_MS: u64 = 3_600_000;

    async fn point_current_at(storage: &Storage, generation: &str) {
        let current = storage.get_versioned(CURRENT_OBJECT).await.unwrap();
        let pointer = CurrentPointer::new(generation);
        storage
            .swap_pointer(
                CURRENT_OBJECT,
                Some(&current),
                Bytes::from(pointer.to_json()),
            )
            .await
            .unwrap();
    }

    async fn reader_answers(storage: &Storage, query: &[f32]) -> String {
        let reader = IndexReader::open(storage.clone(), OpenOptions::default())
            .await
            .expect("open CURRENT");
        let result = reader
            .search(query, &SearchParams::new(5, 4, 4))
            .await
            .expect("search CURRENT");
        assert_eq!(result.hits.len(), 5);
        reader.manifest().generation.clone()
    }

    async fn generation_names(storage: &Storage) -> Vec<String> {
        let generations = list_generations(storage).await.unwrap();
        generations.into_iter().map(|info| info.name).collect()
    }

    #[test]
    fn builder_names_carry_their_creation_time() {
        assert_eq!(
            created_from_name("1795371411698-1c6521d3"),
            Some(1_795_371_411_698)
        );
        assert_eq!(created_from_name("179537141169-1c6521d3"), None);
        assert_eq!(created_from_name("hand-made"), None);
        assert_eq!(created_from_name("1795371411698"), None);
    }

    #[tokio::test]
    async fn gc_keeps_current_newest_and_young_generations_and_deletes_the_rest() {
        let (dir, storage) = temp_storage();
        let (base, queries) = dataset(1_500, 2, 3);
        let now = now_unix_ms();
        let fresh = build_generation(&storage, &base).await;
        let oldest = generation_name(now - 10 * HOUR_MS, 1);
        let old = generation_name(now - 9 * HOUR_MS, 2);
        let newer = generation_name(now - 8 * HOUR_MS, 3);
        let old_unfinished = generation_name(now - 7 * HOUR_MS, 4);
        let young_unfinished = generation_name(now - 60_000, 5);
        for (name, created) in [
            (&oldest, now - 10 * HOUR_MS),
            (&old, now - 9 * HOUR_MS),
            (&newer, now - 8 * HOUR_MS),
        ] {
            copy_generation(&storage, dir.path(), &fresh, name, created, |_| {}).await;
        }
        unfinished_generation(&storage, dir.path(), &old_unfinished, now - 7 * HOUR_MS).await;
        unfinished_generation(&storage, dir.path(), &young_unfinished, now - 60_000).await;
        // CURRENT on the oldest generation: being old must not get it deleted.
        point_current_at(&storage, &oldest).await;

        let listed = list_generations(&storage).await.unwrap();
        let names: Vec<&str> = listed.iter().map(|info| info.name.as_str()).collect();
        assert_eq!(
            names,
            [
                &oldest,
                &old,
                &newer,
                &old_unfinished,
                &young_unfinished,
                &fresh
            ],
            "oldest first"
        );
        assert!(listed[0].complete && !listed[3].complete);
        assert_eq!(listed[0].created_unix_ms, Some(now - 10 * HOUR_MS));
        assert_eq!(listed[0].format_version, Some(FORMAT_VERSION));
        assert_eq!(listed[3].format_version, None);
        assert_eq!(listed[3].objects.len(), 1);
        assert!(listed[0].bytes > 0 && listed[0].objects.len() >= 5);

        let options = GcOptions {
            keep: 2,
            grace: Duration::from_secs(3600),
            dry_run: true,
            now_unix_ms: now,
        };
        let expected_deleted = vec![old.clone(), old_unfinished.clone()];
        let expected_bytes = listed[1].bytes + listed[3].bytes;
        let before = storage.list("generations").await.unwrap();
        let dry_run = gc(&storage, &options).await.unwrap();
        assert_eq!(dry_run.deleted, expected_deleted);
        assert_eq!(dry_run.bytes_deleted, expected_bytes);
        assert!(dry_run.dry_run);
        assert_eq!(
            storage.list("generations").await.unwrap(),
            before,
            "a dry run deletes nothing"
        );

        let report = gc(
            &storage,
            &GcOptions {
                dry_run: false,
                ..options.clone()
            },
        )
        .await
        .unwrap();
        assert_eq!(report.deleted, expected_deleted);
        assert_eq!(report.current.as_deref(), Some(oldest.as_str()));
        assert_eq!(report.bytes_deleted, expected_bytes);
        assert_eq!(
            report.objects_deleted,
            (listed[1].objects.len() + listed[3].objects.len()) as u64
        );
        assert_eq!(
            report.kept,
            [oldest.as_str(), &newer, &young_unfinished, &fresh]
        );
        assert_eq!(report.kept_reasons[oldest.as_str()], KeepReason::Current);
        assert_eq!(report.kept_reasons[&newer], KeepReason::NewestComplete);
        assert_eq!(
            report.kept_reasons[&young_unfinished],
            KeepReason::WithinGrace
        );
        assert_eq!(report.kept_reasons[fresh.as_str()], KeepReason::WithinGrace);
        assert_eq!(
            generation_names(&storage).await,
            [oldest.as_str(), &newer, &young_unfinished, &fresh]
        );
        assert!(storage
            .list(&format!("generations/{old}"))
            .await
            .unwrap()
            .is_empty());

        let again = gc(
            &storage,
            &GcOptions {
                dry_run: false,
                ..options.clone()
            },
        )
        .await
        .unwrap();
        assert!(again.deleted.is_empty(), "gc is idempotent: {again:?}");
        assert_eq!(reader_answers(&storage, &queries[..DIM]).await, oldest);

        // Later, with no grace and keep 0, only what CURRENT names survives, and still serves.
        let everything = gc(
            &storage,
            &GcOptions {
                keep: 0,
                grace: Duration::ZERO,
                dry_run: false,
                now_unix_ms: now + HOUR_MS,
            },
        )
        .await
        .unwrap();
        assert_eq!(everything.kept, [oldest.as_str()]);
        assert_eq!(generation_names(&storage).await, [oldest.as_str()]);
        assert_eq!(reader_answers(&storage, &queries[DIM..]).await, oldest);
    }

    #[tokio::test]
    async fn gc_finishes_a_generation_whose_deletion_stopped_after_the_manifest() {
        let (dir, storage) = temp_storage();
        let (base, _queries) = dataset(1_000, 1, 4);
        let now = now_unix_ms();
        let fresh = build_generation(&storage, &base).await;
        let half_deleted = generation_name(now - 5 * HOUR_MS, 9);
        copy_generation(
            &storage,
            dir.path(),
            &fresh,
            &half_deleted,
            now - 5 * HOUR_MS,
            |_| {},
        )
        .await;
        storage
            .delete(&generation_path(&half_deleted, MANIFEST_FILE))
            .await
            .unwrap();
        let listed = list_generations(&storage).await.unwrap();
        assert!(
            !listed[0].complete,
            "without its manifest it reads as unfinished"
        );
        assert_eq!(
            listed[0].created_unix_ms,
            Some(now - 5 * HOUR_MS),
            "dated by its name"
        );

        let options = GcOptions {
            keep: 5,
            grace: Duration::from_secs(3600),
            dry_run: false,
            now_unix_ms: now,
        };
        let report = gc(&storage, &options).await.unwrap();
        assert_eq!(report.deleted, [half_deleted.as_str()]);
        assert_eq!(generation_names(&storage).await, [fresh.as_str()]);
    }

    #[tokio::test]
    async fn gc_keeps_an_old_build_that_is_still_writing() {
        let (dir, storage) = temp_storage();
        let now = now_unix_ms();
        // Named (started) ten hours ago, but its last shard was written a minute ago.
        let slow_build = generation_name(now - 10 * HOUR_MS, 1);
        unfinished_generation(&storage, dir.path(), &slow_build, now - 60_000).await;
        let report = gc(
            &storage,
            &GcOptions {
                keep: 0,
                grace: Duration::from_secs(3600),
                dry_run: false,
                now_unix_ms: now,
            },
        )
        .await
        .unwrap();
        assert!(report.deleted.is_empty(), "{report:?}");
        assert_eq!(report.kept_reasons[&slow_build], KeepReason::WithinGrace);
    }

    #[tokio::test]
    async fn gc_refuses_to_guess_when_current_is_unreadable() {
        let (_dir, storage) = temp_storage();
        storage
            .put_new(CURRENT_OBJECT, Bytes::from_static(b"not json"))
            .await
            .unwrap();
        let options = GcOptions {
            keep: 0,
            grace: Duration::ZERO,
            dry_run: false,
            now_unix_ms: now_unix_ms(),
        };
        let refused = gc(&storage, &options).await;
        assert!(
            matches!(refused, Err(LifecycleError::Pointer(_))),
            "{refused:?}"
        );
    }

    #[tokio::test]
    async fn rollback_goes_to_the_newest_servable_older_generation_or_where_it_is_told() {
        let (dir, storage) = temp_storage();
        let (base, queries) = dataset(1_000, 1, 5);
        let now = now_unix_ms();
        let fresh = build_generation(&storage, &base).await;
        let good = generation_name(now - 4 * HOUR_MS, 1);
        let failed_gate = generation_name(now - 3 * HOUR_MS, 2);
        let other_version = generation_name(now - 2 * HOUR_MS, 3);
        let unfinished = generation_name(now - HOUR_MS, 4);
        copy_generation(
            &storage,
            dir.path(),
            &fresh,
            &good,
            now - 4 * HOUR_MS,
            |_| {},
        )
        .await;
        copy_generation(
            &storage,
            dir.path(),
            &fresh,
            &failed_gate,
            now - 3 * HOUR_MS,
            |_| {},
        )
        .await;
        copy_generation(
            &storage,
            dir.path(),
            &fresh,
            &other_version,
            now - 2 * HOUR_MS,
            |json| {
                json["format_version"] = serde_json::json!(FORMAT_VERSION + 1);
            },
        )
        .await;
        unfinished_generation(&storage, dir.path(), &unfinished, now - HOUR_MS).await;
        write_gate_record(
            &storage,
            &GateRecord {
                generation: failed_gate.clone(),
                queries: 10,
                nprobe: 4,
                rerank: 4,
                measured_unix_ms: now,
                calibration: Vec::new(),
                decision: decide(0.5, None, 0.9, 0.01),
            },
        )
        .await
        .unwrap();

        let report = rollback(&storage, None).await.unwrap();
        assert_eq!(
            report,
            RollbackReport {
                from: fresh.clone(),
                to: good.clone(),
            },
            "skips the unfinished, other-version and failed-gate generations"
        );
        assert_eq!(reader_answers(&storage, &queries).await, good);
        let nothing_older = rollback(&storage, None).await;
        assert!(
            matches!(nothing_older, Err(LifecycleError::NothingToRollBackTo { ref current }) if *current == good),
            "{nothing_older:?}"
        );

        let forward = rollback(&storage, Some(&fresh)).await.unwrap();
        assert_eq!(forward.to, fresh);
        assert_eq!(reader_answers(&storage, &queries).await, fresh);

        let refusals = [
            (
                rollback(&storage, Some("1000000000000-00000000")).await,
                "does not exist",
            ),
            (rollback(&storage, Some(&unfinished)).await, "unfinished"),
            (
                rollback(&storage, Some(&other_version)).await,
                "format version 2",
            ),
            (
                rollback(&storage, Some(&fresh)).await,
                "already the one CURRENT names",
            ),
            (
                rollback(&storage, Some("../escape")).await,
                "invalid generation name",
            ),
        ];
        for (refused, words) in refusals {
            let message = refused.expect_err("refused").to_string();
            assert!(message.contains(words), "{message:?} should say {words:?}");
        }
        let unknown = rollback(&storage, Some("1000000000000-00000000")).await;
        assert!(
            unknown
                .expect_err("refused")
                .to_string()
                .contains("1000000000000-00000000"),
            "errors name the generation"
        );
        assert_eq!(current_generation(&storage).await.unwrap(), Some(fresh));
    }

    #[tokio::test]
    async fn rollback_needs_a_published_index() {
        let (_dir, storage) = temp_storage();
        let refused = rollback(&storage, None).await;
        assert!(
            matches!(refused, Err(LifecycleError::NotPublished { .. })),
            "{refused:?}"
        );
    }
}
