//! Every system voice, judged by tools nobody here wrote:
//! `cargo bench -p worker --bench voices` (after `bash scripts/judge-deps.sh`).
//!
//! Each voice speaks five messages of its language (written for this
//! bench), through the worker's own speech path; each is judged alone and
//! mixed with music (the worker's mix, -14 LUFS) by DNSMOS P.808 and P.835
//! (Microsoft's ONNX models) and by Whisper base (character error rate for
//! Japanese, word error rate for English), in scripts/judge_speech.py.
//! Prints the means per voice, the speech step's time and CPU-seconds (this
//! process's and its tools') for the long (about 10 s) message, medians of
//! `SPEECH_RUNS` (3), and the resident memory with every model loaded.
//!
//! `VOICES=ja_alpha_female,ja_mei_female` judges only those; `NO_JUDGE=1`
//! only synthesizes and times.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use shared::catalog::{Catalog, EntryType};
use worker::process::cpu_seconds;

const JA: [&str; 5] = [
    "お誕生日おめでとうございます。素敵な一年になりますように。",
    "いつも本当にありがとう。あなたがいてくれて、毎日がとても楽しいです。",
    "卒業おめでとう。新しい場所でも、きっと素晴らしい友達ができるよ。",
    "結婚おめでとうございます。お二人の幸せな毎日を心から願っています。",
    "先日は素敵なプレゼントをありがとうございました。家族みんなでとても喜んでいます。寒い日が続きますので、どうか体に気をつけて、元気にお過ごしください。また近いうちに会いましょう。",
];
const EN: [&str; 5] = [
    "Happy birthday! I hope this year brings you everything you wish for.",
    "Thank you so much for your help last week. It meant a lot to me.",
    "Congratulations on your graduation. We are all very proud of you.",
    "Welcome to the team. We are glad to have you with us.",
    "Thank you for the lovely present you sent last week. The whole family enjoyed it very much. The weather has been cold lately, so please take care of yourself, and let us meet again soon.",
];

fn ffmpeg(args: &[&std::ffi::OsStr]) {
    let out = std::process::Command::new("ffmpeg").args(["-nostdin", "-loglevel", "error", "-y"]).args(args).output();
    let out = out.expect("ffmpeg");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// 16 kHz mono WAV of any audio file, as the judges want it.
fn to_16k(input: &Path, out: &Path) {
    ffmpeg(&[
        "-i".as_ref(),
        input.as_os_str(),
        "-ac".as_ref(),
        "1".as_ref(),
        "-ar".as_ref(),
        "16000".as_ref(),
        out.as_os_str(),
    ]);
}

fn status_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(field)).map(|l| l.to_owned()))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let data = root.join("data");
    let cache = std::env::var_os("TAYORI_CACHE_DIR").map(PathBuf::from).unwrap_or_else(|| root.join(".cache"));
    let catalog = Catalog::new(&data);
    let only: Option<Vec<String>> = std::env::var("VOICES").ok().map(|v| v.split(',').map(str::to_owned).collect());
    let voices: Vec<_> = catalog
        .voices_async()
        .await
        .expect("catalog")
        .profiles
        .iter()
        .filter(|p| p.kind == EntryType::System && only.as_ref().is_none_or(|o| o.contains(&p.id)))
        .cloned()
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let track = data.join("bgm/system/celebration_gentle.mp3");
    let timeout = Duration::from_secs(120);
    let mut manifest = Vec::new();
    let mut speech_time: BTreeMap<String, (f64, f64, f64)> = BTreeMap::new();
    let speech_runs: usize = std::env::var("SPEECH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(3).max(1);
    for p in &voices {
        let messages = if p.language == "ja" { JA } else { EN };
        let scratch = dir.path().join(&p.id);
        std::fs::create_dir_all(&scratch).unwrap();
        // Models load on the first call: not what a warm worker pays.
        let warm = scratch.join("warm.wav");
        worker::pipeline::speech::speak(&catalog, p, messages[0], &scratch, &warm, timeout).await.expect("speak");
        for (k, text) in messages.iter().enumerate() {
            let wav = scratch.join(format!("{k}.wav"));
            // The long message (the last) is timed SPEECH_RUNS times (3),
            // the median of each figure kept: this machine's spread is large.
            let runs = if k == messages.len() - 1 { speech_runs } else { 1 };
            let (mut took, mut cpu) = (Vec::new(), Vec::new());
            for _ in 0..runs {
                // CPU of this process and its tools (Open JTalk).
                let (t, c) = (Instant::now(), cpu_seconds(true));
                worker::pipeline::speech::speak(&catalog, p, text, &scratch, &wav, timeout).await.expect("speak");
                took.push(t.elapsed().as_secs_f64());
                cpu.push(cpu_seconds(true) - c);
            }
            let secs = worker::media::wav_duration(&wav).unwrap();
            if k == messages.len() - 1 {
                speech_time.insert(p.id.clone(), (secs, median(&mut took), median(&mut cpu)));
            }
            let alone = scratch.join(format!("{k}.alone.16k.wav"));
            to_16k(&wav, &alone);
            let mixed =
                worker::pipeline::mix::mix_files(&wav, Some(&track), &scratch, -14.0, timeout).await.expect("mix");
            let music = scratch.join(format!("{k}.music.16k.wav"));
            to_16k(&mixed.mp3, &music);
            for (variant, file) in [("alone", alone), ("music", music)] {
                manifest.push(serde_json::json!({
                    "voice": p.id, "engine": p.metadata.engine, "language": p.language,
                    "variant": variant, "text": text, "file": file,
                }));
            }
        }
        eprintln!("{}: synthesized", p.id);
    }

    // Memory with every model a worker holds: the voices above and IS-Net.
    let photo = image::open(cache.join("fixtures/astronaut.png")).expect("astronaut.png").to_rgb8();
    let seg = worker::vision::segment::segmenter(&data, worker::vision::segment::Model::IsNet).expect("IS-Net");
    seg.mask(&photo).expect("mask");
    let (rss, hwm) = (status_kb("VmRSS:"), status_kb("VmHWM:"));

    println!("\nspeech step, long message (each engine warm):");
    println!("{:22} {:>8} {:>8} {:>6} {:>8}", "voice", "speech", "took", "x rt", "cpu");
    for (id, (secs, took, cpu)) in &speech_time {
        println!("{id:22} {secs:7.2}s {took:7.2}s {:6.2} {cpu:7.2}s", secs / took);
    }
    println!(
        "resident with the voices and IS-Net loaded: {:.0} MB now, {:.0} MB peak",
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0
    );

    if std::env::var_os("NO_MATCH").is_none() {
        matching(&data, dir.path(), timeout).await;
    }
    if std::env::var_os("NO_JUDGE").is_some() {
        return;
    }
    let judge = cache.join("judge");
    let python = judge.join("venv/bin/python");
    assert!(python.is_file(), "{} is missing: run scripts/judge-deps.sh first", python.display());
    let list = dir.path().join("manifest.json");
    std::fs::write(&list, serde_json::to_vec(&manifest).unwrap()).unwrap();
    let t = Instant::now();
    let out = std::process::Command::new(&python)
        .arg(root.join("scripts/judge_speech.py"))
        .arg(judge.join("models"))
        .arg(&list)
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("judge");
    assert!(out.status.success(), "the judge failed");
    let judged: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("judge output");
    eprintln!("judged {} files in {:.0} s", judged.len(), t.elapsed().as_secs_f64());

    // Means per voice and variant.
    let mut by: BTreeMap<(String, String), Vec<&serde_json::Value>> = BTreeMap::new();
    for j in &judged {
        by.entry((j["voice"].as_str().unwrap().to_owned(), j["variant"].as_str().unwrap().to_owned()))
            .or_default()
            .push(j);
    }
    let mean =
        |v: &[&serde_json::Value], k: &str| v.iter().map(|j| j[k].as_f64().unwrap()).sum::<f64>() / v.len() as f64;
    println!("\nDNSMOS (P.808 MOS; P.835 SIG/BAK/OVRL) and Whisper base error rate (CER ja, WER en), means of 5:");
    println!("{:22} {:7} {:>6} {:>5} {:>5} {:>5} {:>7}", "voice", "variant", "P.808", "SIG", "BAK", "OVRL", "error");
    for ((voice, variant), v) in &by {
        println!(
            "{voice:22} {variant:7} {:6.2} {:5.2} {:5.2} {:5.2} {:7.3}",
            mean(v, "p808"),
            mean(v, "sig"),
            mean(v, "bak"),
            mean(v, "ovrl"),
            mean(v, "error_rate")
        );
    }
}

/// Custom voices matched to Kokoro blends: references spoken by the Open
/// JTalk voices (other speakers than Kokoro's), some shifted in pitch; for
/// each, the speaker-embedding similarity to the reference of the nearest
/// single Kokoro voice and of the chosen blend, each as found and as the
/// profile speaks it (shifted in pitch and speed toward the reference).
async fn matching(data: &Path, dir: &Path, timeout: Duration) {
    use worker::kokoro::matching;
    use worker::speaker::{Embedder, similarity};
    let lib = worker::onnx::runtime_path(data);
    let embedder = Embedder::get(&lib, data).expect("speaker embedder");
    let text = "お誕生日おめでとうございます。素敵な一年になりますように。いつも本当にありがとう。";
    let refs = [
        ("Mei", "mei_normal.htsvoice", "0", "female"),
        ("Mei +3", "mei_normal.htsvoice", "3", "female"),
        ("Mei -4", "mei_normal.htsvoice", "-4", "female"),
        ("Mei (any)", "mei_normal.htsvoice", "0", "other"),
        ("Nitech", "nitech_jp_atr503_m001.htsvoice", "0", "male"),
        ("Nitech +4", "nitech_jp_atr503_m001.htsvoice", "4", "other"),
    ];
    let decode = |p: &Path| -> Vec<f32> {
        let out = std::process::Command::new("ffmpeg")
            .args(["-nostdin", "-loglevel", "error", "-i"])
            .arg(p)
            .args(["-ac", "1", "-ar", "16000", "-f", "f32le", "-"])
            .output()
            .expect("ffmpeg");
        out.stdout.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
    };
    println!("\nvoice matching (speaker-embedding cosine similarity to the reference):");
    println!(
        "{:10} {:>24} {:>7} {:>7} {:>28} {:>7} {:>7}",
        "reference", "best single", "found", "shifted", "blend", "found", "shifted"
    );
    for (k, (name, voice, fm, gender)) in refs.iter().enumerate() {
        let scratch = dir.join(format!("match{k}"));
        std::fs::create_dir_all(&scratch).unwrap();
        let txt = scratch.join("ref.txt");
        std::fs::write(&txt, text).unwrap();
        let wav = scratch.join("ref.wav");
        let ok = std::process::Command::new("open_jtalk")
            .args(["-x", worker::pipeline::speech::OPEN_JTALK_DIC, "-fm", fm, "-m"])
            .arg(data.join("voices/system").join(voice))
            .arg("-ow")
            .arg(&wav)
            .arg(&txt)
            .status()
            .expect("open_jtalk")
            .success();
        assert!(ok);
        let reference = decode(&wav);
        let target = embedder.embed(&reference).unwrap();
        let t = Instant::now();
        let features = worker::voice_analysis::analyse(&reference, 16_000).expect("reference pitch");
        let m = matching::closest(&lib, data, &target, features.median_f0_hz, Some(gender), &scratch, timeout)
            .await
            .expect("match");
        let took = t.elapsed().as_secs_f64();
        // As the profile speaks it: shifted toward the reference.
        let shifted = |speech: &[f32], tag: &str| -> f32 {
            let base = worker::voice_analysis::analyse(speech, 16_000).expect("pitch");
            let (pitch_semitones, speed) = worker::voice_analysis::shift_toward(&features, &base);
            let input = scratch.join(format!("{tag}.wav"));
            worker::media::write_wav(&input, speech, 16_000).unwrap();
            let out = scratch.join(format!("{tag}.shifted.wav"));
            let e = worker::pipeline::speech::Embedding { pitch_semitones, speed, kokoro_blend: vec![] };
            let rt = tokio::runtime::Handle::current();
            tokio::task::block_in_place(|| {
                rt.block_on(worker::pipeline::speech::shape_with(&e, &input, &out, timeout))
            })
            .expect("shape");
            similarity(&target, &embedder.embed(&decode(&out)).unwrap())
        };
        let single_shifted = shifted(&m.single_speech, "single");
        let blend_shifted = shifted(&m.speech, "blend");
        let blend: Vec<String> = m.best.blend.iter().map(|(n, w)| format!("{n} {w:.2}")).collect();
        println!(
            "{name:10} {:>24} {:7.3} {:7.3} {:>28} {:7.3} {:7.3}   ({} candidates, {took:.1} s)",
            m.best_single.blend[0].0,
            m.best_single.similarity,
            single_shifted,
            blend.join(" + "),
            m.best.similarity,
            blend_shifted,
            m.tried
        );
    }
}
