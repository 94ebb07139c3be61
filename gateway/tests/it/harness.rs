//! Starts a real tayori stack for a test: a private redis-server, the
//! gateway binary (embedded S3 endpoint) and N worker processes, each on
//! free ports with its own directories and queue. Everything is killed when
//! the `Stack` is dropped; on a failing test the processes' logs are printed.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

/// Where the scripts keep what they fetch and build (`TAYORI_CACHE_DIR`,
/// default `.cache`).
fn cache_dir() -> PathBuf {
    std::env::var_os("TAYORI_CACHE_DIR").map(PathBuf::from).unwrap_or_else(|| repo_root().join(".cache"))
}

/// A test photo fetched by scripts/assets.sh (astronaut.png, coffee.png,
/// camera.png).
pub fn fixture(name: &str) -> PathBuf {
    let p = cache_dir().join("fixtures").join(name);
    assert!(p.is_file(), "{} is missing: run scripts/assets.sh first", p.display());
    p
}

/// The events' `seq` numbers are 0, 1, 2, … with no gap or repeat.
pub fn assert_seq_contiguous(events: &[serde_json::Value], what: &str) {
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (0..events.len() as u64).collect::<Vec<_>>(), "{what}");
}

/// Start the gateway with `env`, its output appended to the logs in `dir`.
fn spawn_gateway(bin: &Path, dir: &Path, env: &[(String, String)]) -> Proc {
    let log = |name: &str| {
        std::fs::OpenOptions::new().create(true).append(true).open(dir.join(format!("{name}.log"))).unwrap()
    };
    Proc(
        Command::new(bin)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(log("gateway"))
            .stderr(log("gateway.err"))
            .spawn()
            .unwrap(),
    )
}

/// Start redis-server on `port` with its files in `dir`; returns once it answers.
pub fn spawn_redis(port: u16, dir: &Path, aof: bool) -> Proc {
    spawn_redis_with(port, dir, aof, &[]).expect("redis-server exited at start")
}

/// [`spawn_redis`] with more arguments; `None` if it exited before it
/// answered (a port taken meanwhile by another test).
fn spawn_redis_with(port: u16, dir: &Path, aof: bool, extra: &[String]) -> Option<Proc> {
    let aof = if aof { "yes" } else { "no" };
    let mut redis = Proc(
        Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--save", "", "--appendonly", aof])
            .arg("--dir")
            .arg(dir)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/deps.sh)"),
    );
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/0")).unwrap();
    let t0 = Instant::now();
    while client.get_connection().and_then(|mut c| redis::cmd("PING").query::<String>(&mut c)).is_err() {
        if redis.0.try_wait().unwrap().is_some() {
            return None;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "redis-server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Some(redis)
}

/// A log line without its terminal colours.
pub fn plain(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The name of the master the test sentinels watch.
pub const SENTINEL_MASTER: &str = "tayori";

/// Garage (a distributed S3, run as its own program): the binary
/// `scripts/garage.sh` builds into the cache, or `TAYORI_GARAGE_BIN`.
pub fn garage_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("TAYORI_GARAGE_BIN") {
        return PathBuf::from(p);
    }
    let p = cache_dir().join(format!("garage-{GARAGE_VERSION}/bin/garage"));
    assert!(p.is_file(), "{} is missing: run scripts/garage.sh first", p.display());
    p
}

/// The version scripts/garage.sh builds.
const GARAGE_VERSION: &str = "2.5.0";

/// A one-node Garage with bucket `bucket` and a key that owns it, as an
/// operator sets one up (`garage layout`, `garage bucket create`, a key
/// allowed on the bucket). Returns the server, its S3 endpoint and the key.
fn spawn_garage(dir: &Path, bucket: &str) -> (Proc, String, String, String) {
    let dir = dir.join("garage");
    std::fs::create_dir_all(&dir).unwrap();
    let (s3, rpc, admin) = (free_port(), free_port(), free_port());
    let secret: String = (0..4).map(|_| uuid::Uuid::new_v4().simple().to_string()).collect::<String>()[..64].into();
    let conf = dir.join("garage.toml");
    std::fs::write(
        &conf,
        format!(
            "metadata_dir = \"{d}/meta\"\ndata_dir = \"{d}/data\"\ndb_engine = \"lmdb\"\n\
             replication_factor = 1\n\
             rpc_bind_addr = \"127.0.0.1:{rpc}\"\nrpc_public_addr = \"127.0.0.1:{rpc}\"\nrpc_secret = \"{secret}\"\n\
             [s3_api]\ns3_region = \"us-east-1\"\napi_bind_addr = \"127.0.0.1:{s3}\"\nroot_domain = \".s3.garage.localhost\"\n\
             [admin]\napi_bind_addr = \"127.0.0.1:{admin}\"\n",
            d = dir.display()
        ),
    )
    .unwrap();
    let bin = garage_bin();
    let server = Proc(
        Command::new(&bin)
            .arg("-c")
            .arg(&conf)
            .arg("server")
            .env("RUST_LOG", "warn")
            .stdout(std::fs::File::create(dir.join("garage.log")).unwrap())
            .stderr(std::fs::File::create(dir.join("garage.err.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let garage = |args: &[&str]| {
        let out = Command::new(&bin).arg("-c").arg(&conf).args(args).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let t0 = Instant::now();
    while !garage(&["status"]).0 {
        assert!(t0.elapsed() < Duration::from_secs(30), "garage did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (ok, id) = garage(&["node", "id", "-q"]);
    assert!(ok, "{id}");
    let must = |args: &[&str]| {
        let (ok, out) = garage(args);
        assert!(ok, "garage {args:?}: {out}");
        out
    };
    must(&["layout", "assign", &id.trim()[..64], "-z", "dc1", "-c", "1G"]);
    must(&["layout", "apply", "--version", "1"]);
    must(&["bucket", "create", bucket]);
    let key: serde_json::Value =
        serde_json::from_str(&must(&["json-api", "CreateKey", r#"{"name":"tayori"}"#])).unwrap();
    let (key_id, key_secret) =
        (key["accessKeyId"].as_str().unwrap().to_owned(), key["secretAccessKey"].as_str().unwrap().to_owned());
    must(&["bucket", "allow", "--read", "--write", "--owner", bucket, "--key", &key_id]);
    (server, format!("http://127.0.0.1:{s3}"), key_id, key_secret)
}

/// Start three redis-servers in cluster mode and make them one cluster of
/// three masters (`redis-cli --cluster create`); returns the processes and
/// their ports once every node says the cluster is ok.
fn spawn_cluster(dir: &Path) -> (Vec<Proc>, Vec<u16>) {
    let (mut nodes, mut ports, mut taken) = (Vec::new(), Vec::new(), std::collections::HashSet::new());
    let mut fresh = || loop {
        let p = free_port();
        if taken.insert(p) {
            return p;
        }
    };
    for _ in 0..3 {
        // A port free when chosen may be taken before redis-server binds
        // it (tests run side by side): a node that exits at start is
        // started again on other ports.
        let node = (0..5).find_map(|_| {
            let (port, bus) = (fresh(), fresh());
            let dir = dir.join(format!("cluster-{port}"));
            std::fs::create_dir_all(&dir).unwrap();
            // The bus port is named: port + 10000 may not exist.
            let extra = [
                "--cluster-enabled",
                "yes",
                "--cluster-port",
                &bus.to_string(),
                "--cluster-node-timeout",
                "2000",
                "--cluster-config-file",
                "nodes.conf",
            ]
            .map(str::to_owned);
            spawn_redis_with(port, &dir, false, &extra).map(|p| (p, port))
        });
        let (proc, port) = node.expect("a cluster node did not start in 5 tries");
        nodes.push(proc);
        ports.push(port);
    }
    let out = Command::new("redis-cli")
        .args(["--cluster", "create"])
        .args(ports.iter().map(|p| format!("127.0.0.1:{p}")))
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .output()
        .expect("redis-cli is installed");
    assert!(out.status.success(), "cluster create: {}", String::from_utf8_lossy(&out.stdout));
    let t0 = Instant::now();
    for port in &ports {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
        loop {
            let info: String = client
                .get_connection()
                .and_then(|mut c| redis::cmd("CLUSTER").arg("INFO").query(&mut c))
                .unwrap_or_default();
            if info.contains("cluster_state:ok") && info.contains("cluster_known_nodes:3") {
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(30), "the cluster did not form: {info}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    (nodes, ports)
}

/// Start a replica of the Redis on `master_port`; returns once it has
/// synced.
fn spawn_replica(port: u16, master_port: u16, dir: &Path) -> Proc {
    let dir = dir.join(format!("replica-{port}"));
    std::fs::create_dir_all(&dir).unwrap();
    let replica = Proc(
        Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--save", "", "--appendonly", "no"])
            .args(["--replicaof", "127.0.0.1", &master_port.to_string()])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/0")).unwrap();
    let t0 = Instant::now();
    loop {
        let info = client
            .get_connection()
            .and_then(|mut c| redis::cmd("INFO").arg("replication").query::<String>(&mut c))
            .unwrap_or_default();
        if info.contains("master_link_status:up") {
            return replica;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "the replica did not sync: {info}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Start a sentinel (redis-server in sentinel mode) watching the master on
/// `master_port`: down after 1 s without an answer, two votes to fail over.
fn spawn_sentinel(port: u16, master_port: u16, dir: &Path) -> Proc {
    let conf = dir.join(format!("sentinel-{port}.conf"));
    std::fs::write(
        &conf,
        format!(
            "port {port}\nbind 127.0.0.1\ndir {dir}\n\
             sentinel monitor {SENTINEL_MASTER} 127.0.0.1 {master_port} 2\n\
             sentinel down-after-milliseconds {SENTINEL_MASTER} 1000\n\
             sentinel failover-timeout {SENTINEL_MASTER} 10000\n\
             sentinel parallel-syncs {SENTINEL_MASTER} 1\n",
            dir = dir.display()
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join(format!("sentinel-{port}.log"))).unwrap();
    Proc(Command::new("redis-server").arg(&conf).arg("--sentinel").stdout(log).stderr(Stdio::null()).spawn().unwrap())
}

/// Wait until every sentinel knows the replica and the other sentinels
/// (they find each other through the master, every 2 s).
fn wait_sentinels_ready(ports: &[u16]) {
    let t0 = Instant::now();
    for port in ports {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
        loop {
            let fields: Vec<String> = client
                .get_connection()
                .and_then(|mut c| redis::cmd("SENTINEL").arg("MASTER").arg(SENTINEL_MASTER).query(&mut c))
                .unwrap_or_default();
            let field = |name: &str| fields.iter().position(|f| f == name).and_then(|i| fields.get(i + 1)).cloned();
            if field("num-slaves").as_deref() == Some("1")
                && field("num-other-sentinels").as_deref() == Some(&(ports.len() - 1).to_string())
            {
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(30), "sentinel {port} not ready: {fields:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// (peak, current) resident memory of a process in KiB.
fn memory_kb(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// CPU seconds (user + system) a process has used, with those of its
/// children that it has waited for (ffmpeg, the speech engines), from
/// `/proc/{pid}/stat`; 0 once it is gone.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest.split_whitespace().map(|v| v.parse().unwrap_or(0.0)).collect();
    // utime, stime, cutime, cstime are fields 14-17 (1-based), 12-15 here.
    let ticks: f64 = f.get(11..15).map_or(0.0, |t| t.iter().sum());
    // /proc counts in USER_HZ, which the kernel fixes at 100 for user space.
    ticks / 100.0
}

/// A binary of this build, or of the build in `TAYORI_TEST_BIN_DIR` (to run
/// a test against an older build, e.g. to see it fail before a fix).
fn bin(name: &str) -> PathBuf {
    let gateway = match std::env::var_os("TAYORI_TEST_BIN_DIR") {
        Some(dir) => PathBuf::from(dir).join("gateway"),
        None => PathBuf::from(env!("CARGO_BIN_EXE_gateway")),
    };
    let p = gateway.with_file_name(name);
    assert!(p.is_file(), "{} is not built: run the tests with --workspace", p.display());
    p
}

/// A child process killed (and reaped) when dropped, also when a test
/// panics half-way through starting the stack.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub struct Stack {
    pub dir: tempfile::TempDir,
    pub http: String,
    pub s3_endpoint: String,
    pub redis_url: String,
    pub queue: String,
    pub access_key: String,
    pub secret_key: String,
    pub data_dir: PathBuf,
    redis_port: u16,
    redis_aof: bool,
    /// With [`Topology::Sentinel`]: the replica's and the sentinels' ports.
    pub replica_port: Option<u16>,
    pub sentinel_ports: Vec<u16>,
    /// With [`Topology::Cluster`]: every node's port.
    pub cluster_ports: Vec<u16>,
    /// Which S3 the stack uses.
    pub s3: S3Kind,
    worker_env: Vec<(String, String)>,
    stages: Vec<String>,
    /// Environment given to the gateway, for running its subcommands.
    gateway_env: Vec<(String, String)>,
    // Dropped in this order: workers first, Redis last.
    workers: Vec<Proc>,
    gateway: Proc,
    /// Garage, after the gateway.
    s3_server: Option<Proc>,
    /// The replica and the sentinels, or the other cluster nodes, after
    /// the master (the first cluster node).
    redis_others: Vec<Proc>,
    redis: Proc,
}

/// How the stack's Redis is deployed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Topology {
    /// One redis-server.
    #[default]
    Single,
    /// A master, one replica and three sentinels; the stack is given a
    /// `redis+sentinel://` URL.
    Sentinel,
    /// A Redis Cluster of three masters; the stack is given a
    /// `redis+cluster://` URL naming them.
    Cluster,
}

/// Which S3 the stack uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum S3Kind {
    /// The gateway's embedded endpoint.
    #[default]
    Embedded,
    /// A Garage server of its own (one node), set up as an operator would,
    /// the gateway and the workers pointed at it.
    Garage,
}

pub struct Options {
    pub workers: usize,
    pub s3: S3Kind,
    pub env: Vec<(String, String)>,
    /// Give the stack its own copy of data/ (for tests that change the catalog).
    pub own_data: bool,
    /// `--stages` of worker i (none given: every stage).
    pub stages: Vec<String>,
    /// Redis with its append-only file on, so that it can be restarted.
    pub redis_aof: bool,
    pub topology: Topology,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            workers: 2,
            env: Vec::new(),
            own_data: false,
            stages: Vec::new(),
            redis_aof: false,
            topology: Topology::Single,
            s3: S3Kind::Embedded,
        }
    }
}

impl Stack {
    pub async fn start(opts: Options) -> Stack {
        // Find the binaries before starting anything, so that a missing one
        // leaves no stray process behind.
        let (gateway_bin, _) = (bin("gateway"), bin("worker"));
        let dir = tempfile::tempdir().unwrap();
        let (mut redis_others, mut replica_port, mut sentinel_ports, mut cluster_ports) =
            (Vec::new(), None, Vec::new(), Vec::new());
        let (redis, redis_port) = if opts.topology == Topology::Cluster {
            let (mut nodes, ports) = spawn_cluster(dir.path());
            cluster_ports = ports;
            redis_others = nodes.split_off(1);
            (nodes.pop().unwrap(), cluster_ports[0])
        } else {
            let port = free_port();
            (spawn_redis(port, dir.path(), opts.redis_aof), port)
        };
        let mut redis_url = format!("redis://127.0.0.1:{redis_port}/0");
        if opts.topology == Topology::Cluster {
            let hosts: Vec<String> = cluster_ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
            redis_url = format!("redis+cluster://{}", hosts.join(","));
        }
        if opts.topology == Topology::Sentinel {
            let port = free_port();
            redis_others.push(spawn_replica(port, redis_port, dir.path()));
            replica_port = Some(port);
            sentinel_ports = (0..3).map(|_| free_port()).collect();
            for &p in &sentinel_ports {
                redis_others.push(spawn_sentinel(p, redis_port, dir.path()));
            }
            wait_sentinels_ready(&sentinel_ports);
            let hosts: Vec<String> = sentinel_ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
            redis_url = format!("redis+sentinel://{}/{SENTINEL_MASTER}/0", hosts.join(","));
        }

        let http_port = free_port();
        let s3_port = free_port();
        let queue = format!("test-{}", uuid::Uuid::new_v4().simple());
        let (s3_server, s3_endpoint, access_key, secret_key) = match opts.s3 {
            S3Kind::Embedded => (
                None,
                format!("http://127.0.0.1:{s3_port}"),
                "test-access".to_owned(),
                format!("secret-{}", uuid::Uuid::new_v4().simple()),
            ),
            S3Kind::Garage => {
                let (server, endpoint, id, secret) = spawn_garage(dir.path(), "tayori");
                (Some(server), endpoint, id, secret)
            }
        };
        let data_dir = if opts.own_data {
            let copy = dir.path().join("data");
            let ok = Command::new("cp").arg("-r").arg(repo_root().join("data")).arg(&copy).status().unwrap().success();
            assert!(ok, "copying data/");
            let _ = std::fs::remove_dir_all(copy.join("backups"));
            copy
        } else {
            repo_root().join("data")
        };
        let mut env: Vec<(String, String)> = vec![
            ("TAYORI_REDIS_URL".into(), redis_url.clone()),
            ("TAYORI_QUEUE".into(), queue.clone()),
            ("TAYORI_S3_ACCESS_KEY".into(), access_key.clone()),
            ("TAYORI_S3_SECRET_KEY".into(), secret_key.clone()),
            ("TAYORI_DATA_DIR".into(), data_dir.display().to_string()),
            ("TAYORI_LIFECYCLE_FILE".into(), repo_root().join("lifecycle.json").display().to_string()),
            ("RUST_LOG".into(), "info".into()),
            // Tests that want backups run `gateway backup` themselves.
            ("TAYORI_BACKUP_INTERVAL_SECS".into(), "0".into()),
            // The fast segmentation model unless a test asks for IS-Net
            // (whose quality is checked in the worker's own tests), and no
            // warm-up run competing with the first job for the two cores.
            ("TAYORI_SEGMENTATION_MODEL".into(), "u2netp".into()),
            ("TAYORI_PRELOAD_MODELS".into(), "false".into()),
            // Every test client is 127.0.0.1: the rate limit has its own test.
            ("TAYORI_RATE_LIMIT_PER_MIN".into(), "0".into()),
        ];
        env.extend(opts.env.iter().cloned());
        let mut gateway_env = env.clone();
        gateway_env.extend([
            ("TAYORI_BIND".to_owned(), format!("127.0.0.1:{http_port}")),
            ("TAYORI_TMP_DIR".to_owned(), dir.path().display().to_string()),
        ]);
        match opts.s3 {
            S3Kind::Embedded => gateway_env.extend([
                ("TAYORI_S3_EMBEDDED_BIND".to_owned(), format!("127.0.0.1:{s3_port}")),
                ("TAYORI_S3_EMBEDDED_DIR".to_owned(), dir.path().join("s3").display().to_string()),
            ]),
            S3Kind::Garage => gateway_env.extend([
                ("TAYORI_S3_ENDPOINT".to_owned(), s3_endpoint.clone()),
                ("TAYORI_S3_REQUEST_CHECKSUMS".to_owned(), "when_required".to_owned()),
                ("TAYORI_S3_CORS_ORIGINS".to_owned(), format!("http://127.0.0.1:{http_port}")),
            ]),
        }
        let gateway = spawn_gateway(&gateway_bin, dir.path(), &gateway_env);
        let mut worker_env = env;
        worker_env.push(("TAYORI_S3_ENDPOINT".into(), s3_endpoint.clone()));
        if opts.s3 == S3Kind::Garage {
            worker_env.push(("TAYORI_S3_REQUEST_CHECKSUMS".into(), "when_required".into()));
        }
        let mut stack = Stack {
            worker_env,
            stages: opts.stages.clone(),
            workers: Vec::new(),
            redis_port,
            redis_aof: opts.redis_aof,
            replica_port,
            sentinel_ports,
            cluster_ports,
            s3: opts.s3,
            s3_server,
            redis_others,
            dir,
            http: format!("http://127.0.0.1:{http_port}"),
            s3_endpoint,
            redis_url,
            queue,
            access_key,
            secret_key,
            data_dir,
            gateway_env,
            redis,
            gateway,
        };
        for _ in 0..opts.workers {
            stack.start_worker();
        }
        stack.wait_healthy().await;
        stack
    }

    /// Start one more worker process (index = number started before).
    pub fn start_worker(&mut self) {
        let i = self.workers.len();
        let log = |name: &str| std::fs::File::create(self.dir.path().join(format!("{name}.log"))).unwrap();
        let work = self.dir.path().join(format!("work-{i}"));
        std::fs::create_dir_all(&work).unwrap();
        let mut cmd = Command::new(bin("worker"));
        if let Some(stages) = self.stages.get(i) {
            cmd.args(["--stages", stages]);
        }
        self.workers.push(Proc(
            cmd.envs(self.worker_env.iter().map(|(k, v)| (k, v)))
                .env("TAYORI_WORKER_NAME", format!("test-worker-{i}"))
                .env("TAYORI_WORK_DIR", &work)
                // Relative paths (as in a message that tries `-f.tayori/…`)
                // resolve in the stack's own directory.
                .current_dir(self.dir.path())
                .stdout(log(&format!("worker-{i}")))
                .stderr(log(&format!("worker-{i}.err")))
                .spawn()
                .unwrap(),
        ));
    }

    /// Wait until the gateway answers /health with a success.
    async fn wait_healthy(&self) {
        let http = reqwest::Client::new();
        let t0 = Instant::now();
        loop {
            if let Ok(r) = http.get(format!("{}/health", self.http)).send().await
                && r.status().is_success()
            {
                return;
            }
            assert!(t0.elapsed() < Duration::from_secs(30), "gateway did not become healthy\n{}", self.logs());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Storage client with the stack's credentials, for inspecting S3.
    pub fn storage(&self) -> shared::storage::Storage {
        shared::storage::Storage::new(shared::storage::S3Config {
            endpoint: Some(self.s3_endpoint.clone()),
            public_endpoint: Some(self.s3_endpoint.clone()),
            region: "us-east-1".into(),
            bucket: "tayori".into(),
            access_key: self.access_key.clone(),
            secret_key: self.secret_key.clone(),
            max_attempts: 2,
            path_style: true,
            checksums_when_required: self.s3 == S3Kind::Garage,
        })
    }

    /// A connection to the stack's Redis (the current master, with
    /// Sentinel; the cluster, with a cluster), as the stack's own processes
    /// make it.
    pub async fn redis(&self) -> shared::redis_conn::ConnectionManager {
        shared::redis_conn::RedisConfig::new(self.redis_url.as_str()).connect().await.unwrap()
    }

    pub fn ws_url(&self, task_id: &str) -> String {
        format!("{}/ws/progress/{task_id}", self.http.replacen("http://", "ws://", 1))
    }

    /// Peak and current resident memory (kB) of worker `i`, from /proc.
    #[allow(dead_code)]
    pub fn worker_memory_kb(&self, i: usize) -> (u64, u64) {
        memory_kb(self.workers[i].0.id())
    }

    /// CPU seconds used so far by the gateway, every worker and Redis
    /// (each with its reaped children).
    #[allow(dead_code)]
    pub fn cpu_seconds(&self) -> f64 {
        self.cpu_by_process().iter().map(|(_, s)| s).sum()
    }

    /// CPU seconds used so far by each process of the stack: `gateway`,
    /// `redis`, then `worker-{i}` (each with its reaped children).
    #[allow(dead_code)]
    pub fn cpu_by_process(&self) -> Vec<(String, f64)> {
        let mut all = vec![
            ("gateway".to_owned(), cpu_seconds(self.gateway.0.id())),
            ("redis".to_owned(), cpu_seconds(self.redis.0.id())),
        ];
        all.extend(self.workers.iter().enumerate().map(|(i, w)| (format!("worker-{i}"), cpu_seconds(w.0.id()))));
        all
    }

    /// The gateway's (peak, current) resident memory in KiB.
    #[allow(dead_code)]
    pub fn gateway_memory_kb(&self) -> (u64, u64) {
        memory_kb(self.gateway.0.id())
    }

    pub fn work_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("work-{i}"))
    }

    /// The tail of every process log.
    /// Assert that no log of any process contains the S3 secret key.
    #[allow(dead_code)]
    pub fn assert_secret_not_logged(&self) {
        for entry in std::fs::read_dir(self.dir.path()).unwrap().flatten() {
            let p = entry.path();
            if p.extension().is_some_and(|x| x == "log") {
                let text = std::fs::read_to_string(&p).unwrap_or_default();
                assert!(!text.is_empty() || !p.to_string_lossy().contains("gateway.log"), "{} is empty", p.display());
                assert!(!text.contains(&self.secret_key), "{} contains the S3 secret key", p.display());
            }
        }
    }

    pub fn logs(&self) -> String {
        let mut out = String::new();
        let mut names: Vec<_> = std::fs::read_dir(self.dir.path())
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "log"))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        for p in names {
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(30)..].join("\n");
            out.push_str(&format!("----- {} -----\n{tail}\n", p.file_name().unwrap().to_string_lossy()));
        }
        out
    }

    /// Run a `gateway` subcommand with the stack's configuration.
    pub fn gateway_cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(bin("gateway"))
            .args(args)
            .envs(self.gateway_env.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    }

    /// Send SIGTERM to worker `i`.
    pub fn terminate_worker(&self, i: usize) {
        let pid = self.workers[i].0.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    }

    /// Crash the gateway (SIGKILL: its embedded S3 goes down with it) and
    /// start it again on the same ports and storage; returns once healthy.
    #[allow(dead_code)]
    pub async fn restart_gateway(&mut self) {
        self.kill_gateway();
        self.start_gateway().await;
    }

    /// Stop Redis with `signal` (`TERM`: it writes its files and exits;
    /// `KILL`: a crash) and wait until it has exited.
    #[allow(dead_code)]
    pub fn stop_redis(&mut self, signal: &str) {
        let pid = self.redis.0.id().to_string();
        assert!(Command::new("kill").args([&format!("-{signal}"), &pid]).status().unwrap().success());
        let _ = self.redis.0.wait();
    }

    /// Start Redis again on the same port with the same files.
    #[allow(dead_code)]
    pub fn start_redis(&mut self) {
        self.redis = spawn_redis(self.redis_port, self.dir.path(), self.redis_aof);
    }

    /// Crash the gateway (SIGKILL: its embedded S3 goes down with it).
    #[allow(dead_code)]
    pub fn kill_gateway(&mut self) {
        self.gateway.0.kill().unwrap();
        let _ = self.gateway.0.wait();
    }

    /// Start the gateway again on the same ports and storage; returns once healthy.
    #[allow(dead_code)]
    pub async fn start_gateway(&mut self) {
        self.gateway = spawn_gateway(&bin("gateway"), self.dir.path(), &self.gateway_env);
        self.wait_healthy().await;
    }

    /// SIGKILL worker `i` (a crash: no clean-up, no release of its claims).
    #[allow(dead_code)]
    pub fn kill_worker(&mut self, i: usize) {
        self.workers[i].0.kill().unwrap();
        let _ = self.workers[i].0.wait();
    }

    /// Wait for worker `i` to exit; its exit status, or None after `limit`.
    pub async fn wait_worker_exit(&mut self, i: usize, limit: Duration) -> Option<std::process::ExitStatus> {
        let t0 = Instant::now();
        while t0.elapsed() < limit {
            if let Some(status) = self.workers[i].0.try_wait().unwrap() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    }

    /// Every log line of every worker, for counting what happened.
    pub fn worker_log(&self) -> String {
        (0..self.workers.len()).map(|i| self.worker_log_of(i)).collect::<Vec<_>>().join("\n")
    }

    pub fn worker_log_of(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("worker-{i}.log"))).unwrap_or_default()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
    }
}

/// A short English job (a few seconds of work).
pub const SHORT_EN: &[(&str, &str)] = &[("message", "Happy birthday to you."), ("voice_profile_id", "en_joe_male")];

/// Submit [`SHORT_EN`] with the astronaut photo; returns its task id.
pub async fn submit_short(stack: &Stack) -> String {
    let photo = std::fs::read(fixture("astronaut.png")).unwrap();
    let (status, body) = submit(stack, photo, "a.png", SHORT_EN).await;
    assert_eq!(status, 202, "{body}");
    body["task_id"].as_str().unwrap().to_owned()
}

/// Submit a job whose photo has nobody in it (it fails with `no-person`),
/// speaking `message` in English; returns its task id.
#[allow(dead_code)]
pub async fn submit_no_person(stack: &Stack, message: &str) -> String {
    let photo = std::fs::read(fixture("coffee.png")).unwrap();
    let (status, body) =
        submit(stack, photo, "coffee.png", &[("message", message), ("voice_profile_id", "en_slt_female")]).await;
    assert_eq!(status, 202, "{body}");
    body["task_id"].as_str().unwrap().to_owned()
}

/// Submit a job; returns the HTTP status and the JSON body.
pub async fn submit(
    stack: &Stack,
    image: Vec<u8>,
    file_name: &str,
    fields: &[(&str, &str)],
) -> (reqwest::StatusCode, serde_json::Value) {
    let mut form = reqwest::multipart::Form::new()
        .part("image", reqwest::multipart::Part::bytes(image).file_name(file_name.to_owned()));
    for (k, v) in fields {
        form = form.text(k.to_string(), v.to_string());
    }
    let r =
        reqwest::Client::new().post(format!("{}/api/video/generate", stack.http)).multipart(form).send().await.unwrap();
    let status = r.status();
    let body = r.json().await.unwrap_or(serde_json::Value::Null);
    (status, body)
}

/// ffprobe a file: (video codec, width, height, audio codec, duration).
pub fn ffprobe(path: &Path) -> (String, u32, u32, String, f64) {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-print_format", "json", "-show_format", "-show_streams"])
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success(), "ffprobe failed: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let streams = v["streams"].as_array().unwrap();
    let video = streams.iter().find(|s| s["codec_type"] == "video").expect("a video stream");
    let audio = streams.iter().find(|s| s["codec_type"] == "audio").expect("an audio stream");
    (
        video["codec_name"].as_str().unwrap().to_owned(),
        video["width"].as_u64().unwrap() as u32,
        video["height"].as_u64().unwrap() as u32,
        audio["codec_name"].as_str().unwrap().to_owned(),
        v["format"]["duration"].as_str().unwrap().parse().unwrap(),
    )
}

/// GET a path of the gateway: status and JSON body (null if none).
pub async fn get(stack: &Stack, path: &str) -> (u16, serde_json::Value) {
    let r = reqwest::get(format!("{}{path}", stack.http)).await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(serde_json::Value::Null))
}

/// Duration of an audio file, by ffprobe.
pub fn duration_of(path: &Path) -> f64 {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0"])
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// Follow a job's WebSocket to its end: every event, and the close code.
pub async fn follow(stack: &Stack, task_id: &str, limit: Duration) -> (Vec<serde_json::Value>, Option<u16>) {
    match follow_url(&stack.ws_url(task_id), limit).await {
        Ok(r) => r,
        Err(events) => panic!("no end of job within {limit:?}; events so far: {events:#?}\n{}", stack.logs()),
    }
}

/// Read the WebSocket at `url` to its end: the events and the close code;
/// `Err(events so far)` if it does not end within `limit`.
pub async fn follow_url(
    url: &str,
    limit: Duration,
) -> Result<(Vec<serde_json::Value>, Option<u16>), Vec<serde_json::Value>> {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return Err(events),
            Ok(None) => return Ok((events, None)),
            // The connection broke: no close code.
            Ok(Some(Err(_))) => return Ok((events, None)),
            Ok(Some(Ok(Message::Text(t)))) => events.push(serde_json::from_str(t.as_str()).unwrap()),
            Ok(Some(Ok(Message::Close(frame)))) => return Ok((events, frame.map(|f| u16::from(f.code)))),
            Ok(Some(Ok(_))) => {}
        }
    }
}

/// Read a job's WebSocket until an event satisfies `pred`; returns it.
pub async fn wait_event(
    stack: &Stack,
    task_id: &str,
    limit: Duration,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let (mut ws, _) = tokio_tungstenite::connect_async(stack.ws_url(task_id)).await.unwrap();
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                let ev: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
                if pred(&ev) {
                    return ev;
                }
            }
            Ok(Some(Ok(_))) => {}
            other => panic!("no matching event within {limit:?}: {other:?}\n{}", stack.logs()),
        }
    }
}

/// Poll the status endpoint until the job ends; returns the final body.
pub async fn wait_done(stack: &Stack, task_id: &str, limit: Duration) -> serde_json::Value {
    let http = reqwest::Client::new();
    let t0 = Instant::now();
    loop {
        let body: serde_json::Value =
            http.get(format!("{}/api/video/status/{task_id}", stack.http)).send().await.unwrap().json().await.unwrap();
        if body["status"] == "SUCCESS" || body["status"] == "FAILURE" || body["status"] == "REVOKED" {
            return body;
        }
        assert!(t0.elapsed() < limit, "job {task_id} did not end within {limit:?}: {body}\n{}", stack.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Put a job onto queue `queue` by hand, as another program would.
#[allow(dead_code)]
pub async fn push_raw(stack: &Stack, queue: &str, entry: &str, json: &str, attempts: Option<u64>) {
    let keys = shared::queue::Keys::new(queue);
    let mut redis = stack.redis().await;
    let mut pipe = redis::pipe();
    pipe.hset(&keys.data, entry, json).ignore();
    if let Some(n) = attempts {
        pipe.hset(&keys.attempts, entry, n).ignore();
    }
    pipe.lpush(&keys.pending, entry).ignore().rpush(&keys.wake, 1).ignore();
    let _: () = pipe.query_async(&mut redis).await.unwrap();
}

/// Jobs waiting in the image stage's queue (where the gateway puts them).
#[allow(dead_code)]
pub async fn queued(stack: &Stack) -> u64 {
    let mut redis = stack.redis().await;
    redis::AsyncCommands::llen(&mut redis, shared::queue::Keys::new(&stack.queue).pending).await.unwrap()
}

/// The job's task meta read straight from Redis (works while the gateway is down).
#[allow(dead_code)]
pub async fn meta(stack: &Stack, task_id: &str) -> Option<serde_json::Value> {
    let mut redis = stack.redis().await;
    let raw: Option<String> =
        redis::cmd("GET").arg(shared::keys::task_meta(task_id)).query_async(&mut redis).await.ok().flatten();
    raw.map(|r| serde_json::from_str(&r).unwrap())
}

/// Poll the task meta in Redis until the job ends; returns it.
#[allow(dead_code)]
pub async fn wait_meta_done(stack: &Stack, task_id: &str, limit: Duration) -> serde_json::Value {
    let t0 = Instant::now();
    loop {
        if let Some(m) = meta(stack, task_id).await
            && (m["status"] == "SUCCESS" || m["status"] == "FAILURE" || m["status"] == "REVOKED")
        {
            return m;
        }
        assert!(t0.elapsed() < limit, "job {task_id} did not end within {limit:?}\n{}", stack.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Ask for a presigned POST policy for a photo of `content_type`.
pub async fn policy(stack: &Stack, content_type: &str) -> (reqwest::StatusCode, serde_json::Value) {
    let r = reqwest::Client::new()
        .post(format!("{}/api/uploads?content_type={content_type}", stack.http))
        .send()
        .await
        .unwrap();
    (r.status(), r.json().await.unwrap_or(serde_json::Value::Null))
}

/// POST `body` to S3 with the policy's fields, as a browser form does,
/// but with `content_type` in the `Content-Type` field (a client may change
/// any field; the signed policy decides what S3 accepts).
pub async fn post_to_s3(p: &serde_json::Value, body: Vec<u8>, content_type: &str) -> reqwest::StatusCode {
    let mut form = reqwest::multipart::Form::new();
    for (k, v) in p["fields"].as_object().unwrap() {
        let v = if k == "Content-Type" { content_type } else { v.as_str().unwrap() };
        form = form.text(k.clone(), v.to_owned());
    }
    let part = reqwest::multipart::Part::bytes(body).file_name("photo").mime_str(content_type).unwrap();
    form = form.part(p["file_field"].as_str().unwrap().to_owned(), part);
    // An endpoint may refuse an oversized upload by answering 4xx or by
    // closing the connection before the client has sent it all: a refusal
    // either way (reported as 413 here).
    match reqwest::Client::new().post(p["url"].as_str().unwrap()).multipart(form).send().await {
        Ok(r) => r.status(),
        Err(e) if e.is_request() => reqwest::StatusCode::PAYLOAD_TOO_LARGE,
        Err(e) => panic!("{e:?}"),
    }
}

/// Ask the gateway for the people in an upload.
pub async fn people(stack: &Stack, upload_id: &str) -> (reqwest::StatusCode, serde_json::Value) {
    let r = reqwest::Client::new().post(format!("{}/api/uploads/{upload_id}/people", stack.http)).send().await.unwrap();
    (r.status(), r.json().await.unwrap_or(serde_json::Value::Null))
}
