//! `tayori`: make a video message from a terminal, through any gateway.
//!
//! ```text
//! tayori submit photo.jpg --message "お誕生日おめでとう" --voice ja_mei_female --bgm celebration_gentle --out video.mp4
//! tayori voices [--language ja]
//! tayori tracks [--mood cheerful]
//! tayori status TASK_ID
//! tayori cancel TASK_ID --token CANCEL_TOKEN
//! ```
//!
//! Exit codes: 0 done, 2 bad command line, 3 refused (bad photo, message,
//! voice…, a wrong cancel token, a finished job), 4 busy or rate-limited
//! (try later), 5 the job failed or was cancelled, 6 server unreachable or
//! failing, 7 timed out, 8 could not save the video.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use gateway::client::{self, Client, Exit, Report, Submission};

#[derive(Parser)]
#[command(
    name = "tayori",
    version,
    about = "Make a video message from a photo and a message, through a tayori gateway."
)]
struct Cli {
    /// The gateway's address.
    #[arg(long, env = "TAYORI_URL", default_value = "http://127.0.0.1:8080", global = true)]
    server: String,
    /// Print results as JSON on stdout (for scripts).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Make a video from a photo and a message, with a progress bar.
    Submit {
        /// The photo (JPEG, PNG or WebP, up to 10 MB).
        photo: PathBuf,
        /// The message to speak (1 to 500 characters).
        #[arg(long, short)]
        message: String,
        /// Voice profile id (see `tayori voices`).
        #[arg(long, short)]
        voice: String,
        /// Music track id (see `tayori tracks`); none: no music.
        #[arg(long, short)]
        bgm: Option<String>,
        /// 1080x1920 (default) or 512x910.
        #[arg(long)]
        resolution: Option<String>,
        /// #RRGGBB, gradient, gradient:#top,#bottom or blur.
        #[arg(long)]
        background: Option<String>,
        /// Which person in the photo (from 0, left to right).
        #[arg(long)]
        person: Option<u32>,
        /// Save the video here.
        #[arg(long, short)]
        out: Option<PathBuf>,
        /// Give up waiting after this many seconds.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
        /// Step messages in Japanese (default: from LANG).
        #[arg(long)]
        japanese: bool,
        /// No progress output.
        #[arg(long, short)]
        quiet: bool,
    },
    /// List the voice profiles.
    Voices {
        /// ja or en.
        #[arg(long)]
        language: Option<String>,
    },
    /// List the music tracks.
    Tracks {
        #[arg(long)]
        mood: Option<String>,
    },
    /// Show a job's status (JSON).
    Status { task_id: String },
    /// Cancel a job you submitted (its tools are stopped, its files removed).
    Cancel {
        task_id: String,
        /// The cancel token `submit` printed.
        #[arg(long, env = "TAYORI_CANCEL_TOKEN", hide_env_values = true)]
        token: String,
    },
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let result = async {
        let client = Client::new(&cli.server)?;
        match cli.command {
            Command::Submit {
                photo,
                message,
                voice,
                bgm,
                resolution,
                background,
                person,
                out,
                timeout,
                japanese,
                quiet,
            } => {
                let japanese = japanese || std::env::var("LANG").is_ok_and(|l| l.starts_with("ja"));
                let job = Submission { photo, message, voice, bgm, resolution, background, person };
                let report = Report { japanese, quiet, json: cli.json };
                client::submit(&client, job, out.as_deref(), Duration::from_secs(timeout), report).await
            }
            Command::Voices { language } => client::voices(&client, language.as_deref(), cli.json).await,
            Command::Tracks { mood } => client::tracks(&client, mood.as_deref(), cli.json).await,
            Command::Status { task_id } => client::status(&client, &task_id).await,
            Command::Cancel { task_id, token } => client::cancel(&client, &task_id, &token, cli.json).await,
        }
    }
    .await;
    match result {
        Ok(()) => std::process::exit(Exit::Ok as i32),
        Err(f) => {
            eprintln!("tayori: {}", f.message);
            std::process::exit(f.exit as i32);
        }
    }
}
