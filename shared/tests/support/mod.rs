//! A real redis-server on a private port, for the queue's tests and bench.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    child: Child,
    pub url: String,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/deps.sh)");
        let url = format!("redis://127.0.0.1:{port}/0");
        let client = redis::Client::open(url.as_str()).unwrap();
        let t0 = Instant::now();
        while client.get_connection().is_err() {
            assert!(t0.elapsed() < Duration::from_secs(10), "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        RedisServer { child, url, _dir: dir }
    }

    pub async fn manager(&self) -> shared::redis_conn::ConnectionManager {
        shared::redis_conn::RedisConfig::new(self.url.as_str()).connect().await.unwrap()
    }

    /// Bytes of memory Redis reports in use.
    #[allow(dead_code)] // not every user of this module needs it
    pub async fn used_memory(&self) -> u64 {
        let mut c = self.manager().await;
        let info: String = redis::cmd("INFO").arg("memory").query_async(&mut c).await.unwrap();
        info.lines().find_map(|l| l.strip_prefix("used_memory:")).unwrap().trim().parse().unwrap()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
