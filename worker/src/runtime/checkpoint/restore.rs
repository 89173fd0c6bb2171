//! Choosing the snapshot a run starts from, and proving it fits: every state file is there
//! with the length and checksum `_metadata` recorded, the key groups are the job's, and each
//! operator with state is still the operator (and, for a source, reads the same input) that
//! wrote it. A damaged latest checkpoint of the run falls back to the one before it; a job
//! that does not fit its snapshot is refused, naming what differs.

use std::collections::BTreeMap;

use tracing::{info, warn};

use super::format::{METADATA_VERSION, Metadata, OperatorRecord};
use super::layout::{checkpoint_ids, chk_dir, complete_ids};
use super::{CheckpointConfig, Restored};
use crate::runtime::storage::Location;

/// Why a run cannot start from its snapshot.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The job differs from the one that took the snapshot in a way that would misread it.
    #[error("{0}")]
    Incompatible(String),
    #[error("state file {file} of operator '{uid}' in checkpoint {id}: {problem}")]
    StateFile {
        id: u64,
        file: String,
        uid: String,
        problem: String,
    },
    #[error("{0}")]
    Unusable(String),
}

/// What the running job looks like, to compare with a snapshot.
#[derive(Debug, Clone, Default)]
pub struct JobShape {
    /// Tasks that acknowledge every checkpoint.
    pub tasks: usize,
    pub max_parallelism: u32,
    /// By uid.
    pub operators: BTreeMap<String, OperatorRecord>,
}

impl JobShape {
    pub fn of(plan: &streamjob_crds::plan::PhysicalPlan) -> JobShape {
        JobShape {
            tasks: plan.chains.iter().map(|c| c.parallelism as usize).sum(),
            max_parallelism: plan.max_parallelism,
            operators: plan
                .nodes
                .iter()
                .map(|n| {
                    let record = OperatorRecord {
                        operator: n.operator.clone(),
                        name: n.name.clone(),
                        source: None,
                    };
                    (n.uid.clone(), record)
                })
                .collect(),
        }
    }
}

/// The snapshot to start from: the newest usable complete checkpoint of the run directory,
/// else `restore_from`, else none. Returns it with its metadata.
pub(super) fn choose(
    config: &CheckpointConfig,
    shape: &JobShape,
) -> Result<Option<(Restored, Metadata)>, CheckpointError> {
    let dir = config.run_dir()?;
    let own = complete_ids(&dir)?;
    if let Some(&latest) = own.first() {
        // Incomplete checkpoints after it are garbage from the crashed run.
        for id in checkpoint_ids(&dir)? {
            if id > latest {
                let _ = chk_dir(&dir, id).delete_all();
            }
        }
        let (chosen, rejected) = newest_usable(&dir, &own, config, shape)?;
        // New checkpoints continue after the one restored: a damaged newer one must go, or
        // they would be written into its directory.
        for id in rejected {
            warn!(checkpoint = id, "deleting the damaged checkpoint");
            let _ = chk_dir(&dir, id).delete_all();
        }
        return Ok(Some(chosen));
    }
    let Some(from) = &config.restore_from else {
        return Ok(None);
    };
    let loc = Location::parse(from)?;
    if let Some(bytes) = loc.join("_metadata").get()? {
        // One snapshot named explicitly: no other may stand in for it.
        let meta = Metadata::parse(&bytes)
            .map_err(|e| CheckpointError::Unusable(format!("{}: {e}", loc.url())))?;
        check_fits(&meta, loc.url(), config, shape)?;
        verify_files(&loc, &meta)?;
        return Ok(Some((
            Restored {
                id: meta.id,
                dir: loc,
            },
            meta,
        )));
    }
    let ids = complete_ids(&loc)?;
    if ids.is_empty() {
        return Err(CheckpointError::Io(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!(
                "{from}: neither a complete checkpoint or savepoint (no _metadata) nor a \
                 directory holding one"
            ),
        )));
    }
    Ok(Some(newest_usable(&loc, &ids, config, shape)?.0))
}

/// The newest of `ids` (newest first) whose files are intact, and the ids skipped for damage.
/// A snapshot that does not fit the job is an error at once: an older one would not fit
/// either, and silently restoring older state is not a fallback.
fn newest_usable(
    dir: &Location,
    ids: &[u64],
    config: &CheckpointConfig,
    shape: &JobShape,
) -> Result<((Restored, Metadata), Vec<u64>), CheckpointError> {
    let mut reasons = Vec::new();
    let mut rejected = Vec::new();
    for &id in ids {
        let loc = chk_dir(dir, id);
        let checked = match loc.join("_metadata").get()? {
            None => Err(format!("{}/_metadata is missing", loc.url())),
            Some(bytes) => Metadata::parse(&bytes).map_err(|e| format!("{}: {e}", loc.url())),
        };
        let checked = match checked {
            Ok(meta) => {
                check_fits(&meta, loc.url(), config, shape)?;
                // Damage falls back; a storage that cannot be read now (network, rights)
                // is an error, not a reason to give up the newest checkpoint.
                match verify_files(&loc, &meta) {
                    Ok(()) => Ok(meta),
                    Err(e @ CheckpointError::StateFile { .. }) => Err(e.to_string()),
                    Err(e) => return Err(e),
                }
            }
            Err(e) => Err(e),
        };
        match checked {
            Ok(meta) => {
                if !rejected.is_empty() {
                    warn!(
                        checkpoint = id,
                        skipped = ?rejected,
                        "falling back to an older checkpoint: the newer one(s) are damaged"
                    );
                }
                return Ok(((Restored { id, dir: loc }, meta), rejected));
            }
            Err(reason) => {
                warn!(checkpoint = id, %reason, "checkpoint cannot be restored");
                reasons.push(format!("checkpoint {id}: {reason}"));
                rejected.push(id);
            }
        }
    }
    Err(CheckpointError::Unusable(format!(
        "no complete checkpoint in {} can be restored: {}",
        dir.url(),
        reasons.join("; ")
    )))
}

/// Reads every state file of `meta` once (one at a time) and checks it.
fn verify_files(dir: &Location, meta: &Metadata) -> Result<(), CheckpointError> {
    for h in &meta.states {
        let loc = dir.join(&h.file);
        Metadata::verify(h, loc.get()?).map_err(|problem| CheckpointError::StateFile {
            id: meta.id,
            file: loc.url().to_string(),
            uid: h.operator.clone(),
            problem,
        })?;
    }
    info!(
        checkpoint = meta.id,
        files = meta.states.len(),
        bytes = meta.state_bytes,
        "checkpoint verified"
    );
    Ok(())
}

/// Whether the job can read the snapshot `meta` (at `url`) as it was written.
fn check_fits(
    meta: &Metadata,
    url: &str,
    config: &CheckpointConfig,
    shape: &JobShape,
) -> Result<(), CheckpointError> {
    let refuse = |m: String| Err(CheckpointError::Incompatible(format!("{url}: {m}")));
    if meta.format < METADATA_VERSION {
        return refuse(format!(
            "written by an older streamjob (metadata format {}, this build needs {METADATA_VERSION}: \
             no checksums or maxParallelism recorded), so it cannot be verified; start the job \
             without it (another run id, no initialSavepointPath)",
            meta.format
        ));
    }
    if meta.max_parallelism != Some(shape.max_parallelism) {
        return refuse(format!(
            "checkpoint {} was taken with maxParallelism {}, the job now has maxParallelism {}: \
             keyed state is stored by key group and cannot be moved to another number of key \
             groups; set maxParallelism back to {}",
            meta.id,
            meta.max_parallelism
                .map_or("unknown".into(), |m| m.to_string()),
            shape.max_parallelism,
            meta.max_parallelism.map_or("it".into(), |m| m.to_string()),
        ));
    }
    let mut with_state: Vec<&str> = meta.states.iter().map(|h| h.operator.as_str()).collect();
    with_state.sort_unstable();
    with_state.dedup();
    let unknown: Vec<&str> = with_state
        .iter()
        .copied()
        .filter(|u| !shape.operators.contains_key(*u))
        .collect();
    if !unknown.is_empty() {
        if !config.allow_non_restored_state {
            return refuse(format!(
                "it holds state of operator(s) {} that this job does not have; give them back \
                 their uid, or set allowNonRestoredState to drop it",
                unknown.join(", ")
            ));
        }
        warn!(operators = %unknown.join(", "), "dropping state of operators the job no longer has");
    }
    for uid in with_state {
        let (Some(now), Some(then)) = (shape.operators.get(uid), meta.operators.get(uid)) else {
            continue;
        };
        if now.operator != then.operator {
            return refuse(format!(
                "operator uid '{uid}' was a {} when checkpoint {} was taken and is a {} now \
                 (step '{}'): its state cannot be read by another kind of operator; give the \
                 step another uid (and set allowNonRestoredState to drop the old state)",
                then.operator, meta.id, now.operator, now.name
            ));
        }
        let current = config.sources.get(uid);
        if let Some(old) = &then.source
            && current != Some(old)
        {
            let diff = match current {
                Some(new) => differences(old, new),
                None => format!("it was {old}, now it records no settings"),
            };
            return refuse(format!(
                "the source of step '{}' (uid '{uid}') changed since checkpoint {} was taken \
                 ({diff}): its restored position belongs to the old input. Put the old settings \
                 back, or start this source afresh by giving the step a new uid (and set \
                 allowNonRestoredState to drop the old position)",
                now.name, meta.id
            ));
        }
    }
    Ok(())
}

/// The fields that differ between two source settings, as `path: old -> new`.
fn differences(old: &serde_json::Value, new: &serde_json::Value) -> String {
    fn flatten(prefix: &str, v: &serde_json::Value, out: &mut BTreeMap<String, String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    let p = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    flatten(&p, v, out);
                }
            }
            other => {
                out.insert(prefix.to_string(), other.to_string());
            }
        }
    }
    let (mut a, mut b) = (BTreeMap::new(), BTreeMap::new());
    flatten("", old, &mut a);
    flatten("", new, &mut b);
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    let none = "(unset)".to_string();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| {
            format!(
                "{k}: {} then, {} now",
                a.get(k).unwrap_or(&none),
                b.get(k).unwrap_or(&none)
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}
