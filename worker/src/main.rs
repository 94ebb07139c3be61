//! `worker [--stages image,voice,render]`: runs tayori's video jobs (every
//! stage unless told otherwise). Configuration comes from `TAYORI_*`
//! environment variables (see the README's table). The first SIGTERM or
//! Ctrl-C stops it gracefully (see `worker::run`); a second one at once.

use std::process::ExitCode;

use worker::WorkerConfig;

fn main() -> ExitCode {
    worker::limit_malloc_arenas();
    shared::telemetry::init();
    match config() {
        Ok(cfg) => shared::signal::run_until_stopped(|stop| worker::run(cfg, stop)),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn config() -> anyhow::Result<WorkerConfig> {
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
    Ok(cfg)
}
