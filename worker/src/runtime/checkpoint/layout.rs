//! Where a run's checkpoints are in storage: `chk-<n>` directories, which of them are
//! complete, pruning to the retained number and copying one out as a savepoint.

use tracing::warn;

use super::format::Metadata;
use crate::runtime::storage::Location;

pub fn chk_dir(dir: &Location, id: u64) -> Location {
    dir.join(&format!("chk-{id}"))
}

/// Ids of every `chk-<n>` directory in `dir`, ascending.
pub fn checkpoint_ids(dir: &Location) -> std::io::Result<Vec<u64>> {
    let (dirs, _) = dir.children()?;
    let mut ids: Vec<u64> = dirs
        .iter()
        .filter_map(|n| n.strip_prefix("chk-")?.parse().ok())
        .collect();
    ids.sort_unstable();
    Ok(ids)
}

/// Ids of the complete checkpoints (those with `_metadata`) in `dir`, newest first.
pub fn complete_ids(dir: &Location) -> std::io::Result<Vec<u64>> {
    let mut out = Vec::new();
    for id in checkpoint_ids(dir)?.into_iter().rev() {
        if chk_dir(dir, id).join("_metadata").exists()? {
            out.push(id);
        }
    }
    Ok(out)
}

/// Highest checkpoint in `dir` that has its metadata (complete).
pub fn latest_complete(dir: &Location) -> std::io::Result<Option<u64>> {
    Ok(complete_ids(dir)?.first().copied())
}

/// Keeps the `retained` newest complete checkpoints up to `latest` and deletes every other
/// checkpoint directory below `latest` (older complete ones, and failed or abandoned ones
/// that a cleanup could not remove before). Newer directories may be in progress.
pub fn prune(dir: &Location, latest: u64, retained: usize) {
    let keep: Vec<u64> = match complete_ids(dir) {
        Ok(ids) => ids
            .into_iter()
            .filter(|&i| i <= latest)
            .take(retained)
            .collect(),
        Err(e) => return warn!(error = %e, "cannot list checkpoints to prune them"),
    };
    let Ok(ids) = checkpoint_ids(dir) else {
        return;
    };
    for id in ids {
        if id < latest
            && !keep.contains(&id)
            && let Err(err) = chk_dir(dir, id).delete_all()
        {
            warn!(checkpoint = id, error = %err, "cannot delete an old checkpoint");
        }
    }
}

/// Copies a complete checkpoint into `<to>/savepoint-<id>-<ms>` and returns where; the
/// metadata goes last, so a half-copied savepoint is never taken for a complete one.
pub fn copy_snapshot(
    from: &Location,
    to: &Location,
    meta: &Metadata,
    now_ms: u64,
) -> std::io::Result<String> {
    let dest = to.join(&format!("savepoint-{}-{now_ms}", meta.id));
    for h in &meta.states {
        let bytes = from.join(&h.file).get()?.ok_or_else(|| {
            std::io::Error::other(format!(
                "{}/{}: gone before it was copied",
                from.url(),
                h.file
            ))
        })?;
        dest.join(&h.file).put(bytes)?;
    }
    dest.join("_metadata").put(meta.to_json())?;
    Ok(dest.url().to_string())
}
