//! Catalog backups: the `gateway backup` / `gateway restore` commands and
//! the gateway's daily backup job. Local copies live under
//! `data/backups/{YYYYMMDD}/` (7 days); S3 copies at
//! `backups/metadata/{YYYYMMDD}/` (expired by the bucket lifecycle).

use std::time::Duration;

use chrono::{NaiveDate, Utc};
use shared::catalog::Catalog;
use shared::catalog::backup::{self, BackupError};
use shared::storage::Storage;

fn s3_key(date: NaiveDate, name: &str) -> String {
    format!("backups/metadata/{}/{name}", date.format("%Y%m%d"))
}

/// Back up both catalog files locally and to S3, and prune old local copies.
pub async fn backup_now(catalog: &Catalog, storage: Option<&Storage>) -> anyhow::Result<NaiveDate> {
    let today = Utc::now().date_naive();
    let cat = catalog.clone();
    let written = tokio::task::spawn_blocking(move || backup::backup_local(&cat, today)).await??;
    if let Some(storage) = storage {
        for (name, path) in &written {
            storage.put_file(&s3_key(today, name), path, "application/json").await?;
        }
    }
    let dir = catalog.data_dir().to_owned();
    let pruned = tokio::task::spawn_blocking(move || backup::prune_local(&dir, today)).await?;
    tracing::info!(date = %today, files = written.len(), s3 = storage.is_some(), pruned, "catalog backed up");
    Ok(today)
}

/// Restore from the local backup of `date` (or the newest); a date that is
/// only in S3 is fetched first.
pub async fn restore(
    catalog: &Catalog,
    storage: Option<&Storage>,
    date: Option<NaiveDate>,
) -> anyhow::Result<NaiveDate> {
    if let (Some(d), Some(storage)) = (date, storage) {
        let dir = backup::dir_for(catalog.data_dir(), d);
        if !dir.is_dir() {
            tokio::fs::create_dir_all(&dir).await?;
            for (name, _) in backup::files() {
                storage.get_to_file(&s3_key(d, name), &dir.join(name)).await?;
            }
        }
    }
    let cat = catalog.clone();
    let restored = tokio::task::spawn_blocking(move || backup::restore_local(&cat, date)).await?;
    match restored {
        Ok(d) => Ok(d),
        Err(e @ BackupError::NotFound(_)) => Err(anyhow::anyhow!("{e}: nothing restored")),
        Err(e) => Err(e.into()),
    }
}

/// Back up once at start (if today's copy is missing) and then every `interval`.
pub async fn daily(catalog: Catalog, storage: Storage, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let today = Utc::now().date_naive();
        if backup::local_dates(catalog.data_dir()).first() == Some(&today) && interval >= Duration::from_secs(86_400) {
            continue;
        }
        if let Err(e) = backup_now(&catalog, Some(&storage)).await {
            tracing::error!(error = %e, "catalog backup failed");
        }
    }
}
