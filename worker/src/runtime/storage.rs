//! Where checkpoints and savepoints live, through the `object_store` crate: a local
//! directory (`file:///path` or a plain path; a shared volume on Kubernetes) or an
//! S3-compatible bucket (`s3://bucket/prefix`; credentials, region and endpoint from the
//! standard `AWS_*` environment variables, e.g. `AWS_ENDPOINT` and `AWS_ALLOW_HTTP` for MinIO).
//!
//! The checkpoint code is synchronous (task threads), so every call runs on a small runtime
//! of its own and the caller waits; that also works from inside another Tokio runtime.

use std::io;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use futures_util::StreamExt as _;
use object_store::ObjectStore;
use object_store::path::Path as ObjectPath;

/// A directory-like location in a store. Cheap to clone; `join` shares the store's client.
#[derive(Clone)]
pub struct Location {
    store: Arc<dyn ObjectStore>,
    path: ObjectPath,
    url: String,
    /// For a local directory, its path (deleting empties directories too).
    local: Option<PathBuf>,
}

impl std::fmt::Debug for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.url)
    }
}

impl PartialEq for Location {
    fn eq(&self, other: &Self) -> bool {
        self.url == other.url
    }
}

impl Eq for Location {}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("storage")
            .enable_all()
            .build()
            .expect("storage runtime")
    })
}

/// Runs `fut` on the storage runtime and waits for it.
fn block<T: Send + 'static>(fut: impl Future<Output = T> + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    runtime().spawn(async move {
        let _ = tx.send(fut.await);
    });
    rx.recv().expect("the storage runtime dropped a call")
}

fn io_error(url: &str, e: object_store::Error) -> io::Error {
    let kind = match e {
        object_store::Error::NotFound { .. } => io::ErrorKind::NotFound,
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, format!("{url}: {e}"))
}

impl Location {
    /// `s3://bucket/prefix`, `file:///abs/path` or a plain path (local directories are
    /// created).
    pub fn parse(url: &str) -> io::Result<Location> {
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(io::Error::other(format!("{url}: no bucket name")));
            }
            let store = object_store::aws::AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .build()
                .map_err(|e| io::Error::other(format!("{url}: {e}")))?;
            return Ok(Location {
                store: Arc::new(store),
                path: ObjectPath::from(prefix.trim_end_matches('/')),
                url: format!("s3://{bucket}/{}", prefix.trim_end_matches('/')),
                local: None,
            });
        }
        if url.contains("://") && !url.starts_with("file://") {
            return Err(io::Error::other(format!(
                "{url}: unsupported storage (use file://, a path, or s3://)"
            )));
        }
        let dir = PathBuf::from(url.strip_prefix("file://").unwrap_or(url));
        std::fs::create_dir_all(&dir)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dir.display())))?;
        let store = object_store::local::LocalFileSystem::new_with_prefix(&dir)
            .map_err(|e| io::Error::other(format!("{}: {e}", dir.display())))?;
        Ok(Location {
            store: Arc::new(store),
            path: ObjectPath::default(),
            url: dir.display().to_string(),
            local: Some(dir),
        })
    }

    /// The location `name` inside this one.
    pub fn join(&self, name: &str) -> Location {
        Location {
            store: self.store.clone(),
            path: self.path.child(name),
            url: format!("{}/{name}", self.url.trim_end_matches('/')),
            local: self.local.as_ref().map(|d| d.join(name)),
        }
    }

    /// Where it is, as a user gives it back (`initialSavepointPath`, `--restore-from`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Writes the object (atomically: readers see the old or the new content).
    pub fn put(&self, bytes: Vec<u8>) -> io::Result<()> {
        let (store, path, url) = (self.store.clone(), self.path.clone(), self.url.clone());
        block(async move {
            store
                .put(&path, bytes.into())
                .await
                .map(|_| ())
                .map_err(|e| io_error(&url, e))
        })
    }

    /// The object's content, or `None` if there is none.
    pub fn get(&self) -> io::Result<Option<Vec<u8>>> {
        let (store, path, url) = (self.store.clone(), self.path.clone(), self.url.clone());
        block(async move {
            match store.get(&path).await {
                Ok(r) => r
                    .bytes()
                    .await
                    .map(|b| Some(b.to_vec()))
                    .map_err(|e| io_error(&url, e)),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(io_error(&url, e)),
            }
        })
    }

    pub fn exists(&self) -> io::Result<bool> {
        let (store, path, url) = (self.store.clone(), self.path.clone(), self.url.clone());
        block(async move {
            match store.head(&path).await {
                Ok(_) => Ok(true),
                Err(object_store::Error::NotFound { .. }) => Ok(false),
                Err(e) => Err(io_error(&url, e)),
            }
        })
    }

    /// Names of the directories and of the objects directly inside this location.
    pub fn children(&self) -> io::Result<(Vec<String>, Vec<String>)> {
        let (store, path, url) = (self.store.clone(), self.path.clone(), self.url.clone());
        let list = block(async move {
            let prefix = (!path.as_ref().is_empty()).then_some(&path);
            match store.list_with_delimiter(prefix).await {
                Ok(l) => Ok(Some(l)),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(io_error(&url, e)),
            }
        })?;
        let Some(list) = list else {
            return Ok(Default::default());
        };
        let name = |p: &ObjectPath| p.filename().map(str::to_string);
        Ok((
            list.common_prefixes.iter().filter_map(name).collect(),
            list.objects
                .iter()
                .filter_map(|o| name(&o.location))
                .collect(),
        ))
    }

    /// Deletes everything under this location.
    pub fn delete_all(&self) -> io::Result<()> {
        if let Some(dir) = &self.local {
            return match std::fs::remove_dir_all(dir) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            };
        }
        let (store, path, url) = (self.store.clone(), self.path.clone(), self.url.clone());
        block(async move {
            let locations = store
                .list(Some(&path))
                .map(|m| m.map(|m| m.location))
                .boxed();
            let mut deleted = store.delete_stream(locations);
            while let Some(r) = deleted.next().await {
                match r {
                    Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(io_error(&url, e)),
                }
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_directory_stores_lists_and_deletes() {
        let dir = std::env::temp_dir().join(format!("sj-storage-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let root = Location::parse(&format!("file://{}", dir.display())).unwrap();
        let chk = root.join("chk-1");
        chk.join("a-0.state").put(b"x".to_vec()).unwrap();
        chk.join("_metadata").put(b"{}".to_vec()).unwrap();
        root.join("chk-2")
            .join("b-1.state")
            .put(b"y".to_vec())
            .unwrap();
        assert_eq!(chk.join("a-0.state").get().unwrap().unwrap(), b"x");
        assert_eq!(chk.join("missing").get().unwrap(), None);
        assert!(chk.join("_metadata").exists().unwrap());
        let (mut dirs, files) = root.children().unwrap();
        dirs.sort();
        assert_eq!(
            (dirs, files),
            (vec!["chk-1".to_string(), "chk-2".to_string()], vec![])
        );
        let (_, mut files) = chk.children().unwrap();
        files.sort();
        assert_eq!(
            files,
            vec!["_metadata".to_string(), "a-0.state".to_string()]
        );
        chk.delete_all().unwrap();
        assert!(!dir.join("chk-1").exists());
        assert_eq!(root.join("nothing").children().unwrap(), (vec![], vec![]));
        assert_eq!(chk.url(), format!("{}/chk-1", dir.display()));
    }

    #[test]
    fn unknown_schemes_are_refused() {
        let e = Location::parse("gs://bucket/x").unwrap_err();
        assert!(e.to_string().contains("unsupported storage"), "{e}");
    }
}
