//! Catalog latency, run on demand: `cargo bench -p tayori-shared --bench catalog`.
//!
//! For catalogs of 100 and 10,000 voice profiles and tracks: list latency
//! (read + filter), and update latency (one read-modify-write under the
//! lock, fsync included) from one writer and from 8 concurrent writers
//! (each with its own store, as separate processes would have). Prints p50
//! and p99 in milliseconds.

use std::path::Path;
use std::time::Instant;

use shared::catalog::{BgmFile, BgmMetadata, BgmTrack, Catalog, EntryType, VoicesFile};

fn track(i: usize) -> BgmTrack {
    BgmTrack {
        id: format!("user_{i}"),
        name: format!("Track {i}"),
        kind: EntryType::User,
        file_path: format!("bgm/user/anon_{i}.mp3"),
        preview_url: format!("/api/bgm/tracks/user_{i}/preview"),
        duration_seconds: 180.5,
        bpm: Some(120),
        mood: ["cheerful", "warm", "calm"][i % 3].into(),
        volume_db: -14.0,
        created_at: "2026-01-02T09:15:00Z".into(),
        metadata: BgmMetadata {
            description: "User-uploaded custom BGM".into(),
            genre: None,
            seamless_loop: Some(true),
            original_filename: Some("song.mp3".into()),
            uploaded_by: Some("user123".into()),
            extra: Default::default(),
        },
    }
}

fn setup(dir: &Path, n: usize) -> Catalog {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data");
    std::fs::create_dir_all(dir.join("voices")).unwrap();
    std::fs::create_dir_all(dir.join("bgm")).unwrap();
    let mut voices: VoicesFile =
        serde_json::from_slice(&std::fs::read(repo.join("voices/voices_metadata.json")).unwrap()).unwrap();
    let template = voices.profiles[0].clone();
    for i in 0..n {
        let mut p = template.clone();
        p.id = format!("custom_{i}");
        p.kind = EntryType::Custom;
        voices.profiles.push(p);
    }
    let bgm = BgmFile {
        tracks: (0..n).map(track).collect(),
        last_updated: "2026-01-01T00:00:00Z".into(),
        version: "1.0".into(),
    };
    std::fs::write(dir.join("voices/voices_metadata.json"), serde_json::to_vec_pretty(&voices).unwrap()).unwrap();
    std::fs::write(dir.join("bgm/bgm_metadata.json"), serde_json::to_vec_pretty(&bgm).unwrap()).unwrap();
    Catalog::new(dir)
}

fn pct(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    let at = |p: f64| v[((v.len() as f64 * p) as usize).min(v.len() - 1)];
    (at(0.50), at(0.99))
}

fn update_once(cat: &Catalog, key: &str) -> f64 {
    let t0 = Instant::now();
    cat.bgm
        .update(|d| {
            if let Some(i) = d.tracks.iter().position(|t| t.id == key) {
                d.tracks.remove(i);
            } else {
                d.tracks.push(track(usize::MAX).clone());
                d.tracks.last_mut().unwrap().id = key.to_owned();
            }
            Ok::<_, ()>(())
        })
        .unwrap()
        .unwrap();
    t0.elapsed().as_secs_f64() * 1e3
}

fn main() {
    println!("entries  file(MB)  cold-list  list p50/p99 (ms)  update p50/p99 (ms)  8 writers p50/p99 (ms)");
    for n in [100usize, 10_000] {
        let dir = tempfile::tempdir().unwrap();
        let cat = setup(dir.path(), n);
        let size = std::fs::metadata(cat.bgm.path()).unwrap().len() as f64 / 1e6;
        let t0 = Instant::now();
        let _ = cat.bgm.read().unwrap();
        let cold = t0.elapsed().as_secs_f64() * 1e3;
        let list: Vec<f64> = (0..500)
            .map(|_| {
                let t0 = Instant::now();
                let doc = cat.bgm.read().unwrap();
                let warm = doc.tracks.iter().filter(|t| t.mood == "warm").count();
                std::hint::black_box(warm);
                t0.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        let single: Vec<f64> = (0..100).map(|i| update_once(&cat, &format!("bench_{}", i % 2))).collect();
        let multi: Vec<f64> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|w| {
                    let dir = dir.path().to_owned();
                    s.spawn(move || {
                        let own = Catalog::new(dir);
                        (0..25).map(|i| update_once(&own, &format!("w{w}_{}", i % 2))).collect::<Vec<f64>>()
                    })
                })
                .collect();
            handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
        });
        let (l50, l99) = pct(list);
        let (u50, u99) = pct(single);
        let (m50, m99) = pct(multi);
        println!(
            "{n:>7}  {size:>8.2}  {cold:>9.2}  {l50:>8.3} / {l99:<7.3}  {u50:>9.2} / {u99:<7.2}  {m50:>10.2} / {m99:<7.2}"
        );
    }
}
