//! The one way tayori runs a subprocess: no shell, stdin closed (or fed by
//! the worker), stdout and stderr drained together, killed when dropped or
//! when its timeout passes, and errors that carry the command and the tail
//! of its stderr.
//!
//! **No caller's text is ever a command-line argument.** Arguments are
//! [`Arg`]s, and an `Arg` can only be made from a string literal (a
//! `&'static str`: the worker's own constants), a path the worker chose, a
//! number, or [`Arg::composed`] text the worker built from those (filter
//! graphs). There is no conversion from `String` or a borrowed `&str`, so a
//! message, a name or a file name cannot be passed by accident; text a tool
//! must read goes into a file the worker wrote, or onto its stdin. As a
//! second line of defence, `run` refuses any path or composed argument that
//! starts with `-` (it would be read as an option).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
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
    /// An argument broke the rules above; nothing was started.
    #[error("{program} was not started: {reason}")]
    Refused { program: String, reason: String },
}

/// One command-line argument of a subprocess (see the module docs for what
/// it can be made from).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arg {
    value: OsString,
    /// Made from a path or composed text, not a literal: checked before use.
    checked: bool,
}

impl Arg {
    /// A number, written the way Rust's `Display` writes it.
    pub fn num(n: impl Number) -> Arg {
        Arg { value: n.to_string().into(), checked: false }
    }

    /// Text the worker composed from its own constants, numbers and paths
    /// (an ffmpeg filter graph, `WxH`): never a caller's text.
    pub fn composed(text: String) -> Arg {
        Arg { value: text.into(), checked: true }
    }

    pub fn as_os_str(&self) -> &std::ffi::OsStr {
        &self.value
    }
}

/// Numbers an [`Arg`] can be made from.
pub trait Number: std::fmt::Display {}
impl Number for u16 {}
impl Number for u32 {}
impl Number for u64 {}
impl Number for usize {}
impl Number for i32 {}
impl Number for i64 {}
impl Number for f64 {}

impl From<&'static str> for Arg {
    fn from(s: &'static str) -> Arg {
        Arg { value: s.into(), checked: false }
    }
}

impl From<&Path> for Arg {
    fn from(p: &Path) -> Arg {
        Arg { value: p.as_os_str().to_owned(), checked: true }
    }
}

impl From<&PathBuf> for Arg {
    fn from(p: &PathBuf) -> Arg {
        Arg::from(p.as_path())
    }
}

impl From<PathBuf> for Arg {
    fn from(p: PathBuf) -> Arg {
        Arg { value: p.into_os_string(), checked: true }
    }
}

impl From<&Arg> for Arg {
    fn from(a: &Arg) -> Arg {
        a.clone()
    }
}

/// `args!["-i", &path, Arg::num(3)]`: a `Vec<Arg>`, each item converted
/// with `Arg::from`.
#[macro_export]
macro_rules! args {
    ($($a:expr),* $(,)?) => {
        vec![$($crate::process::Arg::from($a)),*]
    };
}

/// The check `run` makes before starting anything.
fn check_args(program: &str, args: &[Arg]) -> Result<(), ProcessError> {
    for a in args.iter().filter(|a| a.checked) {
        if a.value.as_encoded_bytes().first() == Some(&b'-') {
            return Err(ProcessError::Refused {
                program: program.to_owned(),
                reason: format!("argument {:?} would be read as an option", a.value),
            });
        }
    }
    Ok(())
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
pub async fn run(
    program: &'static str,
    args: impl IntoIterator<Item = Arg>,
    cwd: Option<&Path>,
    timeout: Duration,
) -> Result<Vec<u8>, ProcessError> {
    run_full(program, args, cwd, timeout).await.map(|(stdout, _)| stdout)
}

/// Like [`run`], returning stdout and stderr (for tools that report on stderr).
pub async fn run_full(
    program: &'static str,
    args: impl IntoIterator<Item = Arg>,
    cwd: Option<&Path>,
    timeout: Duration,
) -> Result<(Vec<u8>, Vec<u8>), ProcessError> {
    run_inner::<Vec<u8>>(program, args, cwd, None, timeout).await
}

/// Like [`run`], with stdin fed from `input` (chunks written in order, then
/// closed). If the program exits early, the rest of the input is dropped and
/// its exit status decides the result. This is how a caller's text reaches
/// a tool that reads text.
pub async fn run_fed<B: AsRef<[u8]>>(
    program: &'static str,
    args: impl IntoIterator<Item = Arg>,
    input: tokio::sync::mpsc::Receiver<B>,
    timeout: Duration,
) -> Result<Vec<u8>, ProcessError> {
    run_inner(program, args, None, Some(input), timeout).await.map(|(stdout, _)| stdout)
}

/// [`run_fed`] with all of `input` on stdin.
pub async fn run_with_stdin(
    program: &'static str,
    args: impl IntoIterator<Item = Arg>,
    input: Vec<u8>,
    timeout: Duration,
) -> Result<Vec<u8>, ProcessError> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.try_send(input).expect("an empty channel of one has room");
    drop(tx);
    run_fed(program, args, rx, timeout).await
}

async fn run_inner<B: AsRef<[u8]>>(
    program: &'static str,
    args: impl IntoIterator<Item = Arg>,
    cwd: Option<&Path>,
    input: Option<tokio::sync::mpsc::Receiver<B>>,
    timeout: Duration,
) -> Result<(Vec<u8>, Vec<u8>), ProcessError> {
    use tokio::io::AsyncWriteExt;
    let args: Vec<Arg> = args.into_iter().collect();
    check_args(program, &args)?;
    let args: Vec<OsString> = args.into_iter().map(|a| a.value).collect();
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

/// CPU time (user + system) of this process, and with `children` also of
/// the subprocesses it has waited for, in seconds: the measure of the
/// benchmarks and of the tests that print what a model run costs.
pub fn cpu_seconds(children: bool) -> f64 {
    let of = |who| {
        let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
        // SAFETY: the struct is valid zeroed (plain integers) and getrusage
        // fills it.
        let u = unsafe {
            assert_eq!(libc::getrusage(who, usage.as_mut_ptr()), 0);
            usage.assume_init()
        };
        let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        secs(u.ru_utime) + secs(u.ru_stime)
    };
    of(libc::RUSAGE_SELF) + if children { of(libc::RUSAGE_CHILDREN) } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_process_past_its_timeout_is_killed() {
        let t0 = std::time::Instant::now();
        let err = run("sleep", args!["30"], None, Duration::from_millis(200)).await.unwrap_err();
        assert!(matches!(err, ProcessError::Timeout { .. }), "{err}");
        assert!(t0.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn failure_carries_the_stderr_tail() {
        let err = run("sh", args!["-c", "echo boom >&2; exit 3"], None, Duration::from_secs(5)).await.unwrap_err();
        match err {
            ProcessError::Failed { stderr_tail, status, .. } => {
                assert_eq!(stderr_tail, "boom");
                assert!(status.contains('3'));
            }
            other => panic!("{other}"),
        }
    }

    /// Paths and composed text that start with `-` never reach a program.
    #[tokio::test]
    async fn option_like_paths_and_composed_text_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("written");
        for a in
            [Arg::from(Path::new("-rf")), Arg::composed("--help".into()), Arg::from(PathBuf::from("-f/etc/passwd"))]
        {
            let err = run("touch", [a.clone(), Arg::from(&marker)], None, Duration::from_secs(5)).await.unwrap_err();
            assert!(matches!(err, ProcessError::Refused { .. }), "{a:?}: {err}");
        }
        assert!(!marker.exists(), "nothing was started");
        // Literals may be options; numbers are numbers.
        let out = run("echo", args!["-n", Arg::num(-1i32), &marker], None, Duration::from_secs(5)).await.unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), format!("-1 {}", marker.display()));
    }

    /// Text on stdin is data: a message that looks like an option is read
    /// as text by the program.
    #[tokio::test]
    async fn text_on_stdin_is_not_an_option() {
        let out =
            run_with_stdin("cat", args![], b"-f/etc/passwd --help".to_vec(), Duration::from_secs(5)).await.unwrap();
        assert_eq!(out, b"-f/etc/passwd --help");
    }

    #[tokio::test]
    async fn a_missing_program_is_a_spawn_error() {
        let err = run("definitely-not-a-program", args!["x"], None, Duration::from_secs(1)).await.unwrap_err();
        assert!(matches!(err, ProcessError::Spawn { .. }));
    }

    #[test]
    fn tail_keeps_the_end_on_a_char_boundary() {
        assert_eq!(tail(b"  short \n", 10), "short");
        let t = tail("あいうえお".as_bytes(), 4);
        assert!(t.ends_with('お'), "{t}");
    }
}
