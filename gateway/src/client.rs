//! The `tayori` command-line client: submit a job from a terminal and
//! follow it (progress bar fed by the WebSocket), list the catalog.
//!
//! It speaks only the public HTTP API, so it works against any gateway.
//! Exit codes are part of its interface (see [`Exit`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;
use shared::progress::Step;
use tokio::io::AsyncWriteExt;

/// Exit codes, for scripts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// The video was made (and saved, with `--out`); or the list was printed.
    Ok = 0,
    /// The command line is wrong (clap's own code).
    Usage = 2,
    /// The server refused the request: the photo, message, voice or music
    /// is not usable (a 4xx). Sending the same again will not help.
    Refused = 3,
    /// The server is busy or rate-limited, or a backing service is down
    /// (429, 503): try again later (the message says when).
    Busy = 4,
    /// The job ran and failed (e.g. no person in the photo), or was cancelled.
    JobFailed = 5,
    /// The server could not be reached, or answered with a server error.
    Unreachable = 6,
    /// The job did not end within `--timeout`.
    Timeout = 7,
    /// The video was made but could not be saved to `--out`.
    SaveFailed = 8,
}

/// A failure with its exit code and the words for the person at the terminal.
#[derive(Debug)]
pub struct Failure {
    pub exit: Exit,
    pub message: String,
}

impl Failure {
    fn new(exit: Exit, message: impl Into<String>) -> Self {
        Failure { exit, message: message.into() }
    }
}

type Result<T> = std::result::Result<T, Failure>;

/// The gateway to talk to.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    http: reqwest::Client,
}

fn unreachable(e: reqwest::Error) -> Failure {
    Failure::new(Exit::Unreachable, format!("cannot reach the server: {e}"))
}

impl Client {
    pub fn new(base: &str) -> Result<Self> {
        let base = base.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Failure::new(Exit::Usage, format!("--server {base:?} must start with http:// or https://")));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("tayori-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(unreachable)?;
        Ok(Client { base, http })
    }

    /// Turn an answer into its JSON body, or a [`Failure`] with the right
    /// exit code and the server's own words.
    async fn json(resp: reqwest::Response) -> Result<Value> {
        let status = resp.status();
        let retry = resp.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(body);
        }
        let code = body["error"]["code"].as_str().unwrap_or("unknown");
        let message = body["error"]["message"].as_str().unwrap_or("no details");
        let mut text = format!("{message} ({code}, HTTP {})", status.as_u16());
        if let Some(s) = retry {
            text.push_str(&format!("; try again in {s} s"));
        }
        let exit = match status.as_u16() {
            429 | 503 => Exit::Busy,
            400..=499 => Exit::Refused,
            _ => Exit::Unreachable,
        };
        Err(Failure::new(exit, text))
    }

    pub async fn get(&self, path: &str) -> Result<Value> {
        let r = self.http.get(format!("{}{path}", self.base)).send().await.map_err(unreachable)?;
        Self::json(r).await
    }

    fn ws_url(&self, path: &str) -> String {
        let rest = self.base.strip_prefix("https://").map(|r| format!("wss://{r}"));
        let url = rest.unwrap_or_else(|| self.base.replacen("http://", "ws://", 1));
        format!("{url}{path}")
    }
}

/// What `submit` sends.
#[derive(Debug, Clone)]
pub struct Submission {
    pub photo: PathBuf,
    pub message: String,
    pub voice: String,
    pub bgm: Option<String>,
    pub resolution: Option<String>,
    pub background: Option<String>,
    pub person: Option<u32>,
}

/// How `submit` reports.
#[derive(Debug, Clone, Copy)]
pub struct Report {
    /// Step messages in Japanese.
    pub japanese: bool,
    /// No progress bar or step lines (only the result).
    pub quiet: bool,
    /// Print the result as JSON on stdout.
    pub json: bool,
}

fn step_text(ev: &Value, japanese: bool) -> String {
    let name = ev["current_step"].as_str().unwrap_or("");
    match Step::from_name(name) {
        Some(s) => format!("{}/{} {}", s.index(), Step::ALL.len(), if japanese { s.message() } else { s.message_en() }),
        None => match ev["status"].as_str() {
            Some("SUCCESS") => if japanese { "完了" } else { "done" }.to_owned(),
            Some("FAILURE") => if japanese { "失敗" } else { "failed" }.to_owned(),
            Some("REVOKED") => if japanese { "取り消し" } else { "cancelled" }.to_owned(),
            _ => if japanese { "順番待ち..." } else { "waiting for a worker..." }.to_owned(),
        },
    }
}

/// Submit a job, follow it to its end, save the video; prints the result
/// (the task id, the video's link, the saved path).
pub async fn submit(
    client: &Client,
    job: Submission,
    out: Option<&Path>,
    timeout: Duration,
    report: Report,
) -> Result<()> {
    let bytes = tokio::fs::read(&job.photo)
        .await
        .map_err(|e| Failure::new(Exit::Usage, format!("cannot read {}: {e}", job.photo.display())))?;
    let name = job.photo.file_name().and_then(|n| n.to_str()).unwrap_or("photo").to_owned();
    let form = || {
        let mut form = reqwest::multipart::Form::new()
            .part("image", reqwest::multipart::Part::bytes(bytes.clone()).file_name(name.clone()))
            .text("message", job.message.clone())
            .text("voice_profile_id", job.voice.clone());
        for (k, v) in [("bgm_id", &job.bgm), ("resolution", &job.resolution), ("background", &job.background)] {
            if let Some(v) = v {
                form = form.text(k, v.clone());
            }
        }
        if let Some(p) = job.person {
            form = form.text("person_index", p.to_string());
        }
        form
    };
    let accepted = post_once(client, "/api/video/generate", form, !report.quiet && !report.json).await?;
    let task_id = accepted["task_id"].as_str().unwrap_or_default().to_owned();
    let cancel_token = accepted["cancel_token"].as_str().unwrap_or_default().to_owned();
    if !report.quiet && !report.json {
        eprintln!("task {task_id}");
        eprintln!("(to cancel it: tayori cancel {task_id} --token {cancel_token})");
    }

    let bar = if report.quiet || report.json {
        indicatif::ProgressBar::hidden()
    } else {
        let bar = indicatif::ProgressBar::new(100);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos:>3}% {msg}")
                .expect("the template is valid")
                .progress_chars("=> "),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    };
    // Without a terminal the bar draws nothing: print each step as a line.
    let lines = !report.quiet && !report.json && bar.is_hidden();
    let last = tokio::time::timeout(timeout, follow(client, &task_id, &bar, lines, report.japanese)).await.map_err(
        |_| {
            bar.abandon();
            Failure::new(Exit::Timeout, format!("task {task_id} did not end within {} s", timeout.as_secs()))
        },
    )??;
    bar.finish_and_clear();

    let status = client.get(&format!("/api/video/status/{task_id}")).await?;
    if last != "SUCCESS" {
        let (code, message) = if last == "REVOKED" {
            ("cancelled", "The job was cancelled.")
        } else {
            (
                status["error"]["code"].as_str().unwrap_or("job-failed"),
                status["error"]["message"].as_str().unwrap_or("The job failed."),
            )
        };
        if report.json {
            println!("{}", serde_json::json!({"task_id": task_id, "status": last, "error": status["error"]}));
        }
        return Err(Failure::new(Exit::JobFailed, format!("{message} ({code})")));
    }
    let result = client.get(&format!("/api/video/result/{task_id}")).await?;
    let mut saved = None;
    if let Some(path) = out {
        let url = result["video_url"].as_str().unwrap_or_default();
        let n = download(client, url, path).await?;
        saved = Some((path.display().to_string(), n));
    }
    if report.json {
        let mut v = result.clone();
        v["status"] = "SUCCESS".into();
        v["cancel_token"] = cancel_token.into();
        if let Some((p, n)) = &saved {
            v["saved_to"] = p.clone().into();
            v["saved_bytes"] = (*n).into();
        }
        println!("{v}");
    } else {
        println!("task:     {task_id}");
        println!("video:    {}", result["video_url"].as_str().unwrap_or_default());
        println!("valid to: {}", result["expires_at"].as_str().unwrap_or_default());
        if let Some((p, n)) = saved {
            println!("saved:    {p} ({n} bytes)");
        }
    }
    Ok(())
}

/// POST a form with a fresh `Idempotency-Key`, sent again with the same key
/// when the connection fails or the first try is still in flight, so a
/// retried submit never makes a second job.
async fn post_once(
    client: &Client,
    path: &str,
    form: impl Fn() -> reqwest::multipart::Form,
    say: bool,
) -> Result<Value> {
    const TRIES: u32 = 5;
    let key = uuid::Uuid::new_v4().to_string();
    let url = format!("{}{path}", client.base);
    for attempt in 1..=TRIES {
        let last = attempt == TRIES;
        let wait = Duration::from_millis(500 << (attempt - 1));
        match client.http.post(&url).header("idempotency-key", &key).multipart(form()).send().await {
            Err(e) if !last && !e.is_builder() => {
                if say {
                    eprintln!("the connection failed ({e}); trying again in {} ms", wait.as_millis());
                }
            }
            Err(e) => return Err(unreachable(e)),
            // The same request is still being answered (the first try's
            // answer was lost on the way): ask again shortly.
            Ok(r)
                if r.status() == reqwest::StatusCode::CONFLICT && r.headers().contains_key("retry-after") && !last => {}
            Ok(r) => return Client::json(r).await,
        }
        tokio::time::sleep(wait).await;
    }
    unreachable!("the last try returns")
}

/// `cancel`: cancel a job with the token its submit answer carried.
pub async fn cancel(client: &Client, task_id: &str, token: &str, json: bool) -> Result<()> {
    let r = client
        .http
        .post(format!("{}/api/video/{task_id}/cancel", client.base))
        .header("x-cancel-token", token)
        .send()
        .await
        .map_err(unreachable)?;
    let body = Client::json(r).await?;
    if json {
        println!("{body}");
    } else {
        println!("task {task_id} cancelled");
    }
    Ok(())
}

/// Follow a job's WebSocket to its end; returns the final status. A
/// dropped connection is opened again (the server replays what was missed);
/// after repeated failures the status endpoint is polled instead.
async fn follow(client: &Client, task_id: &str, bar: &indicatif::ProgressBar, lines: bool, ja: bool) -> Result<String> {
    use tokio_tungstenite::tungstenite::Message;
    let mut failures = 0u32;
    let mut last_step = String::new();
    loop {
        match tokio_tungstenite::connect_async(client.ws_url(&format!("/ws/progress/{task_id}"))).await {
            Ok((mut ws, _)) => {
                failures = 0;
                while let Some(msg) = ws.next().await {
                    match msg {
                        Ok(Message::Text(t)) => {
                            let Ok(ev) = serde_json::from_str::<Value>(t.as_str()) else { continue };
                            bar.set_position(ev["percentage"].as_u64().unwrap_or(0));
                            let text = step_text(&ev, ja);
                            if lines && text != last_step {
                                eprintln!("{:>3}% {text}", ev["percentage"].as_u64().unwrap_or(0));
                            }
                            last_step.clone_from(&text);
                            bar.set_message(text);
                            if let Some(s @ ("SUCCESS" | "FAILURE" | "REVOKED")) = ev["status"].as_str() {
                                return Ok(s.to_owned());
                            }
                        }
                        Ok(Message::Close(Some(frame))) if u16::from(frame.code) == 4404 => {
                            return Err(Failure::new(
                                Exit::Refused,
                                format!("the server does not know task {task_id}"),
                            ));
                        }
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
            }
            Err(_) => failures += 1,
        }
        // The socket ended without a final event, or could not be opened.
        match client.get(&format!("/api/video/status/{task_id}")).await {
            Ok(s) => {
                if let Some(st @ ("SUCCESS" | "FAILURE" | "REVOKED")) = s["status"].as_str() {
                    return Ok(st.to_owned());
                }
            }
            // The server has been unreachable for a while: give up.
            Err(e) if failures >= 10 => return Err(e),
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(500 * u64::from(failures.clamp(1, 8)))).await;
    }
}

/// Save the presigned video URL to `path` (written beside it, then renamed).
async fn download(client: &Client, url: &str, path: &Path) -> Result<u64> {
    let save = |e: &dyn std::fmt::Display| Failure::new(Exit::SaveFailed, format!("saving to {}: {e}", path.display()));
    let resp = client.http.get(url).send().await.map_err(|e| save(&e))?;
    if !resp.status().is_success() {
        return Err(save(&format!("the video link answered HTTP {}", resp.status())));
    }
    let tmp = path.with_extension("part");
    let mut file = tokio::fs::File::create(&tmp).await.map_err(|e| save(&e))?;
    let mut n = 0u64;
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| save(&e))?;
        n += chunk.len() as u64;
        file.write_all(&chunk).await.map_err(|e| save(&e))?;
    }
    file.sync_all().await.map_err(|e| save(&e))?;
    drop(file);
    tokio::fs::rename(&tmp, path).await.map_err(|e| save(&e))?;
    Ok(n)
}

/// `voices`: one line per profile (or the JSON list).
pub async fn voices(client: &Client, language: Option<&str>, json: bool) -> Result<()> {
    let q = language.map(|l| format!("?language={l}")).unwrap_or_default();
    let body = client.get(&format!("/api/voice-clone/profiles{q}")).await?;
    let list = body["profiles"].as_array().cloned().unwrap_or_default();
    if json {
        println!("{}", Value::Array(list));
        return Ok(());
    }
    println!("{:<28} {:<4} {:<7} {:<7} NAME", "ID", "LANG", "GENDER", "TYPE");
    for p in &list {
        println!(
            "{:<28} {:<4} {:<7} {:<7} {}",
            p["id"].as_str().unwrap_or(""),
            p["language"].as_str().unwrap_or(""),
            p["gender"].as_str().unwrap_or(""),
            p["type"].as_str().unwrap_or(""),
            p["name"].as_str().unwrap_or("")
        );
    }
    Ok(())
}

/// `tracks`: one line per music track (or the JSON list).
pub async fn tracks(client: &Client, mood: Option<&str>, json: bool) -> Result<()> {
    let q = mood.map(|m| format!("?mood={m}")).unwrap_or_default();
    let body = client.get(&format!("/api/bgm/tracks{q}")).await?;
    let list = body["tracks"].as_array().cloned().unwrap_or_default();
    if json {
        println!("{}", Value::Array(list));
        return Ok(());
    }
    println!("{:<28} {:<10} {:>6} {:>5} {:<6} NAME", "ID", "MOOD", "SECS", "BPM", "TYPE");
    for t in &list {
        println!(
            "{:<28} {:<10} {:>6.1} {:>5} {:<6} {}",
            t["id"].as_str().unwrap_or(""),
            t["mood"].as_str().unwrap_or(""),
            t["duration_seconds"].as_f64().unwrap_or(0.0),
            t["bpm"].as_u64().map(|b| b.to_string()).unwrap_or_else(|| "-".into()),
            t["type"].as_str().unwrap_or(""),
            t["name"].as_str().unwrap_or("")
        );
    }
    Ok(())
}

/// `status`: the task meta as JSON.
pub async fn status(client: &Client, task_id: &str) -> Result<()> {
    let body = client.get(&format!("/api/video/status/{task_id}")).await?;
    println!("{body}");
    Ok(())
}
