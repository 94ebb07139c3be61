//! `gateway`: the HTTP front of tayori. Configuration comes from `TAYORI_*`
//! environment variables (see the README's table).
//!
//! ```text
//! gateway                          serve (the default)
//! gateway backup                   back up the catalog files (local + S3)
//! gateway restore [--date YYYYMMDD] restore the newest (or a dated) backup
//! ```

use std::process::ExitCode;

use anyhow::Context;
use gateway::GatewayConfig;
use shared::catalog::Catalog;

const USAGE: &str = "usage: gateway [serve | backup | restore [--date YYYYMMDD]]";

fn main() -> ExitCode {
    shared::telemetry::init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cfg = match GatewayConfig::from_env() {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    if matches!(args.iter().map(String::as_str).collect::<Vec<_>>().as_slice(), [] | ["serve"]) {
        // The first SIGTERM or Ctrl-C drains gracefully, a second one stops at once.
        return shared::signal::run_until_stopped(|stop| gateway::run(cfg, stop));
    }
    let outcome = tokio::runtime::Runtime::new()
        .context("starting the async runtime")
        .and_then(|rt| rt.block_on(command(cfg, &args)));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The one-shot subcommands.
async fn command(cfg: GatewayConfig, args: &[String]) -> anyhow::Result<()> {
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
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
