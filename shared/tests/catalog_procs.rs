//! The catalog's safety contract, with real processes: concurrent writers
//! never lose an update, and a writer killed mid-write leaves a readable
//! file and no lock behind.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use shared::catalog::{BGM_FILE, Catalog, EntryType, VOICES_FILE};

/// The example binary built alongside the tests.
fn writer_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let p = exe.parent().unwrap().parent().unwrap().join("examples").join("catalog_writer");
    assert!(p.is_file(), "{} is not built (cargo builds examples with the tests)", p.display());
    p
}

fn data_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data");
    for f in [VOICES_FILE, BGM_FILE] {
        std::fs::create_dir_all(dir.path().join(f).parent().unwrap()).unwrap();
        std::fs::copy(repo.join(f), dir.path().join(f)).unwrap();
    }
    dir
}

#[test]
fn eight_processes_times_250_operations_lose_nothing() {
    let dir = data_copy();
    let before = Catalog::new(dir.path()).bgm.read_strict().unwrap();
    let t0 = Instant::now();
    let children: Vec<_> = (0..8)
        .map(|w| {
            Command::new(writer_bin())
                .args(["crud".as_ref(), dir.path().as_os_str(), w.to_string().as_ref(), "250".as_ref()])
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "a writer failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    println!("2000 operations from 8 processes in {:.2}s", t0.elapsed().as_secs_f64());
    // A fresh reader (no cache) parses the final file.
    let after = Catalog::new(dir.path()).bgm.read_strict().unwrap();
    let system: Vec<_> = after.tracks.iter().filter(|t| t.kind == EntryType::System).cloned().collect();
    assert_eq!(system, before.tracks, "system entries untouched");
    let mut expected = Vec::new();
    for w in 0..8 {
        for block in 0..50 {
            expected.push((format!("w{w}-{block}-1"), "original"));
            expected.push((format!("w{w}-{block}-2"), "updated"));
        }
    }
    let mut got: Vec<(String, &str)> =
        after.tracks.iter().filter(|t| t.kind == EntryType::User).map(|t| (t.id.clone(), t.name.as_str())).collect();
    got.sort();
    expected.sort();
    assert_eq!(got.len(), 800);
    assert_eq!(got, expected);
}

#[test]
fn a_writer_killed_mid_write_leaves_a_good_file_and_no_stale_lock() {
    let dir = data_copy();
    let cat = Catalog::new(dir.path());
    for round in 0..15u64 {
        let mut child = Command::new(writer_bin())
            .args(["loop".as_ref(), dir.path().as_os_str(), "k".as_ref()])
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Let it write for a while; vary where in a write the kill lands.
        std::thread::sleep(Duration::from_millis(20 + (round * 37) % 150));
        sigkill(child.id());
        child.wait().unwrap();
        // The file parses (a fresh store: no cache to hide behind).
        let fresh = Catalog::new(dir.path());
        fresh.bgm.read_strict().unwrap_or_else(|e| panic!("round {round}: {e}"));
        // The next writer gets the lock at once.
        let t0 = Instant::now();
        cat.bgm
            .update(|d| {
                d.last_updated = format!("round {round}");
                Ok::<_, ()>(())
            })
            .unwrap()
            .unwrap();
        assert!(t0.elapsed() < Duration::from_secs(2), "round {round}: the lock was held by a dead writer");
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("bgm"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "round {round}: temp files left: {leftovers:?}");
    }
}

/// SIGKILL through the `kill` command (no unsafe code, no libc binding).
fn sigkill(pid: u32) {
    let ok = Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap().success();
    assert!(ok);
}
