//! One JSON document on disk, shared by many processes.
//!
//! Writers take an exclusive lock on `<file>.lock` (a lock on the data file
//! itself would not survive the rename), read the current version, write a
//! temp file, fsync it, rename it over the original and fsync the directory.
//! The OS releases the lock when its holder dies, so a killed writer never
//! blocks the next one, and the rename means readers (who take no lock) see
//! either the old or the new version, never half of one.
//!
//! The parsed document is cached and re-read only when the file's identity
//! (inode, size, modification time) changes, so listing a large catalog does
//! not parse it again. A file that stops parsing is reported, writes are
//! refused (so nothing overwrites it), and readers keep the last good version.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use chrono::{SecondsFormat, Utc};

use super::Document;

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not valid catalog JSON: {source}")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("the catalog task was cancelled")]
    Cancelled,
}

/// What identifies one version of the file on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    ino: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
}

impl Stamp {
    fn of(m: &std::fs::Metadata) -> Self {
        Stamp { ino: m.ino(), size: m.size(), mtime: m.mtime(), mtime_nsec: m.mtime_nsec() }
    }
}

struct Cached<T> {
    stamp: Stamp,
    doc: Arc<T>,
}

struct Inner<T> {
    path: PathBuf,
    cache: Mutex<Option<Cached<T>>>,
}

/// A catalog file. Cheap to clone; clones share the cache.
pub struct JsonStore<T> {
    inner: Arc<Inner<T>>,
}

impl<T> Clone for JsonStore<T> {
    fn clone(&self) -> Self {
        JsonStore { inner: self.inner.clone() }
    }
}

impl<T> std::fmt::Debug for JsonStore<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonStore").field("path", &self.inner.path).finish()
    }
}

impl<T: Document> JsonStore<T> {
    pub fn new(path: PathBuf) -> Self {
        JsonStore { inner: Arc::new(Inner { path, cache: Mutex::new(None) }) }
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    fn lock_path(&self) -> PathBuf {
        let mut p = self.inner.path.clone().into_os_string();
        p.push(".lock");
        p.into()
    }

    fn io(&self, source: std::io::Error) -> CatalogError {
        CatalogError::Io { path: self.inner.path.clone(), source }
    }

    /// The current version on disk, from the cache when the file has not
    /// changed. Fails if the file does not parse.
    pub fn read_strict(&self) -> Result<Arc<T>, CatalogError> {
        let mut file = File::open(&self.inner.path).map_err(|e| self.io(e))?;
        // The stamp of the open file matches its content even if a writer
        // renames a new version into place meanwhile.
        let stamp = Stamp::of(&file.metadata().map_err(|e| self.io(e))?);
        if let Some(c) = self.inner.cache.lock().expect("cache lock").as_ref()
            && c.stamp == stamp
        {
            return Ok(c.doc.clone());
        }
        let mut bytes = Vec::with_capacity(stamp.size as usize);
        file.read_to_end(&mut bytes).map_err(|e| self.io(e))?;
        let doc: Arc<T> = Arc::new(
            serde_json::from_slice(&bytes)
                .map_err(|source| CatalogError::Corrupt { path: self.inner.path.clone(), source })?,
        );
        *self.inner.cache.lock().expect("cache lock") = Some(Cached { stamp, doc: doc.clone() });
        Ok(doc)
    }

    /// The file parsed, bypassing the cache.
    fn read_file(&self) -> Result<T, CatalogError> {
        let bytes = std::fs::read(&self.inner.path).map_err(|e| self.io(e))?;
        serde_json::from_slice(&bytes).map_err(|source| CatalogError::Corrupt { path: self.inner.path.clone(), source })
    }

    /// The document for serving: the current version, or, if the file no
    /// longer parses, the last good version this process read (the error is
    /// still reported by [`read_strict`](Self::read_strict) and `/health`).
    pub fn read(&self) -> Result<Arc<T>, CatalogError> {
        match self.read_strict() {
            Ok(doc) => Ok(doc),
            Err(e @ CatalogError::Corrupt { .. }) => match self.inner.cache.lock().expect("cache lock").as_ref() {
                Some(c) => {
                    tracing::error!(error = %e, "catalog file is corrupt; serving the last good version");
                    Ok(c.doc.clone())
                }
                None => Err(e),
            },
            Err(e) => Err(e),
        }
    }

    /// Read-modify-write under the exclusive lock. `f` returns what the
    /// caller wants back; the document is written only if `f` returns Ok.
    /// Refused while the file on disk does not parse.
    pub fn update<R, E>(&self, f: impl FnOnce(&mut T) -> Result<R, E>) -> Result<Result<R, E>, CatalogError> {
        let _lock = self.lock()?;
        // Read under the lock, always from the file: the cache's stamp
        // (inode, size, mtime) can match a different version (an inode
        // freed by a rename and reused, an equal-sized write within one
        // timestamp tick), and a writer must never start from a stale copy.
        // The write puts the new version in the cache.
        self.inner.cache.lock().expect("cache lock").take();
        let mut doc = self.read_file()?;
        let out = match f(&mut doc) {
            Ok(out) => out,
            Err(e) => return Ok(Err(e)),
        };
        doc.touch(&Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true));
        self.write_locked(doc)?;
        Ok(Ok(out))
    }

    /// Replace the whole document with `bytes` (a backup being restored),
    /// which must parse. Takes the lock; works on a corrupt file too.
    pub fn replace_with(&self, bytes: &[u8]) -> Result<(), CatalogError> {
        let doc: T = serde_json::from_slice(bytes)
            .map_err(|source| CatalogError::Corrupt { path: self.inner.path.clone(), source })?;
        let _lock = self.lock()?;
        self.write_locked(doc)
    }

    /// Take the writers' lock; released when the returned file is dropped,
    /// also if this process dies.
    fn lock(&self) -> Result<File, CatalogError> {
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.lock_path())
            .map_err(|e| self.io(e))?;
        lock.lock().map_err(|e| self.io(e))?;
        Ok(lock)
    }

    fn write_locked(&self, doc: T) -> Result<(), CatalogError> {
        let path = &self.inner.path;
        let dir = path.parent().unwrap_or(Path::new("."));
        remove_stale_temp_files(dir, path);
        let (tmp_path, mut tmp) = tempfile_in(dir, path).map_err(|e| self.io(e))?;
        let json = serde_json::to_vec_pretty(&doc).expect("catalog documents serialize");
        let written = (|| {
            tmp.write_all(&json)?;
            tmp.write_all(b"\n")?;
            tmp.sync_all()?;
            let stamp = Stamp::of(&tmp.metadata()?);
            std::fs::rename(&tmp_path, path)?;
            File::open(dir)?.sync_all()?;
            Ok(stamp)
        })();
        match written {
            Ok(stamp) => {
                *self.inner.cache.lock().expect("cache lock") = Some(Cached { stamp, doc: Arc::new(doc) });
                Ok(())
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp_path);
                Err(self.io(e))
            }
        }
    }
}

/// Writers create temp files only while holding the lock, so any temp file
/// found by the lock holder was left by a writer that died mid-write.
fn remove_stale_temp_files(dir: &Path, target: &Path) {
    let Some(base) = target.file_name().and_then(|n| n.to_str()) else { return };
    let prefix = format!(".{base}.");
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(&prefix) && name.ends_with(".tmp") {
            tracing::warn!(file = %name, "removing a temp file left by an interrupted catalog write");
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// A uniquely named temp file next to `target`, created exclusively.
fn tempfile_in(dir: &Path, target: &Path) -> std::io::Result<(PathBuf, File)> {
    let base = target.file_name().and_then(|n| n.to_str()).unwrap_or("catalog");
    for _ in 0..16 {
        let name = format!(".{base}.{}.tmp", uuid::Uuid::new_v4().simple());
        let path = dir.join(name);
        match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(f) => return Ok((path, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other("could not create a unique temp file"))
}

#[cfg(test)]
mod tests {
    use super::super::{BgmFile, Catalog, EntryError, is_valid_id};
    use super::*;

    fn catalog(dir: &Path) -> Catalog {
        std::fs::create_dir_all(dir.join("voices")).unwrap();
        std::fs::create_dir_all(dir.join("bgm")).unwrap();
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data");
        for f in [super::super::VOICES_FILE, super::super::BGM_FILE] {
            std::fs::copy(repo.join(f), dir.join(f)).unwrap();
        }
        Catalog::new(dir)
    }

    /// Another writer's change that leaves the file's inode, size and
    /// mtime as they were (an equal-sized write within one timestamp tick,
    /// here made so with utimensat) is seen by an update, never overwritten.
    #[test]
    fn an_update_reads_the_file_not_a_cache_that_looks_current() {
        let dir = tempfile::tempdir().unwrap();
        let cat = catalog(dir.path());
        let path = cat.bgm.path().to_owned();
        let before = cat.bgm.read().unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        // The other writer: the same bytes but one track renamed to a name
        // of the same length, written in place, mtime put back.
        let text = std::fs::read_to_string(&path).unwrap();
        let old_name = &before.tracks[0].name;
        let new_name: String = old_name.chars().rev().collect::<String>().replace(' ', "_");
        assert_eq!(new_name.len(), old_name.len());
        assert_ne!(&new_name, old_name);
        let changed = text.replacen(&format!("\"{old_name}\""), &format!("\"{new_name}\""), 1);
        assert_eq!(changed.len(), text.len());
        {
            let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            std::io::Write::write_all(&mut &f, changed.as_bytes()).unwrap();
            f.set_times(std::fs::FileTimes::new().set_modified(meta.modified().unwrap())).unwrap();
        }
        let after = std::fs::metadata(&path).unwrap();
        assert_eq!(
            (after.ino(), after.size(), after.mtime(), after.mtime_nsec()),
            (meta.ino(), meta.size(), meta.mtime(), meta.mtime_nsec()),
            "the change is invisible to the stamp"
        );
        // This process now updates another field.
        cat.bgm
            .update(|d| {
                d.tracks[1].mood = "quiet".into();
                Ok::<_, ()>(())
            })
            .unwrap()
            .unwrap();
        let doc: BgmFile = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(doc.tracks[0].name, new_name, "the other writer's change was lost");
        assert_eq!(doc.tracks[1].mood, "quiet");
    }

    #[test]
    fn reads_are_cached_until_the_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let cat = catalog(dir.path());
        let a = cat.bgm.read().unwrap();
        let b = cat.bgm.read().unwrap();
        assert!(Arc::ptr_eq(&a, &b), "same version, same parsed document");
        // Another process (here: another store on the same file) writes.
        let other: JsonStore<BgmFile> = JsonStore::new(cat.bgm.path().to_owned());
        other
            .update(|d| {
                d.tracks.pop();
                Ok::<_, ()>(())
            })
            .unwrap()
            .unwrap();
        let c = cat.bgm.read().unwrap();
        assert_eq!(c.tracks.len(), a.tracks.len() - 1, "the change is seen");
    }

    #[test]
    fn a_corrupt_file_is_reported_refuses_writes_and_keeps_serving() {
        let dir = tempfile::tempdir().unwrap();
        let cat = catalog(dir.path());
        let good = cat.bgm.read().unwrap();
        std::fs::write(cat.bgm.path(), b"{\"tracks\": [ broken").unwrap();
        assert!(matches!(cat.bgm.read_strict(), Err(CatalogError::Corrupt { .. })));
        let served = cat.bgm.read().unwrap();
        assert_eq!(served.tracks.len(), good.tracks.len(), "last good version is served");
        let r = cat.bgm.update(|d| {
            d.tracks.clear();
            Ok::<_, ()>(())
        });
        assert!(matches!(r, Err(CatalogError::Corrupt { .. })));
        assert_eq!(std::fs::read(cat.bgm.path()).unwrap(), b"{\"tracks\": [ broken", "nothing overwritten");
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let (_, bgm) = rt.block_on(cat.health());
        assert_eq!(bgm.status, "unhealthy");
        assert!(bgm.error.unwrap().contains("not valid catalog JSON"));
        // A good version can be put back.
        cat.bgm.replace_with(&serde_json::to_vec(&*good).unwrap()).unwrap();
        assert!(cat.bgm.read_strict().is_ok());
        assert!(cat.bgm.replace_with(b"not json").is_err());
    }

    #[test]
    fn system_entries_cannot_be_removed_and_ids_are_unique() {
        let dir = tempfile::tempdir().unwrap();
        let cat = catalog(dir.path());
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            assert!(matches!(cat.remove_voice("ja_mei_female").await, Err(EntryError::System(_))));
            assert!(matches!(cat.remove_track("celebration_upbeat").await, Err(EntryError::System(_))));
            assert!(matches!(cat.remove_track("nope").await, Err(EntryError::NotFound(_))));
            let mut t = cat.track("celebration_upbeat").await.unwrap().unwrap();
            assert!(matches!(cat.add_track(t.clone()).await, Err(EntryError::Exists(_))));
            t.id = "user_abc".into();
            t.kind = super::super::EntryType::User;
            cat.add_track(t).await.unwrap();
            assert_eq!(cat.remove_track("user_abc").await.unwrap().id, "user_abc");
        });
    }

    #[test]
    fn client_ids_are_restricted() {
        assert!(is_valid_id("celebration_upbeat"));
        assert!(is_valid_id("user-123_x"));
        for bad in ["", "../x", "a/b", "..", "a b", "a\u{0}", "é", &"x".repeat(129)] {
            assert!(!is_valid_id(bad), "{bad:?}");
        }
    }

    mod fuzz {
        use proptest::prelude::*;

        use super::super::super::VoicesFile;
        use super::*;

        /// The shipped voices file, mutated: bytes flipped, the end cut off,
        /// or bytes inserted, so that most cases are almost valid JSON.
        fn mutated() -> impl Strategy<Value = Vec<u8>> {
            let base = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/voices/voices_metadata.json"))
                .unwrap();
            let n = base.len();
            prop_oneof![
                (0..n, any::<u8>()).prop_map({
                    let b = base.clone();
                    move |(i, v)| {
                        let mut b = b.clone();
                        b[i] = v;
                        b
                    }
                }),
                (0..n).prop_map({
                    let b = base.clone();
                    move |i| b[..i].to_vec()
                }),
                (0..n, proptest::collection::vec(any::<u8>(), 1..8)).prop_map({
                    let b = base.clone();
                    move |(i, ins)| {
                        let mut b = b.clone();
                        b.splice(i..i, ins);
                        b
                    }
                }),
                proptest::collection::vec(any::<u8>(), 0..256),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

            /// Whatever bytes a restore is given: no panic; either they parse
            /// and become the file, or they are refused and the file on disk
            /// is the previous good version, byte for byte.
            #[test]
            fn a_restore_of_any_bytes_keeps_the_file_valid(bytes in mutated()) {
                let dir = tempfile::tempdir().unwrap();
                let cat = catalog(dir.path());
                let path = cat.voices.path().to_owned();
                let before = std::fs::read(&path).unwrap();
                let store: JsonStore<VoicesFile> = JsonStore::new(path.clone());
                match store.replace_with(&bytes) {
                    Ok(()) => {
                        let doc = store.read_strict().unwrap();
                        let expected: VoicesFile = serde_json::from_slice(&bytes).unwrap();
                        prop_assert_eq!(&*doc, &expected);
                    }
                    Err(CatalogError::Corrupt { .. }) => {
                        prop_assert_eq!(std::fs::read(&path).unwrap(), before);
                    }
                    Err(other) => prop_assert!(false, "unexpected error {other}"),
                }
            }
        }
    }
}
