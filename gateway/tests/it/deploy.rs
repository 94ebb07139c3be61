//! The deployment files, checked without a Docker engine by
//! `scripts/check_compose.py` (Compose Specification schema, what tayori
//! needs, Dockerfile sources): the real files pass, broken ones do not.

use std::process::Command;

use crate::harness;

pub(crate) fn check(compose: &std::path::Path) -> (bool, String) {
    let o = Command::new("python3")
        .arg(harness::repo_root().join("scripts/check_compose.py"))
        .arg(compose)
        .env(
            "TAYORI_CACHE_DIR",
            std::env::var("TAYORI_CACHE_DIR")
                .unwrap_or_else(|_| harness::repo_root().join(".cache").display().to_string()),
        )
        .output()
        .unwrap();
    (o.status.success(), format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
}

/// A directory that looks like the repository to the check (the files the
/// Dockerfile and compose file name), for checking a changed compose file.
pub(crate) fn build_context() -> tempfile::TempDir {
    let root = harness::repo_root();
    let dir = tempfile::tempdir().unwrap();
    for f in ["Dockerfile", ".dockerignore", "lifecycle.json", "Cargo.toml", "Cargo.lock"] {
        std::fs::copy(root.join(f), dir.path().join(f)).unwrap();
    }
    for d in ["shared", "gateway", "worker", "data", "scripts"] {
        std::os::unix::fs::symlink(root.join(d), dir.path().join(d)).unwrap();
    }
    dir
}

#[test]
fn the_compose_file_is_valid_and_broken_ones_are_caught() {
    let root = harness::repo_root();
    let (ok, out) = check(&root.join("docker-compose.yml"));
    assert!(ok, "{out}");
    assert!(out.contains("valid against the Compose Specification schema"), "{out}");

    let good = std::fs::read_to_string(root.join("docker-compose.yml")).unwrap();
    let dir = build_context();
    let cases = [
        ("a misspelt key", good.replace("    stop_grace_period: 5m", "    stop_grace_periods: 5m"), "schema"),
        (
            "a worker that cannot scale",
            good.replace("    stop_grace_period: 5m", "    stop_grace_period: 5m\n    container_name: w"),
            "scale",
        ),
        ("Redis without AOF", good.replace("\"--appendonly\", \"yes\"", "\"--appendonly\", \"no\""), "appendonly"),
        (
            "an unknown dependency",
            good.replace(
                "      redis:\n        condition: service_healthy\n      gateway:",
                "      rediss:\n        condition: service_healthy\n      gateway:",
            ),
            "unknown service",
        ),
        ("a wrong type", good.replace("      retries: 10", "      retries: [10]"), "schema"),
    ];
    for (what, text, expect) in cases {
        assert_ne!(text, good, "{what}: the case changes nothing");
        let path = dir.path().join("docker-compose.yml");
        std::fs::write(&path, text).unwrap();
        let (ok, out) = check(&path);
        assert!(!ok, "{what} passed:\n{out}");
        assert!(out.contains(expect), "{what}: {out}");
    }
}

/// A second `scripts/up.sh` started while another stack holds its ports
/// says so and leaves the running stack alone. (Before, it went on, its
/// Redis could not bind, and its clean-up shut down the other stack's Redis.)
#[test]
fn a_second_up_sh_leaves_a_running_stack_alone() {
    let dir = tempfile::tempdir().unwrap();
    let redis_port = harness::free_port();
    let _running = harness::spawn_redis(redis_port, dir.path(), false);
    let home = dir.path().join("second");
    use std::os::unix::process::CommandExt;
    let mut up = Command::new("bash")
        .arg(harness::repo_root().join("scripts/up.sh"))
        // Its own process group, so that a run that goes on is stopped whole.
        .process_group(0)
        .env("TAYORI_HOME", &home)
        .env("TAYORI_PORT", harness::free_port().to_string())
        .env("TAYORI_S3_PORT", harness::free_port().to_string())
        .env("TAYORI_REDIS_PORT", redis_port.to_string())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    let status = loop {
        if let Some(s) = up.try_wait().unwrap() {
            break s;
        }
        if t0.elapsed() > std::time::Duration::from_secs(30) {
            let _ = Command::new("kill").args(["-KILL", &format!("-{}", up.id())]).status();
            panic!("the second up.sh kept going with its Redis port taken");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let out = up.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("port {redis_port} is already in use")), "{stderr}");
    let client = redis::Client::open(format!("redis://127.0.0.1:{redis_port}/0")).unwrap();
    let pong: String = redis::cmd("PING").query(&mut client.get_connection().unwrap()).unwrap();
    assert_eq!(pong, "PONG", "the running stack's Redis is untouched");
}
