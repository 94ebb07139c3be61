//! Backups of the catalog files: dated copies under `data/backups/{YYYYMMDD}/`
//! (kept 7 days) and in S3 at `backups/metadata/{YYYYMMDD}/`, and restore.

use std::path::{Path, PathBuf};

use chrono::NaiveDate;

use super::{BGM_FILE, Catalog, CatalogError, VOICES_FILE};

pub const BACKUP_DIR: &str = "backups";
pub const KEEP_DAYS: i64 = 7;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error("backup I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no backup{}", .0.map(|d| format!(" for {}", d.format("%Y%m%d"))).unwrap_or_default())]
    NotFound(Option<NaiveDate>),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BackupError + '_ {
    move |source| BackupError::Io { path: path.to_owned(), source }
}

/// The two catalog files, by their name inside a backup.
pub fn files() -> [(&'static str, &'static str); 2] {
    [("voices_metadata.json", VOICES_FILE), ("bgm_metadata.json", BGM_FILE)]
}

pub fn dir_for(data_dir: &Path, date: NaiveDate) -> PathBuf {
    data_dir.join(BACKUP_DIR).join(date.format("%Y%m%d").to_string())
}

/// Copy both files (only if they parse) into today's backup directory;
/// returns the files written (name in backup, path).
pub fn backup_local(catalog: &Catalog, date: NaiveDate) -> Result<Vec<(String, PathBuf)>, BackupError> {
    // Refuse to back up a broken file over a good backup.
    catalog.voices.read_strict()?;
    catalog.bgm.read_strict()?;
    let dir = dir_for(catalog.data_dir(), date);
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let mut written = Vec::new();
    for (name, rel) in files() {
        let src = catalog.data_dir().join(rel);
        let bytes = std::fs::read(&src).map_err(io(&src))?;
        let dst = dir.join(name);
        // Unique, as several gateways may share one data directory.
        let tmp = dir.join(format!(".{name}.{}.tmp", uuid::Uuid::new_v4().simple()));
        std::fs::write(&tmp, &bytes).map_err(io(&tmp))?;
        std::fs::rename(&tmp, &dst).map_err(io(&dst))?;
        written.push((name.to_owned(), dst));
    }
    Ok(written)
}

/// Dates of the local backups, newest first.
pub fn local_dates(data_dir: &Path) -> Vec<NaiveDate> {
    let mut dates: Vec<NaiveDate> = std::fs::read_dir(data_dir.join(BACKUP_DIR))
        .map(|d| {
            d.flatten()
                .filter_map(|e| NaiveDate::parse_from_str(&e.file_name().to_string_lossy(), "%Y%m%d").ok())
                .collect()
        })
        .unwrap_or_default();
    dates.sort_unstable_by(|a, b| b.cmp(a));
    dates
}

/// Remove local backups older than [`KEEP_DAYS`]; returns how many.
pub fn prune_local(data_dir: &Path, today: NaiveDate) -> usize {
    let mut n = 0;
    for d in local_dates(data_dir) {
        if (today - d).num_days() > KEEP_DAYS {
            let dir = dir_for(data_dir, d);
            if std::fs::remove_dir_all(&dir).is_ok() {
                n += 1;
            }
        }
    }
    n
}

/// Restore both files from the local backup of `date` (or the newest one).
/// Works on corrupt files too; each restored file is checked to parse.
pub fn restore_local(catalog: &Catalog, date: Option<NaiveDate>) -> Result<NaiveDate, BackupError> {
    let date = match date {
        Some(d) => d,
        None => *local_dates(catalog.data_dir()).first().ok_or(BackupError::NotFound(None))?,
    };
    let dir = dir_for(catalog.data_dir(), date);
    if !dir.is_dir() {
        return Err(BackupError::NotFound(Some(date)));
    }
    let voices = std::fs::read(dir.join("voices_metadata.json")).map_err(io(&dir))?;
    let bgm = std::fs::read(dir.join("bgm_metadata.json")).map_err(io(&dir))?;
    catalog.voices.replace_with(&voices)?;
    catalog.bgm.replace_with(&bgm)?;
    Ok(date)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backup_prune_and_restore() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data");
        for (_, rel) in files() {
            std::fs::create_dir_all(dir.path().join(rel).parent().unwrap()).unwrap();
            std::fs::copy(repo.join(rel), dir.path().join(rel)).unwrap();
        }
        let cat = Catalog::new(dir.path());
        let day = |s: &str| NaiveDate::parse_from_str(s, "%Y%m%d").unwrap();
        backup_local(&cat, day("20261101")).unwrap();
        backup_local(&cat, day("20261120")).unwrap();
        let good = std::fs::read(cat.bgm.path()).unwrap();
        // Hand-broken file: no backup of it, but a restore brings it back.
        std::fs::write(cat.bgm.path(), b"{oops").unwrap();
        assert!(backup_local(&cat, day("20261121")).is_err());
        assert_eq!(local_dates(dir.path()), vec![day("20261120"), day("20261101")]);
        assert_eq!(restore_local(&cat, None).unwrap(), day("20261120"));
        assert_eq!(cat.bgm.read_strict().unwrap().tracks.len(), 5);
        assert_eq!(std::fs::read(cat.bgm.path()).unwrap().len(), good.len());
        assert!(matches!(restore_local(&cat, Some(day("20250101"))), Err(BackupError::NotFound(Some(_)))));
        // Older than 7 days goes.
        assert_eq!(prune_local(dir.path(), day("20261122")), 1);
        assert_eq!(local_dates(dir.path()), vec![day("20261120")]);
    }
}
