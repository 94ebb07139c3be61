//! `worker [--stages image,voice,render]`: runs tayori's video jobs (every
//! stage unless told otherwise). Configuration comes from `TAYORI_*`
//! environment variables (see the README's table).

use worker::WorkerConfig;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    shared::telemetry::init();
    let mut cfg = WorkerConfig::from_env()?;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let list = match arg.strip_prefix("--stages=") {
            Some(v) => v.to_owned(),
            None if arg == "--stages" => args.next().ok_or_else(|| anyhow::anyhow!("--stages needs a list"))?,
            None => anyhow::bail!("unknown argument {arg:?} (usage: worker [--stages image,voice,render])"),
        };
        cfg.stages = shared::job::Stage::parse_list(&list).map_err(|e| anyhow::anyhow!(e))?;
    }
    worker::run(cfg, shared::signal::shutdown()).await
}
