//! `gateway`: the HTTP front of tayori. Configuration comes from `TAYORI_*`
//! environment variables (see the README's table).
//!
//! ```text
//! gateway                          serve (the default)
//! gateway backup                   back up the catalog files (local + S3)
//! gateway restore [--date YYYYMMDD] restore the newest (or a dated) backup
//! ```

use anyhow::Context;
use gateway::GatewayConfig;
use shared::catalog::Catalog;

const USAGE: &str = "usage: gateway [serve | backup | restore [--date YYYYMMDD]]";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    shared::telemetry::init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cfg = GatewayConfig::from_env()?;
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        [] | ["serve"] => gateway::run(cfg, shared::signal::shutdown()).await,
        ["backup"] => {
            let storage = gateway::cli_storage(&cfg);
            let catalog = Catalog::new(&cfg.data_dir);
            let s3 = match storage.check().await {
                Ok(()) => Some(&storage),
                Err(e) => {
                    eprintln!("S3 not reachable ({e}); backing up locally only");
                    None
                }
            };
            let date = gateway::backup::backup_now(&catalog, s3).await?;
            println!("catalog backed up as {}", date.format("%Y%m%d"));
            Ok(())
        }
        ["restore", rest @ ..] => {
            let date = match rest {
                [] => None,
                ["--date", d] => Some(
                    chrono::NaiveDate::parse_from_str(d, "%Y%m%d").with_context(|| format!("{d} is not YYYYMMDD"))?,
                ),
                _ => anyhow::bail!(USAGE),
            };
            let storage = gateway::cli_storage(&cfg);
            let catalog = Catalog::new(&cfg.data_dir);
            let s3 = storage.check().await.is_ok().then_some(&storage);
            let restored = gateway::backup::restore(&catalog, s3, date).await?;
            println!("catalog restored from the backup of {}", restored.format("%Y%m%d"));
            Ok(())
        }
        _ => anyhow::bail!(USAGE),
    }
}
