//! Connecting to Redis: one multiplexed, self-reconnecting connection per
//! process, with bounded timeouts so that a dead Redis yields an error
//! instead of a hang.
//!
//! `TAYORI_REDIS_URL` names either one Redis (`redis://host:port/db`) or a
//! Sentinel deployment:
//!
//! ```text
//! redis+sentinel://[[user]:password@]host:port[,host:port...]/master-name[/db]
//! ```
//!
//! (sentinel port 26379 where none is given; the credentials are the data
//! nodes', the sentinels take none), or a Redis Cluster:
//!
//! ```text
//! redis+cluster://[[user]:password@]host:port[,host:port...]
//! ```
//!
//! (some of its nodes, port 6379 where none is given; the rest are learnt
//! from them). With a cluster every command goes to the node that holds its
//! key's slot and the slot map follows resharding and failover; keys used
//! together share a slot by their hash tags (see `keys`). With Sentinel the master's address is
//! asked of the sentinels at every (re)connection, and a [`ConnectionManager`]
//! whose command failed on a broken connection, a read-only replica or a
//! master that lost its replicas asks again and moves to the new master, so
//! gateways and workers follow a failover by themselves.
//!
//! Replication is asynchronous. Writes that a caller is promised (a job
//! accepted, a stage's outcome) are followed by [`ConnectionManager::replicate`]:
//! `WAIT` for a replica's acknowledgement, so that they survive the loss of
//! the master (see ARCHITECTURE.md, "What survives a failover").

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{ConnectionAddr, IntoConnectionInfo, RedisError, RedisResult};

#[derive(Clone)]
pub struct RedisConfig {
    /// `TAYORI_REDIS_URL`, default `redis://127.0.0.1:6379/0`.
    pub url: String,
    /// `TAYORI_REDIS_TIMEOUT_MS`, default 5000: connect and response timeout.
    pub timeout: Duration,
    /// `TAYORI_REDIS_WAIT_REPLICAS`: how many replicas must acknowledge a
    /// promised write; default 1 with Sentinel, 0 (no `WAIT`) otherwise.
    pub wait_replicas: u32,
    /// `TAYORI_REDIS_WAIT_MS`, default 1000: the longest a promised write
    /// waits for them.
    pub wait_timeout: Duration,
}

/// Without the URL, which may hold a password: its scheme only.
impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &format!("{}://…", self.url.split("://").next().unwrap_or("")))
            .field("timeout", &self.timeout)
            .field("wait_replicas", &self.wait_replicas)
            .field("wait_timeout", &self.wait_timeout)
            .finish()
    }
}

impl RedisConfig {
    /// One server or a Sentinel deployment at `url`, with the defaults.
    pub fn new(url: impl Into<String>) -> Self {
        let url = url.into();
        // A Sentinel deployment has replicas by definition; a cluster may
        // run without (the operator says how many to wait for).
        let wait_replicas = if url.starts_with(SENTINEL_SCHEME) { 1 } else { 0 };
        RedisConfig { url, timeout: Duration::from_secs(5), wait_replicas, wait_timeout: Duration::from_secs(1) }
    }

    pub fn from_env() -> Result<Self, crate::env::EnvError> {
        let url = crate::env::var("TAYORI_REDIS_URL").unwrap_or_else(|| "redis://127.0.0.1:6379/0".into());
        let defaults = RedisConfig::new(url);
        let wait_replicas = match crate::env::var("TAYORI_REDIS_WAIT_REPLICAS") {
            None => defaults.wait_replicas,
            Some(v) => v.parse().map_err(|_| crate::env::EnvError {
                name: "TAYORI_REDIS_WAIT_REPLICAS".into(),
                value: v,
                reason: "expected a number of replicas".into(),
            })?,
        };
        let cfg = RedisConfig {
            timeout: crate::env::millis("TAYORI_REDIS_TIMEOUT_MS", defaults.timeout.as_millis() as u64)?,
            wait_replicas,
            wait_timeout: crate::env::millis("TAYORI_REDIS_WAIT_MS", defaults.wait_timeout.as_millis() as u64)?,
            url: defaults.url,
        };
        cfg.endpoint().map_err(|e| crate::env::EnvError {
            name: "TAYORI_REDIS_URL".into(),
            value: "(not shown: it may hold a password)".into(),
            reason: e.to_string(),
        })?;
        Ok(cfg)
    }

    /// Where Redis is: parsed from the URL, nothing connected yet.
    pub fn endpoint(&self) -> RedisResult<Endpoint> {
        Endpoint::parse(&self.url, self.timeout)
    }

    /// A managed connection that reconnects by itself after Redis restarts
    /// and follows a Sentinel failover.
    pub async fn connect(&self) -> RedisResult<ConnectionManager> {
        ConnectionManager::connect(self.endpoint()?, self).await
    }
}

const SENTINEL_SCHEME: &str = "redis+sentinel://";
const SENTINEL_PORT: u16 = 26379;
const CLUSTER_SCHEME: &str = "redis+cluster://";
const REDIS_PORT: u16 = 6379;

/// Where Redis is: one server, or the master of a Sentinel deployment.
/// Cheap to clone.
#[derive(Clone)]
pub struct Endpoint(Arc<EndpointKind>);

enum EndpointKind {
    Direct(redis::Client),
    Sentinel {
        /// The sentinels' own client keeps connections to them; one caller
        /// at a time.
        client: tokio::sync::Mutex<SentinelClient>,
        service: String,
        timeout: Duration,
    },
    Cluster {
        client: redis::cluster::ClusterClient,
        /// One client per node named in the URL, for pub/sub (a message
        /// published on any node of a cluster reaches every node).
        nodes: Vec<redis::Client>,
        timeout: Duration,
    },
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &*self.0 {
            EndpointKind::Direct(c) => write!(f, "Endpoint({})", c.get_connection_info().addr()),
            EndpointKind::Sentinel { service, .. } => write!(f, "Endpoint(sentinel master {service})"),
            EndpointKind::Cluster { nodes, .. } => write!(f, "Endpoint(cluster of {} named nodes)", nodes.len()),
        }
    }
}

fn invalid(what: &'static str, detail: String) -> RedisError {
    RedisError::from((redis::ErrorKind::InvalidClientConfig, what, detail))
}

/// The parts of a `redis+sentinel://` or `redis+cluster://` URL.
struct MultiHostUrl {
    username: Option<String>,
    password: Option<String>,
    hosts: Vec<(String, u16)>,
    /// The path's parts (`/master-name/db` for Sentinel, none for a cluster).
    path: Vec<String>,
}

/// Parse `scheme://[[user]:password@]h:p[,h:p...][/path...]`, `default_port`
/// where a host names none. Written here: the `redis` crate reads only
/// single-server URLs. Errors name no part of the URL (a password with an
/// unencoded `/` or `@` would land in the host part).
fn parse_multi_host_url(url: &str, scheme: &str, default_port: u16) -> RedisResult<MultiHostUrl> {
    let rest = url.strip_prefix(scheme).ok_or_else(|| invalid("unexpected URL scheme", String::new()))?;
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let decode = |s: &str| -> RedisResult<Option<String>> {
        if s.is_empty() {
            return Ok(None);
        }
        percent_decode(s).map(Some).ok_or_else(|| invalid("bad percent-encoding in the credentials", String::new()))
    };
    let (username, password) = match userinfo {
        None => (None, None),
        Some(u) => match u.split_once(':') {
            Some((user, pass)) => (decode(user)?, decode(pass)?),
            None => (decode(u)?, None),
        },
    };
    let mut out = Vec::new();
    for h in hosts.split(',').filter(|h| !h.is_empty()) {
        let port_of = |p: &str| p.parse::<u16>().map_err(|_| invalid("bad port in the URL", String::new()));
        let (host, port) = if let Some(v6) = h.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or_else(|| invalid("bad address in the URL", String::new()))?;
            match after.strip_prefix(':') {
                Some(p) => (host, port_of(p)?),
                None if after.is_empty() => (host, default_port),
                None => return Err(invalid("bad address in the URL", String::new())),
            }
        } else {
            match h.split_once(':') {
                Some((host, p)) => (host, port_of(p)?),
                None => (h, default_port),
            }
        };
        if host.is_empty() {
            return Err(invalid("empty host in the URL", String::new()));
        }
        out.push((host.to_owned(), port));
    }
    if out.is_empty() {
        return Err(invalid("the URL names no host", String::new()));
    }
    let path = path.split('/').filter(|p| !p.is_empty()).map(str::to_owned).collect();
    Ok(MultiHostUrl { username, password, hosts: out, path })
}

/// The parts of a `redis+sentinel://` URL.
struct SentinelUrl {
    username: Option<String>,
    password: Option<String>,
    sentinels: Vec<(String, u16)>,
    service: String,
    db: i64,
}

/// Parse `redis+sentinel://[[user]:password@]h:p[,h:p...]/service[/db]`.
fn parse_sentinel_url(url: &str) -> RedisResult<SentinelUrl> {
    let u = parse_multi_host_url(url, SENTINEL_SCHEME, SENTINEL_PORT)?;
    let mut parts = u.path.into_iter();
    let service =
        parts.next().ok_or_else(|| invalid("a sentinel URL names no master (…/master-name)", String::new()))?;
    let db = match parts.next() {
        None => 0,
        Some(d) => d.parse().map_err(|_| invalid("bad database number", String::new()))?,
    };
    if parts.next().is_some() {
        return Err(invalid("a sentinel URL's path is /master-name[/db]", String::new()));
    }
    Ok(SentinelUrl { username: u.username, password: u.password, sentinels: u.hosts, service, db })
}

/// Parse `redis+cluster://[[user]:password@]h:p[,h:p...]` (a cluster has
/// database 0 only: a path may say `/0`, nothing else).
fn parse_cluster_url(url: &str) -> RedisResult<MultiHostUrl> {
    let u = parse_multi_host_url(url, CLUSTER_SCHEME, REDIS_PORT)?;
    if !(u.path.is_empty() || u.path == ["0"]) {
        return Err(invalid("a Redis Cluster has database 0 only", String::new()));
    }
    Ok(u)
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

impl Endpoint {
    pub fn parse(url: &str, timeout: Duration) -> RedisResult<Endpoint> {
        if url.starts_with(CLUSTER_SCHEME) {
            return Self::cluster(url, timeout);
        }
        if !url.starts_with(SENTINEL_SCHEME) {
            return Ok(Endpoint(Arc::new(EndpointKind::Direct(redis::Client::open(url)?))));
        }
        let u = parse_sentinel_url(url)?;
        let addrs = u.sentinels.iter().map(|(h, p)| ConnectionAddr::Tcp(h.clone(), *p));
        let tcp = redis::io::tcp::TcpSettings::default();
        let mut b = SentinelClientBuilder::new(addrs, &u.service, SentinelServerType::Master)?
            .set_client_to_redis_db(u.db)
            .set_client_to_redis_tcp_settings(tcp.clone())
            .set_client_to_sentinel_tcp_settings(tcp);
        if let Some(user) = &u.username {
            b = b.set_client_to_redis_username(user);
        }
        if let Some(pass) = &u.password {
            b = b.set_client_to_redis_password(pass);
        }
        Ok(Endpoint(Arc::new(EndpointKind::Sentinel {
            client: tokio::sync::Mutex::new(b.build()?),
            service: u.service,
            timeout,
        })))
    }

    fn cluster(url: &str, timeout: Duration) -> RedisResult<Endpoint> {
        let u = parse_cluster_url(url)?;
        let info = |host: &str, port: u16| {
            let mut redis = redis::RedisConnectionInfo::default();
            if let Some(user) = &u.username {
                redis = redis.set_username(user);
            }
            if let Some(pass) = &u.password {
                redis = redis.set_password(pass);
            }
            Ok::<_, RedisError>(
                ConnectionAddr::Tcp(host.to_owned(), port).into_connection_info()?.set_redis_settings(redis),
            )
        };
        let infos = u.hosts.iter().map(|(h, p)| info(h, *p)).collect::<RedisResult<Vec<_>>>()?;
        let nodes = infos.iter().cloned().map(redis::Client::open).collect::<RedisResult<Vec<_>>>()?;
        let mut b = redis::cluster::ClusterClientBuilder::new(infos)
            .connection_timeout(timeout)
            .response_timeout(timeout)
            .retries(3);
        // For the nodes learnt from the cluster too.
        if let Some(user) = &u.username {
            b = b.username(user);
        }
        if let Some(pass) = &u.password {
            b = b.password(pass);
        }
        let client = b.build()?;
        Ok(Endpoint(Arc::new(EndpointKind::Cluster { client, nodes, timeout })))
    }

    pub fn is_cluster(&self) -> bool {
        matches!(&*self.0, EndpointKind::Cluster { .. })
    }

    pub fn is_sentinel(&self) -> bool {
        matches!(&*self.0, EndpointKind::Sentinel { .. })
    }

    /// A client for the server to talk to now: the one server, or the
    /// master the sentinels name (checked to be a master). A cluster has no
    /// one server: its connections are made in [`Endpoint::managed`] and
    /// [`Endpoint::dedicated`].
    async fn client(&self) -> RedisResult<redis::Client> {
        match &*self.0 {
            EndpointKind::Direct(c) => Ok(c.clone()),
            EndpointKind::Cluster { .. } => Err(invalid("a cluster has no single server", String::new())),
            EndpointKind::Sentinel { client, service, timeout } => {
                let ask = async { client.lock().await.async_get_client().await };
                match tokio::time::timeout(*timeout, ask).await {
                    Ok(r) => r,
                    Err(_) => Err(RedisError::from((
                        redis::ErrorKind::Io,
                        "no sentinel named the master in time",
                        service.clone(),
                    ))),
                }
            }
        }
    }
}

impl Endpoint {
    /// A connection of its own to the current master, or to the cluster
    /// (for a blocking pop, which must not hold up the shared connection);
    /// `response` bounds each reply, so it must exceed the longest block.
    pub async fn dedicated(&self, connect: Duration, response: Duration) -> RedisResult<Dedicated> {
        if let EndpointKind::Cluster { client, .. } = &*self.0 {
            let cfg =
                redis::cluster::ClusterConfig::new().set_connection_timeout(connect).set_response_timeout(response);
            return Ok(Dedicated::Cluster(client.get_async_connection_with_config(cfg).await?));
        }
        let cfg = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(connect))
            .set_response_timeout(Some(response));
        Ok(Dedicated::Single(self.client().await?.get_multiplexed_async_connection_with_config(&cfg).await?))
    }

    /// A pub/sub connection to the current master, or to the first node of
    /// a cluster that answers (a cluster passes every published message to
    /// all its nodes).
    pub async fn pubsub(&self) -> RedisResult<redis::aio::PubSub> {
        let EndpointKind::Cluster { nodes, timeout, .. } = &*self.0 else {
            return self.client().await?.get_async_pubsub().await;
        };
        let mut last = None;
        for node in nodes {
            match tokio::time::timeout(*timeout, node.get_async_pubsub()).await {
                Ok(Ok(p)) => return Ok(p),
                Ok(Err(e)) => last = Some(e),
                Err(_) => {
                    last = Some(RedisError::from((redis::ErrorKind::Io, "a cluster node did not answer in time")))
                }
            }
        }
        Err(last.unwrap_or_else(|| invalid("the URL names no cluster node", String::new())))
    }

    async fn managed(&self, config: &redis::aio::ConnectionManagerConfig) -> RedisResult<(ConnectionAddr, Managed)> {
        if let EndpointKind::Cluster { client, nodes, .. } = &*self.0 {
            let addr = nodes[0].get_connection_info().addr().clone();
            return Ok((addr, Managed::Cluster(client.get_async_connection().await?)));
        }
        let client = self.client().await?;
        let addr = client.get_connection_info().addr().clone();
        Ok((addr, Managed::Single(client.get_connection_manager_with_config(config.clone()).await?)))
    }
}

/// A connection of its own ([`Endpoint::dedicated`]).
pub enum Dedicated {
    Single(redis::aio::MultiplexedConnection),
    Cluster(redis::cluster_async::ClusterConnection),
}

/// The shared connection under a [`ConnectionManager`]: the `redis` crate's
/// self-reconnecting one to one server, or its cluster connection (which
/// reconnects and follows the slot map by itself).
#[derive(Clone)]
enum Managed {
    Single(redis::aio::ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
}

/// Both connection kinds pass commands to the one they hold.
macro_rules! delegate_connection_like {
    ($ty:ident) => {
        impl redis::aio::ConnectionLike for $ty {
            fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, redis::Value> {
                match self {
                    $ty::Single(c) => c.req_packed_command(cmd),
                    $ty::Cluster(c) => c.req_packed_command(cmd),
                }
            }

            fn req_packed_commands<'a>(
                &'a mut self,
                pipeline: &'a redis::Pipeline,
                offset: usize,
                count: usize,
            ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
                match self {
                    $ty::Single(c) => c.req_packed_commands(pipeline, offset, count),
                    $ty::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
                }
            }

            fn get_db(&self) -> i64 {
                match self {
                    $ty::Single(c) => c.get_db(),
                    $ty::Cluster(c) => c.get_db(),
                }
            }
        }
    };
}
delegate_connection_like!(Dedicated);
delegate_connection_like!(Managed);

/// The current connection and the address it goes to.
struct Current {
    generation: u64,
    addr: ConnectionAddr,
    conn: Managed,
}

struct Shared {
    endpoint: Endpoint,
    config: redis::aio::ConnectionManagerConfig,
    current: RwLock<Current>,
    /// One move to a new master at a time.
    moving: tokio::sync::Mutex<()>,
    wait_replicas: u32,
    wait_timeout: Duration,
    /// Until when (ms since `started`) `WAIT` is skipped after one came back
    /// short: with the replicas down every `WAIT` would stall this
    /// connection's other commands for its whole timeout.
    degraded_until_ms: AtomicU64,
    started: Instant,
}

/// How long promised writes go without `WAIT` after one came back short.
const DEGRADED_FOR: Duration = Duration::from_secs(10);

/// A multiplexed connection (the `redis` crate's ConnectionManager) that,
/// with Sentinel, moves to the new master after a failover. Cheap to
/// clone; every clone shares the connection. A command that fails is not
/// sent again by it (it may have run): callers retry as before. On a
/// cluster the crate's cluster connection does send a command again (up to
/// three times) after a broken connection or a redirection, so a command
/// may run twice there: the queue's scripts and the stage claims are made
/// for that (a job fetched twice is held until its lease ends, then
/// delivered again; a stage already claimed or done is not run twice).
#[derive(Clone)]
pub struct ConnectionManager(Arc<Shared>);

impl ConnectionManager {
    pub async fn connect(endpoint: Endpoint, cfg: &RedisConfig) -> RedisResult<ConnectionManager> {
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(cfg.timeout))
            .set_response_timeout(Some(cfg.timeout))
            .set_number_of_retries(3)
            .set_max_delay(Duration::from_secs(2));
        let (addr, conn) = endpoint.managed(&config).await?;
        Ok(ConnectionManager(Arc::new(Shared {
            endpoint,
            config,
            current: RwLock::new(Current { generation: 0, addr, conn }),
            moving: tokio::sync::Mutex::new(()),
            wait_replicas: cfg.wait_replicas,
            wait_timeout: cfg.wait_timeout,
            degraded_until_ms: AtomicU64::new(0),
            started: Instant::now(),
        })))
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.0.endpoint
    }

    fn current(&self) -> (u64, Managed) {
        let c = self.0.current.read().expect("redis connection lock");
        (c.generation, c.conn.clone())
    }

    /// After a failed command: with Sentinel, if the error says the server
    /// is gone or no longer the master, ask the sentinels and move to the
    /// master they name (once, however many commands failed together).
    async fn after_error(&self, generation: u64, e: &RedisError) {
        if !self.0.endpoint.is_sentinel() || !wants_new_master(e) {
            return;
        }
        let _one = self.0.moving.lock().await;
        if self.0.current.read().expect("redis connection lock").generation != generation {
            return; // another command already moved
        }
        let client = match self.0.endpoint.client().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "the sentinels named no reachable master yet");
                return;
            }
        };
        let addr = client.get_connection_info().addr().clone();
        let same = self.0.current.read().expect("redis connection lock").addr == addr;
        if same && !matches!(e.kind(), redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)) {
            return; // still the master: the connection reconnects by itself
        }
        match client.get_connection_manager_with_config(self.0.config.clone()).await {
            Ok(conn) => {
                let conn = Managed::Single(conn);
                tracing::warn!(master = %addr, "moved to the master the sentinels name");
                let mut c = self.0.current.write().expect("redis connection lock");
                *c = Current { generation: c.generation + 1, addr, conn };
            }
            Err(e) => tracing::warn!(error = %e, master = %addr, "the new master cannot be reached yet"),
        }
    }

    /// Make the writes sent on this connection so far durable beyond the
    /// master: `WAIT` until `TAYORI_REDIS_WAIT_REPLICAS` replicas have them
    /// (no-op when that is 0). Short of them within the timeout, the writes
    /// stand (they cannot be taken back) and a warning is logged; for the
    /// next 10 s no `WAIT` is sent, so that a lost replica does not stall
    /// every command behind a `WAIT` that cannot succeed.
    pub async fn replicate(&mut self) -> RedisResult<()> {
        let want = self.0.wait_replicas;
        let now_ms = self.0.started.elapsed().as_millis() as u64;
        if want == 0 || now_ms < self.0.degraded_until_ms.load(Ordering::Relaxed) {
            return Ok(());
        }
        let wait = redis::cmd("WAIT").arg(want).arg(self.0.wait_timeout.as_millis() as u64).query_async(self).await;
        let got: u32 = match wait {
            Ok(n) => n,
            // On a cluster `WAIT` goes to every master: one that cannot be
            // reached fails it, though the write itself (on another) was
            // made. The write stands, as when too few replicas answer.
            Err(e) if self.0.endpoint.is_cluster() => {
                tracing::warn!(error = %e, "WAIT failed on a cluster node");
                0
            }
            Err(e) => return Err(e),
        };
        if got < want {
            let until = self.0.started.elapsed() + DEGRADED_FOR;
            self.0.degraded_until_ms.store(until.as_millis() as u64, Ordering::Relaxed);
            crate::metrics::count_error(crate::metrics::Service::Redis);
            tracing::warn!(want, got, "writes reached fewer replicas than asked; not waiting for replicas for 10 s");
        }
        Ok(())
    }
}

/// The connection broke, timed out or was refused.
fn is_connection_trouble(e: &RedisError) -> bool {
    e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal()
}

/// The server is not (or no longer) a master that takes writes.
fn is_not_master(e: &RedisError) -> bool {
    matches!(e.kind(), redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly | redis::ServerErrorKind::MasterDown))
}

/// Errors after which the master may have changed.
fn wants_new_master(e: &RedisError) -> bool {
    is_connection_trouble(e) || is_not_master(e)
}

impl redis::aio::ConnectionLike for ConnectionManager {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, redis::Value> {
        Box::pin(async move {
            let (generation, mut conn) = self.current();
            let r = conn.req_packed_command(cmd).await;
            if let Err(e) = &r {
                self.after_error(generation, e).await;
            }
            r
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        Box::pin(async move {
            let (generation, mut conn) = self.current();
            let r = conn.req_packed_commands(pipeline, offset, count).await;
            if let Err(e) = &r {
                self.after_error(generation, e).await;
            }
            r
        })
    }

    fn get_db(&self) -> i64 {
        self.current().1.get_db()
    }
}

/// Send commands whose keys may lie in different slots of a cluster: each
/// on its own, all at once on the shared connection (so still one round
/// trip's wait), replies in order. A cluster refuses a pipeline across
/// slots; like a plain pipeline this is not atomic.
pub async fn each<T: redis::FromRedisValue + Send>(
    conn: &ConnectionManager,
    cmds: impl IntoIterator<Item = redis::Cmd>,
) -> RedisResult<Vec<T>> {
    futures::future::try_join_all(cmds.into_iter().map(|cmd| {
        let mut conn = conn.clone();
        async move { cmd.query_async::<T>(&mut conn).await }
    }))
    .await
}

/// Whether a Redis error is worth retrying (connection trouble, timeouts,
/// a server still loading its data, a failover under way) rather than a bug
/// or bad data.
pub fn is_transient(e: &redis::RedisError) -> bool {
    is_connection_trouble(e)
        || is_not_master(e)
        || matches!(
            e.kind(),
            redis::ErrorKind::Server(
                redis::ServerErrorKind::BusyLoading
                    | redis::ServerErrorKind::TryAgain
                    // A cluster resharding or failing over (past the
                    // client's own retries).
                    | redis::ServerErrorKind::ClusterDown
                    | redis::ServerErrorKind::Moved
                    | redis::ServerErrorKind::Ask
            ) | redis::ErrorKind::ClusterConnectionNotFound
        )
}

/// The prelude of every Lua script that needs the time: `now`, Redis's own
/// clock in milliseconds (processes on machines whose clocks disagree still
/// agree on it).
pub const LUA_CLOCK: &str =
    "local t = redis.call('TIME')\nlocal now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n";

/// A script whose body can use `now` ([`LUA_CLOCK`]).
pub fn with_clock(body: &str) -> redis::Script {
    redis::Script::new(&format!("{LUA_CLOCK}{body}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinel_urls_are_read() {
        let u = parse_sentinel_url("redis+sentinel://:p%40ss@10.0.0.1:26379,sentinel-2,[::1]:26380,[::2]/mymaster/2")
            .unwrap();
        assert_eq!(u.username, None);
        assert_eq!(u.password.as_deref(), Some("p@ss"));
        assert_eq!(
            u.sentinels,
            vec![
                ("10.0.0.1".into(), 26379),
                ("sentinel-2".into(), 26379),
                ("::1".into(), 26380),
                ("::2".into(), 26379)
            ]
        );
        assert_eq!((u.service.as_str(), u.db), ("mymaster", 2));
        let u = parse_sentinel_url("redis+sentinel://app:pw@s1:1,s2:2/m").unwrap();
        assert_eq!((u.username.as_deref(), u.password.as_deref(), u.db), (Some("app"), Some("pw"), 0));
    }

    #[test]
    fn cluster_urls_are_read() {
        let u = parse_cluster_url("redis+cluster://app:p%3Aw@10.0.0.1:7000,node-2,[::1]:7002").unwrap();
        assert_eq!((u.username.as_deref(), u.password.as_deref()), (Some("app"), Some("p:w")));
        assert_eq!(u.hosts, vec![("10.0.0.1".into(), 7000), ("node-2".into(), 6379), ("::1".into(), 7002)]);
        assert!(parse_cluster_url("redis+cluster://n1:7000/0").is_ok());
        for bad in ["redis+cluster://", "redis+cluster://n1/1", "redis+cluster://n1:x", "redis+cluster://n1/0/2"] {
            assert!(parse_cluster_url(bad).is_err(), "{bad} was accepted");
        }
        let e = Endpoint::parse("redis+cluster://127.0.0.1:7000,127.0.0.1:7001", Duration::from_secs(1)).unwrap();
        assert!(!e.is_sentinel());
        assert_eq!(format!("{e:?}"), "Endpoint(cluster of 2 named nodes)");
    }

    #[test]
    fn no_password_is_shown() {
        // An unencoded `/` in the password: the URL does not parse, and
        // neither the error nor the configuration shows the password.
        for url in ["redis+cluster://app:s3cret/x@n1:7000", "redis+sentinel://:s3cret/x@s1/m", "redis://:s3cret@h:1/0"]
        {
            let cfg = RedisConfig::new(url);
            assert!(!format!("{cfg:?}").contains("s3cret"), "{cfg:?}");
            if let Err(e) = cfg.endpoint() {
                assert!(!e.to_string().contains("s3cret"), "{e}");
            }
        }
    }

    #[test]
    fn bad_sentinel_urls_are_refused() {
        for bad in [
            "redis+sentinel://s1:26379",
            "redis+sentinel:///m",
            "redis+sentinel://s1:notaport/m",
            "redis+sentinel://s1/m/notadb",
            "redis+sentinel://s1/m/0/extra",
            "redis+sentinel://:%zz@s1/m",
        ] {
            assert!(parse_sentinel_url(bad).is_err(), "{bad} was accepted");
        }
    }
}
