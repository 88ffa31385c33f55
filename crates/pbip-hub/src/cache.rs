//! The hub cache layout of `huggingface_hub` (see the crate docs), for one repository.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::HubError;

/// `models--{org}--{name}`: a model repository's folder in the hub cache.
pub fn repo_folder_name(repo_id: &str) -> String {
    format!("models--{}", repo_id.replace('/', "--"))
}

/// A unique temporary name next to `path` (process id + counter).
fn temp_beside(path: &Path) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp-{}-{n}", std::process::id()));
    path.with_file_name(name)
}

fn create_dir_all(dir: &Path) -> Result<(), HubError> {
    std::fs::create_dir_all(dir).map_err(HubError::io(dir))
}

/// A snapshot's files: `/`-separated names and sizes.
pub(crate) type Listing = Vec<(String, Option<u64>)>;

/// One repository's part of the cache.
#[derive(Debug, Clone)]
pub(crate) struct RepoCache {
    cache_dir: PathBuf,
    folder: String,
}

/// An exclusive lock on one blob, between threads and processes (released on drop, and when the
/// process dies). Lock files are left in place, as `huggingface_hub` does.
pub(crate) struct BlobLock {
    _file: File,
}

impl RepoCache {
    pub(crate) fn new(cache_dir: &Path, repo_id: &str) -> Self {
        Self {
            cache_dir: cache_dir.to_path_buf(),
            folder: repo_folder_name(repo_id),
        }
    }

    /// The hub cache folder.
    pub(crate) fn cache_dir(&self) -> &Path {
        &self.cache_dir
    }

    pub(crate) fn dir(&self) -> PathBuf {
        self.cache_dir.join(&self.folder)
    }

    pub(crate) fn blob(&self, etag: &str) -> PathBuf {
        self.dir().join("blobs").join(etag)
    }

    pub(crate) fn incomplete(&self, etag: &str) -> PathBuf {
        self.dir().join("blobs").join(format!("{etag}.incomplete"))
    }

    pub(crate) fn snapshot_dir(&self, commit: &str) -> PathBuf {
        self.dir().join("snapshots").join(commit)
    }

    pub(crate) fn snapshot_file(&self, commit: &str, filename: &str) -> PathBuf {
        let mut p = self.snapshot_dir(commit);
        p.extend(filename.split('/'));
        p
    }

    fn ref_path(&self, revision: &str) -> PathBuf {
        let mut p = self.dir().join("refs");
        p.extend(revision.split('/'));
        p
    }

    /// The commit `refs/{revision}` records, if any.
    pub(crate) fn read_ref(&self, revision: &str) -> Result<Option<String>, HubError> {
        let path = self.ref_path(revision);
        match std::fs::read_to_string(&path) {
            Ok(s) => {
                let s = s.trim().to_string();
                Ok((!s.is_empty()).then_some(s))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(HubError::Io { path, source }),
        }
    }

    /// Records that `revision` is `commit` (atomically; unchanged refs are not rewritten).
    pub(crate) fn write_ref(&self, revision: &str, commit: &str) -> Result<(), HubError> {
        if revision == commit || self.read_ref(revision)?.as_deref() == Some(commit) {
            return Ok(());
        }
        let path = self.ref_path(revision);
        if let Some(parent) = path.parent() {
            create_dir_all(parent)?;
        }
        let tmp = temp_beside(&path);
        std::fs::write(&tmp, commit).map_err(HubError::io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(|source| {
            let _ = std::fs::remove_file(&tmp);
            HubError::Io {
                path: path.clone(),
                source,
            }
        })
    }

    /// Waits for the exclusive lock of blob `etag` (`.locks/{repo folder}/{etag}.lock`).
    pub(crate) fn lock(&self, etag: &str) -> Result<BlobLock, HubError> {
        let dir = self.cache_dir.join(".locks").join(&self.folder);
        create_dir_all(&dir)?;
        let path = dir.join(format!("{etag}.lock"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(HubError::io(&path))?;
        file.lock().map_err(HubError::io(&path))?;
        Ok(BlobLock { _file: file })
    }

    /// Points `snapshots/{commit}/{filename}` at `blobs/{etag}` (a relative symlink on Unix, a copy
    /// elsewhere) and returns the snapshot path. Replaces whatever was there atomically.
    pub(crate) fn link(
        &self,
        commit: &str,
        filename: &str,
        etag: &str,
    ) -> Result<PathBuf, HubError> {
        let path = self.snapshot_file(commit, filename);
        if let Some(parent) = path.parent() {
            create_dir_all(parent)?;
        }
        let depth = filename.split('/').count() + 1;
        let mut target = PathBuf::new();
        for _ in 0..depth {
            target.push("..");
        }
        target.push("blobs");
        target.push(etag);
        if std::fs::read_link(&path).is_ok_and(|t| t == target) {
            return Ok(path);
        }
        let tmp = temp_beside(&path);
        #[cfg(unix)]
        std::os::unix::fs::symlink(&target, &tmp).map_err(HubError::io(&tmp))?;
        #[cfg(not(unix))]
        std::fs::copy(self.blob(etag), &tmp).map_err(HubError::io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(|source| {
            let _ = std::fs::remove_file(&tmp);
            HubError::Io {
                path: path.clone(),
                source,
            }
        })?;
        Ok(path)
    }

    /// The files of a cached snapshot (`/`-separated names, sizes of the blobs they point to);
    /// dangling links are left out. `None` when the snapshot folder does not exist.
    pub(crate) fn list_snapshot(&self, commit: &str) -> Result<Option<Listing>, HubError> {
        let root = self.snapshot_dir(commit);
        if !root.is_dir() {
            return Ok(None);
        }
        let mut out = Vec::new();
        let mut stack = vec![(root, String::new())];
        while let Some((dir, prefix)) = stack.pop() {
            let rd = std::fs::read_dir(&dir).map_err(HubError::io(&dir))?;
            for entry in rd {
                let entry = entry.map_err(HubError::io(&dir))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                let rel = format!("{prefix}{name}");
                let path = entry.path();
                match std::fs::metadata(&path) {
                    Ok(m) if m.is_dir() => stack.push((path, format!("{rel}/"))),
                    Ok(m) => out.push((rel, Some(m.len()))),
                    Err(_) => {} // dangling link
                }
            }
        }
        out.sort();
        Ok(Some(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_and_refs() {
        let tmp = tempfile::tempdir().unwrap();
        let c = RepoCache::new(tmp.path(), "org/name");
        assert_eq!(repo_folder_name("org/name"), "models--org--name");
        assert_eq!(c.dir(), tmp.path().join("models--org--name"));
        assert_eq!(c.read_ref("main").unwrap(), None);
        c.write_ref("main", "abc").unwrap();
        c.write_ref("refs/pr/1", "def").unwrap();
        assert_eq!(c.read_ref("main").unwrap().as_deref(), Some("abc"));
        assert_eq!(c.read_ref("refs/pr/1").unwrap().as_deref(), Some("def"));
        assert_eq!(
            std::fs::read_to_string(c.dir().join("refs/main")).unwrap(),
            "abc"
        );
    }

    #[cfg(unix)]
    #[test]
    fn snapshot_links_are_relative() {
        let tmp = tempfile::tempdir().unwrap();
        let c = RepoCache::new(tmp.path(), "org/name");
        std::fs::create_dir_all(c.dir().join("blobs")).unwrap();
        std::fs::write(c.blob("e1"), b"one").unwrap();
        std::fs::write(c.blob("e2"), b"two").unwrap();
        let p = c.link("c0", "config.json", "e1").unwrap();
        assert_eq!(
            std::fs::read_link(&p).unwrap(),
            PathBuf::from("../../blobs/e1")
        );
        assert_eq!(std::fs::read(&p).unwrap(), b"one");
        let p = c.link("c0", "sub/dir/w.bin", "e2").unwrap();
        assert_eq!(
            std::fs::read_link(&p).unwrap(),
            PathBuf::from("../../../../blobs/e2")
        );
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        // Relinking to another blob replaces the link.
        let p = c.link("c0", "config.json", "e2").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        std::os::unix::fs::symlink("../../blobs/missing", c.snapshot_file("c0", "gone")).unwrap();
        let listed = c.list_snapshot("c0").unwrap().unwrap();
        assert_eq!(
            listed,
            vec![
                ("config.json".to_string(), Some(3)),
                ("sub/dir/w.bin".to_string(), Some(3)),
            ]
        );
        assert!(c.list_snapshot("nope").unwrap().is_none());
    }

    #[test]
    fn lock_excludes_a_second_holder() {
        let tmp = tempfile::tempdir().unwrap();
        let c = RepoCache::new(tmp.path(), "org/name");
        let held = c.lock("e").unwrap();
        let path = tmp.path().join(".locks/models--org--name/e.lock");
        let other = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        assert!(matches!(
            other.try_lock(),
            Err(std::fs::TryLockError::WouldBlock)
        ));
        drop(held);
        assert!(other.try_lock().is_ok());
    }
}
