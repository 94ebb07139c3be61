//! The one way tayori runs a subprocess: no shell, arguments as `OsStr`,
//! stdin closed, stdout and stderr drained together, killed when dropped or
//! when its timeout passes, and errors that carry the command and the tail
//! of its stderr.

use std::ffi::{OsStr, OsString};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("{program} could not be started: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} did not finish within {}s and was killed", timeout.as_secs())]
    Timeout { program: String, timeout: Duration },
    #[error("{program} failed ({status}): {stderr_tail}")]
    Failed { program: String, status: String, stderr_tail: String },
}

/// Keep the last `max` bytes of a tool's stderr, on a char boundary.
pub fn tail(bytes: &[u8], max: usize) -> String {
    let s = String::from_utf8_lossy(bytes);
    let s = s.trim();
    if s.len() <= max {
        return s.to_owned();
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    format!("…{}", &s[start..])
}

/// Run `program args…` to completion within `timeout`; returns its stdout.
pub async fn run<I, S>(program: &str, args: I, cwd: Option<&Path>, timeout: Duration) -> Result<Vec<u8>, ProcessError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run_full(program, args, cwd, timeout).await.map(|(stdout, _)| stdout)
}

/// Like [`run`], returning stdout and stderr (for tools that report on stderr).
pub async fn run_full<I, S>(
    program: &str,
    args: I,
    cwd: Option<&Path>,
    timeout: Duration,
) -> Result<(Vec<u8>, Vec<u8>), ProcessError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run_inner::<_, _, Vec<u8>>(program, args, cwd, None, timeout).await
}

/// Like [`run`], with stdin fed from `input` (chunks written in order, then
/// closed). If the program exits early, the rest of the input is dropped and
/// its exit status decides the result.
pub async fn run_fed<I, S, B>(
    program: &str,
    args: I,
    input: tokio::sync::mpsc::Receiver<B>,
    timeout: Duration,
) -> Result<Vec<u8>, ProcessError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
    B: AsRef<[u8]>,
{
    run_inner(program, args, None, Some(input), timeout).await.map(|(stdout, _)| stdout)
}

async fn run_inner<I, S, B>(
    program: &str,
    args: I,
    cwd: Option<&Path>,
    input: Option<tokio::sync::mpsc::Receiver<B>>,
    timeout: Duration,
) -> Result<(Vec<u8>, Vec<u8>), ProcessError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
    B: AsRef<[u8]>,
{
    use tokio::io::AsyncWriteExt;
    let args: Vec<OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let mut cmd = Command::new(program);
    let stdin = if input.is_some() { Stdio::piped() } else { Stdio::null() };
    cmd.args(&args).stdin(stdin).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    let span = tracing::debug_span!("process", program, args = ?args);
    let _enter = span.enter();
    let mut child = cmd.spawn().map_err(|source| ProcessError::Spawn { program: program.to_owned(), source })?;
    drop(_enter);
    let stdin = child.stdin.take();
    let feed = async move {
        if let (Some(mut input), Some(mut stdin)) = (input, stdin) {
            while let Some(chunk) = input.recv().await {
                if stdin.write_all(chunk.as_ref()).await.is_err() {
                    break; // The program stopped reading; its status tells why.
                }
            }
        }
    };
    // wait_with_output drains both pipes concurrently; dropping it (on
    // timeout, or when the job is cancelled) kills the child.
    let both = async { tokio::join!(feed, child.wait_with_output()).1 };
    let out = match tokio::time::timeout(timeout, both).await {
        Ok(Ok(out)) => out,
        Ok(Err(source)) => return Err(ProcessError::Spawn { program: program.to_owned(), source }),
        Err(_) => return Err(ProcessError::Timeout { program: program.to_owned(), timeout }),
    };
    if !out.status.success() {
        return Err(ProcessError::Failed {
            program: program.to_owned(),
            status: out.status.to_string(),
            stderr_tail: tail(&out.stderr, 600),
        });
    }
    Ok((out.stdout, out.stderr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_process_past_its_timeout_is_killed() {
        let t0 = std::time::Instant::now();
        let err = run("sleep", ["30"], None, Duration::from_millis(200)).await.unwrap_err();
        assert!(matches!(err, ProcessError::Timeout { .. }), "{err}");
        assert!(t0.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn failure_carries_the_stderr_tail() {
        let err = run("sh", ["-c", "echo boom >&2; exit 3"], None, Duration::from_secs(5)).await.unwrap_err();
        match err {
            ProcessError::Failed { stderr_tail, status, .. } => {
                assert_eq!(stderr_tail, "boom");
                assert!(status.contains('3'));
            }
            other => panic!("{other}"),
        }
    }

    #[tokio::test]
    async fn a_missing_program_is_a_spawn_error() {
        let err = run("definitely-not-a-program", ["x"], None, Duration::from_secs(1)).await.unwrap_err();
        assert!(matches!(err, ProcessError::Spawn { .. }));
    }

    #[test]
    fn tail_keeps_the_end_on_a_char_boundary() {
        assert_eq!(tail(b"  short \n", 10), "short");
        let t = tail("あいうえお".as_bytes(), 4);
        assert!(t.ends_with('お'), "{t}");
    }
}
