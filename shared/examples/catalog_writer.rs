//! A catalog writer process, used by the multi-process tests and the
//! catalog benchmark (built with the tests; not part of the product).
//!
//! `catalog_writer crud DATA_DIR WRITER OPS [--latencies]`: OPS operations on
//! the BGM catalog in blocks of five (create, create, create, update the
//! third, delete the first); prints each operation's latency in µs with
//! `--latencies`; exits non-zero if any operation fails.
//! `catalog_writer loop DATA_DIR WRITER`: add and remove entries until killed.

use std::time::Instant;

use shared::catalog::{BgmMetadata, BgmTrack, Catalog, EntryType};

fn track(id: String) -> BgmTrack {
    BgmTrack {
        id,
        name: "original".into(),
        kind: EntryType::User,
        file_path: "bgm/user/x.mp3".into(),
        preview_url: String::new(),
        duration_seconds: 30.0,
        bpm: Some(100),
        mood: "calm".into(),
        volume_db: -14.0,
        created_at: "2026-01-01T00:00:00Z".into(),
        metadata: BgmMetadata {
            description: "written by catalog_writer".into(),
            genre: None,
            seamless_loop: Some(true),
            original_filename: None,
            uploaded_by: Some("test".into()),
            extra: Default::default(),
        },
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (mode, dir, writer) = (args[1].as_str(), &args[2], &args[3]);
    let cat = Catalog::new(dir);
    match mode {
        "crud" => {
            let ops: usize = args[4].parse().unwrap();
            let latencies = args.iter().any(|a| a == "--latencies");
            for i in 0..ops {
                let t0 = Instant::now();
                let block = i / 5;
                let r = cat.bgm.update(|doc| match i % 5 {
                    0..=2 => {
                        doc.tracks.push(track(format!("w{writer}-{block}-{}", i % 5)));
                        Ok(())
                    }
                    3 => {
                        let id = format!("w{writer}-{block}-2");
                        let t = doc.tracks.iter_mut().find(|t| t.id == id).ok_or("update target missing")?;
                        t.name = "updated".into();
                        Ok(())
                    }
                    _ => {
                        let id = format!("w{writer}-{block}-0");
                        let n = doc.tracks.len();
                        doc.tracks.retain(|t| t.id != id);
                        if doc.tracks.len() == n { Err("delete target missing") } else { Ok(()) }
                    }
                });
                match r {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => panic!("operation {i} of writer {writer}: {e}"),
                    Err(e) => panic!("operation {i} of writer {writer}: {e}"),
                }
                if latencies {
                    println!("{}", t0.elapsed().as_micros());
                }
            }
        }
        "loop" => {
            for i in 0u64.. {
                let id = format!("loop-{writer}-{}", i % 7);
                cat.bgm
                    .update(|doc| {
                        if let Some(p) = doc.tracks.iter().position(|t| t.id == id) {
                            doc.tracks.remove(p);
                        } else {
                            doc.tracks.push(track(id.clone()));
                        }
                        Ok::<_, ()>(())
                    })
                    .unwrap()
                    .unwrap();
            }
        }
        other => panic!("unknown mode {other}"),
    }
}
