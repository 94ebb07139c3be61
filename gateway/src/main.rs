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

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,tower_http=info"));
    if std::env::var("LOG_FORMAT").as_deref() == Ok("json") {
        tracing_subscriber::fmt().json().with_env_filter(filter).init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {},
        _ = term.recv() => {},
    }
    tracing::info!("shutting down");
}

const USAGE: &str = "usage: gateway [serve | backup | restore [--date YYYYMMDD]]";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_tracing();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cfg = GatewayConfig::from_env()?;
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        [] | ["serve"] => gateway::run(cfg, shutdown_signal()).await,
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
