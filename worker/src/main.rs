//! `worker`: runs tayori's video jobs. Configuration comes from `TAYORI_*`
//! environment variables (see the README's table).

use worker::WorkerConfig;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    shared::telemetry::init();
    let cfg = WorkerConfig::from_env()?;
    worker::run(cfg, shared::signal::shutdown()).await
}
