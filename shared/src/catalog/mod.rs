//! The voice-profile and BGM catalogs: two JSON files under the data
//! directory, in the original design's schemas.
//!
//! Writes take an exclusive lock on a separate `.lock` file (a lock on the
//! data file itself would not survive the rename), write a temp file, fsync
//! it, rename it over the original and fsync the directory, so readers never
//! see a half-written file and concurrent writers never lose an update.
//! All of it is blocking I/O: async callers use the `*_async` methods,
//! which run it on the blocking pool.

pub mod backup;
mod store;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub use store::{CatalogError, JsonStore};

pub const VOICES_FILE: &str = "voices/voices_metadata.json";
pub const BGM_FILE: &str = "bgm/bgm_metadata.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryType {
    System,
    Custom,
    User,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VoiceMetadata {
    #[serde(default)]
    pub description: String,
    pub sample_rate: Option<u32>,
    pub duration_seconds: Option<f64>,
    /// Synthesis engine of the base voice: `openjtalk` or `flite`.
    pub engine: String,
    /// Engine voice: an `.htsvoice` path relative to the data directory
    /// (Open JTalk) or a built-in voice name (flite).
    pub base_voice: String,
    /// Fields this version does not know are kept as they are.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VoiceProfile {
    pub id: String,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: EntryType,
    pub language: String,
    pub gender: String,
    pub embedding_path: String,
    pub reference_audio_path: String,
    pub preview_url: String,
    pub created_at: String,
    pub metadata: VoiceMetadata,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VoicesFile {
    pub profiles: Vec<VoiceProfile>,
    pub last_updated: String,
    pub version: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BgmMetadata {
    #[serde(default)]
    pub description: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub genre: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seamless_loop: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_filename: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uploaded_by: Option<String>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BgmTrack {
    pub id: String,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: EntryType,
    /// Relative to the data directory, and also the track's S3 key.
    pub file_path: String,
    pub preview_url: String,
    pub duration_seconds: f64,
    pub bpm: Option<u32>,
    pub mood: String,
    pub volume_db: f64,
    pub created_at: String,
    pub metadata: BgmMetadata,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BgmFile {
    pub tracks: Vec<BgmTrack>,
    pub last_updated: String,
    pub version: String,
}

/// A catalog document: something with a `last_updated` stamp.
pub trait Document: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {
    fn touch(&mut self, now: &str);
    fn last_updated(&self) -> &str;
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Document for VoicesFile {
    fn touch(&mut self, now: &str) {
        self.last_updated = now.to_owned();
    }
    fn last_updated(&self) -> &str {
        &self.last_updated
    }
    fn len(&self) -> usize {
        self.profiles.len()
    }
}

impl Document for BgmFile {
    fn touch(&mut self, now: &str) {
        self.last_updated = now.to_owned();
    }
    fn last_updated(&self) -> &str {
        &self.last_updated
    }
    fn len(&self) -> usize {
        self.tracks.len()
    }
}

/// Health of one catalog file, for `/health`.
#[derive(Debug, Clone, Serialize)]
pub struct FileHealth {
    pub status: &'static str,
    pub count: Option<usize>,
    pub last_updated: Option<String>,
    /// What is wrong, in a word (`unreadable`, `corrupt`); the detail,
    /// which names paths, is in `error` for the logs only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<&'static str>,
    #[serde(skip)]
    pub error: Option<String>,
}

/// Both catalogs of one data directory.
#[derive(Debug, Clone)]
pub struct Catalog {
    data_dir: Arc<PathBuf>,
    pub voices: JsonStore<VoicesFile>,
    pub bgm: JsonStore<BgmFile>,
}

impl Catalog {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        let data_dir = data_dir.into();
        Catalog {
            voices: JsonStore::new(data_dir.join(VOICES_FILE)),
            bgm: JsonStore::new(data_dir.join(BGM_FILE)),
            data_dir: Arc::new(data_dir),
        }
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// A path from the catalog (relative to the data directory) made absolute.
    /// Refuses paths that would leave the data directory.
    pub fn resolve(&self, relative: &str) -> Option<PathBuf> {
        let rel = Path::new(relative);
        if rel.is_absolute() || rel.components().any(|c| !matches!(c, std::path::Component::Normal(_))) {
            return None;
        }
        Some(self.data_dir.join(rel))
    }

    pub async fn voice(&self, id: &str) -> Result<Option<VoiceProfile>, CatalogError> {
        let store = self.voices.clone();
        let id = id.to_owned();
        blocking(move || Ok(store.read()?.profiles.iter().find(|p| p.id == id).cloned())).await
    }

    pub async fn track(&self, id: &str) -> Result<Option<BgmTrack>, CatalogError> {
        let store = self.bgm.clone();
        let id = id.to_owned();
        blocking(move || Ok(store.read()?.tracks.iter().find(|t| t.id == id).cloned())).await
    }

    pub async fn voices_async(&self) -> Result<Arc<VoicesFile>, CatalogError> {
        let store = self.voices.clone();
        blocking(move || store.read()).await
    }

    pub async fn bgm_async(&self) -> Result<Arc<BgmFile>, CatalogError> {
        let store = self.bgm.clone();
        blocking(move || store.read()).await
    }

    /// Add a voice profile; its id must be new.
    pub async fn add_voice(&self, profile: VoiceProfile) -> Result<(), EntryError> {
        let store = self.voices.clone();
        blocking_entry(move || {
            store.update(|doc| {
                if doc.profiles.iter().any(|p| p.id == profile.id) {
                    return Err(EntryError::Exists(profile.id.clone()));
                }
                doc.profiles.push(profile);
                Ok(())
            })?
        })
        .await
    }

    /// Add a music track; its id must be new.
    pub async fn add_track(&self, track: BgmTrack) -> Result<(), EntryError> {
        let store = self.bgm.clone();
        blocking_entry(move || {
            store.update(|doc| {
                if doc.tracks.iter().any(|t| t.id == track.id) {
                    return Err(EntryError::Exists(track.id.clone()));
                }
                doc.tracks.push(track);
                Ok(())
            })?
        })
        .await
    }

    /// Remove a custom voice profile; returns it (its files are the caller's
    /// to remove). System profiles cannot be removed.
    pub async fn remove_voice(&self, id: &str) -> Result<VoiceProfile, EntryError> {
        let store = self.voices.clone();
        let id = id.to_owned();
        blocking_entry(move || {
            store.update(|doc| {
                let i = doc.profiles.iter().position(|p| p.id == id).ok_or_else(|| EntryError::NotFound(id.clone()))?;
                if doc.profiles[i].kind == EntryType::System {
                    return Err(EntryError::System(id.clone()));
                }
                Ok(doc.profiles.remove(i))
            })?
        })
        .await
    }

    /// Remove a user music track; returns it. System tracks cannot be removed.
    pub async fn remove_track(&self, id: &str) -> Result<BgmTrack, EntryError> {
        let store = self.bgm.clone();
        let id = id.to_owned();
        blocking_entry(move || {
            store.update(|doc| {
                let i = doc.tracks.iter().position(|t| t.id == id).ok_or_else(|| EntryError::NotFound(id.clone()))?;
                if doc.tracks[i].kind == EntryType::System {
                    return Err(EntryError::System(id.clone()));
                }
                Ok(doc.tracks.remove(i))
            })?
        })
        .await
    }

    /// Write a file of an entry (an embedding) under the data directory,
    /// atomically (temp file, fsync, rename).
    pub async fn write_file(&self, relative: &str, bytes: Vec<u8>) -> std::io::Result<()> {
        let Some(path) = self.resolve(relative) else {
            return Err(std::io::Error::other(format!("{relative:?} is outside the data directory")));
        };
        tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let dir = path.parent().expect("resolved paths have a parent");
            std::fs::create_dir_all(dir)?;
            let tmp = dir.join(format!(".{}.tmp", uuid::Uuid::new_v4().simple()));
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        })
        .await
        .map_err(std::io::Error::other)?
    }

    /// Delete a file of an entry (an embedding, a local track) under the data
    /// directory; a missing file is not an error.
    pub async fn remove_file(&self, relative: &str) -> std::io::Result<()> {
        let Some(path) = self.resolve(relative) else {
            return Err(std::io::Error::other(format!("{relative:?} is outside the data directory")));
        };
        match tokio::fs::remove_file(&path).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Health of both files: read strictly, so a corrupt file is reported
    /// even while readers are served its last good version.
    pub async fn health(&self) -> (FileHealth, FileHealth) {
        fn h<T: Document>(r: Result<Arc<T>, CatalogError>) -> FileHealth {
            match r {
                Ok(doc) => FileHealth {
                    status: "healthy",
                    count: Some(doc.len()),
                    last_updated: Some(doc.last_updated().to_owned()),
                    problem: None,
                    error: None,
                },
                Err(e) => FileHealth {
                    status: "unhealthy",
                    count: None,
                    last_updated: None,
                    problem: Some(if matches!(e, CatalogError::Corrupt { .. }) { "corrupt" } else { "unreadable" }),
                    error: Some(e.to_string()),
                },
            }
        }
        let (v, b) = (self.voices.clone(), self.bgm.clone());
        let voices = blocking(move || Ok(v.read_strict())).await.unwrap_or_else(Err);
        let bgm = blocking(move || Ok(b.read_strict())).await.unwrap_or_else(Err);
        (h(voices), h(bgm))
    }
}

/// Why a catalog entry operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum EntryError {
    #[error("no entry with id {0:?}")]
    NotFound(String),
    #[error("{0:?} is a system entry and cannot be changed")]
    System(String),
    #[error("an entry with id {0:?} already exists")]
    Exists(String),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
}

/// Ids that clients may send: 1 to 128 ASCII letters, digits, `_` or `-`
/// (no `/`, `..`, spaces or control characters).
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

async fn blocking_entry<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, EntryError> + Send + 'static,
) -> Result<T, EntryError> {
    crate::rt::blocking(f).await.map_err(|_| EntryError::Catalog(CatalogError::Cancelled))?
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, CatalogError> + Send + 'static,
) -> Result<T, CatalogError> {
    crate::rt::blocking(f).await.map_err(|_| CatalogError::Cancelled)?
}

/// RFC 3339 timestamp as used in the catalog files.
pub fn timestamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(dir: &Path) -> Catalog {
        std::fs::create_dir_all(dir.join("voices")).unwrap();
        std::fs::create_dir_all(dir.join("bgm")).unwrap();
        std::fs::write(
            dir.join(VOICES_FILE),
            r#"{"profiles":[],"last_updated":"2025-01-01T00:00:00Z","version":"1.0"}"#,
        )
        .unwrap();
        std::fs::write(dir.join(BGM_FILE), r#"{"tracks":[],"last_updated":"2025-01-01T00:00:00Z","version":"1.0"}"#)
            .unwrap();
        Catalog::new(dir)
    }

    #[test]
    fn the_shipped_catalog_parses_and_keeps_every_field() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data");
        let cat = Catalog::new(&dir);
        let voices = cat.voices.read().unwrap();
        assert!(voices.profiles.iter().any(|p| p.language == "ja" && p.kind == EntryType::System));
        assert!(voices.profiles.iter().any(|p| p.language == "en" && p.kind == EntryType::System));
        let bgm = cat.bgm.read().unwrap();
        assert!(bgm.tracks.iter().filter(|t| t.kind == EntryType::System).count() >= 2);
        // Serializing again loses nothing the file had.
        let raw: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join(BGM_FILE)).unwrap()).unwrap();
        assert_eq!(serde_json::to_value(&*bgm).unwrap(), raw);
        let raw: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join(VOICES_FILE)).unwrap()).unwrap();
        assert_eq!(serde_json::to_value(&*voices).unwrap(), raw);
    }

    #[test]
    fn concurrent_updates_from_threads_are_all_kept() {
        let dir = tempfile::tempdir().unwrap();
        let cat = fixture(dir.path());
        std::thread::scope(|s| {
            for t in 0..4 {
                let store = cat.bgm.clone();
                s.spawn(move || {
                    for i in 0..25 {
                        store
                            .update(|doc| {
                                doc.tracks.push(BgmTrack {
                                    id: format!("t{t}-{i}"),
                                    name: "x".into(),
                                    kind: EntryType::User,
                                    file_path: "bgm/user/x.mp3".into(),
                                    preview_url: String::new(),
                                    duration_seconds: 1.0,
                                    bpm: None,
                                    mood: "calm".into(),
                                    volume_db: -14.0,
                                    created_at: String::new(),
                                    metadata: BgmMetadata {
                                        description: String::new(),
                                        genre: None,
                                        seamless_loop: None,
                                        original_filename: None,
                                        uploaded_by: None,
                                        extra: Default::default(),
                                    },
                                });
                                Ok::<_, ()>(())
                            })
                            .unwrap()
                            .unwrap();
                    }
                });
            }
        });
        assert_eq!(cat.bgm.read().unwrap().tracks.len(), 100);
        // No temp files are left behind.
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("bgm"))
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty());
    }

    #[test]
    fn a_failed_update_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let cat = fixture(dir.path());
        let before = std::fs::read(cat.voices.path()).unwrap();
        let r = cat.voices.update(|_| Err::<(), _>("no")).unwrap();
        assert_eq!(r, Err("no"));
        assert_eq!(std::fs::read(cat.voices.path()).unwrap(), before);
    }

    #[test]
    fn resolve_refuses_paths_outside_the_data_dir() {
        let cat = Catalog::new("/srv/data");
        assert_eq!(cat.resolve("bgm/system/a.mp3"), Some(PathBuf::from("/srv/data/bgm/system/a.mp3")));
        assert_eq!(cat.resolve("../etc/passwd"), None);
        assert_eq!(cat.resolve("/etc/passwd"), None);
    }
}
