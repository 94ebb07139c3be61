//! Gateway configuration, from `TAYORI_*` environment variables.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use shared::env::{self, EnvError};
use shared::queue::QueueConfig;
use shared::redis_conn::RedisConfig;
use shared::storage::S3Config;
use shared::tasks::Ttls;

use crate::s3_server::EmbeddedS3Config;

#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// `TAYORI_BIND`, default `127.0.0.1:8080`.
    pub bind: SocketAddr,
    /// `TAYORI_DATA_DIR`, default `data`: the catalog directory.
    pub data_dir: PathBuf,
    /// `TAYORI_LIFECYCLE_FILE`, default `lifecycle.json`: applied to the bucket at start.
    pub lifecycle_file: PathBuf,
    /// `TAYORI_TMP_DIR`, default the system temp dir: where uploads are spooled.
    pub tmp_dir: PathBuf,
    /// `TAYORI_MAX_UPLOAD_BYTES`, default 10 MiB.
    pub max_upload_bytes: u64,
    /// `TAYORI_CORS_ORIGINS`: other web origins allowed to call the API
    /// (comma-separated; default none: same-origin only).
    pub cors_origins: Vec<axum::http::HeaderValue>,
    /// `TAYORI_S3_CORS_ORIGINS`: with an S3 other than the embedded one, the
    /// origins of the pages (the gateway's own, as browsers reach it) that
    /// may upload to and fetch from the bucket; set as the bucket's CORS at
    /// start. Default none: the bucket's CORS is left as the operator made it.
    pub s3_cors_origins: Vec<axum::http::HeaderValue>,
    /// `TAYORI_MAX_IMAGE_PIXELS`, default 40,000,000: larger photos are refused
    /// before anything decodes them.
    pub max_image_pixels: u64,
    /// `TAYORI_PRESIGN_TTL_SECS`, default 3600: validity of download links.
    pub presign_ttl: Duration,
    /// `TAYORI_BACKUP_INTERVAL_SECS`, default 86400: catalog backups to
    /// `data/backups/` and S3; 0 turns the job off.
    pub backup_interval: Duration,
    /// `TAYORI_CATALOG_TASK_TIMEOUT_SECS`, default 60: how long an upload
    /// analysis or a preview may take on a worker before the request gives up.
    pub catalog_task_timeout: Duration,
    /// `TAYORI_RATE_LIMIT_PER_MIN`, default 5: video jobs per client address
    /// per minute, shared by every gateway through Redis (0: no limit).
    pub rate_limit_per_min: u32,
    /// `TAYORI_TRUSTED_PROXY_HOPS`, default 0 (1 if
    /// `TAYORI_TRUST_PROXY_HEADERS=true`): how many proxies of yours stand in
    /// front of the gateway, each appending to `X-Forwarded-For`. The client
    /// is the entry that many places from the right; 0: the connection's peer.
    /// `TAYORI_TRUSTED_PROXY_NETS`, default `private` (loopback, 10/8,
    /// 172.16/12, 192.168/16, ::1, fc00::/7): `X-Forwarded-For` is read only
    /// from connections from these blocks (comma-separated CIDRs).
    pub proxies: crate::admission::TrustedProxies,
    /// `TAYORI_HEADER_READ_TIMEOUT_SECS`, default 10: time a client gets to
    /// send a request's head (slow clients are cut off).
    pub header_read_timeout: Duration,
    /// `TAYORI_BODY_TIMEOUT_SECS`, default 60: time a client gets to send a
    /// whole request body (a 10 MB upload at 1.4 Mbit/s); slower ones get 408.
    pub body_timeout: Duration,
    /// `TAYORI_MAX_CONNECTIONS`, default 4096: open connections per server
    /// (the gateway, the embedded S3 endpoint); past it new ones are closed.
    pub max_connections: usize,
    /// `TAYORI_MAX_CONNECTIONS_PER_CLIENT`, default 64: open connections one
    /// client (IPv4 address, IPv6 /64) may hold on each server; on the
    /// gateway only without trusted proxies (behind them the proxy bounds
    /// its clients). 0: no bound.
    pub max_connections_per_client: usize,
    /// `TAYORI_MAX_QUEUE_DEPTH`, default 1000: above it new jobs get 503 (0: no bound).
    pub max_queue_depth: u64,
    /// `TAYORI_MAX_CATALOG_QUEUE_DEPTH`, default 50: above it music and voice
    /// uploads, previews and people lookups get 503 (0: no bound).
    pub max_catalog_queue_depth: u64,
    /// `TAYORI_ADMIN_TOKEN`: turns on `/admin` (the operators' dashboard and
    /// API), at least 16 characters. Unset: `/admin` does not exist (404).
    pub admin_token: Option<String>,
    /// `TAYORI_FAILED_KEEP_SECS`, default 7 days: how long a failed job is
    /// kept for an operator's retry.
    pub failed_keep: Duration,
    pub redis: RedisConfig,
    pub queue: QueueConfig,
    pub ttls: Ttls,
    pub s3: S3Config,
    /// Set when no `TAYORI_S3_ENDPOINT` is given: the gateway serves S3 itself.
    pub embedded_s3: Option<EmbeddedS3Config>,
}

/// A comma-separated list of web origins in `name` (none when unset).
fn origins(name: &str) -> Result<Vec<axum::http::HeaderValue>, EnvError> {
    let raw = env::var(name).unwrap_or_default();
    crate::cors::parse_origins(&raw).map_err(|reason| EnvError { name: name.into(), value: raw, reason })
}

impl GatewayConfig {
    /// The bounds of the gateway's own HTTP server (`behind_proxies`: its
    /// peers are proxies, so no per-client bound) or the embedded S3's.
    pub fn server_limits(&self, behind_proxies: bool) -> crate::serve::Limits {
        crate::serve::Limits {
            header_timeout: self.header_read_timeout,
            body_timeout: self.body_timeout,
            max_connections: self.max_connections,
            max_per_client: if behind_proxies { 0 } else { self.max_connections_per_client },
        }
    }

    pub fn from_env() -> Result<Self, EnvError> {
        let s3 = S3Config::from_env()?;
        let embedded_s3 = if s3.endpoint.is_none() && env::var("TAYORI_S3_USE_AWS").is_none() {
            Some(EmbeddedS3Config {
                bind: env::parse("TAYORI_S3_EMBEDDED_BIND", SocketAddr::from(([127, 0, 0, 1], 9000)))?,
                dir: env::parse("TAYORI_S3_EMBEDDED_DIR", PathBuf::from(".tayori/s3"))?,
                sweep_interval: env::secs("TAYORI_S3_SWEEP_SECS", 3600)?,
                day: env::secs("TAYORI_S3_DAY_SECS", 86_400)?,
            })
        } else {
            None
        };
        Ok(GatewayConfig {
            bind: env::parse("TAYORI_BIND", SocketAddr::from(([127, 0, 0, 1], 8080)))?,
            data_dir: env::parse("TAYORI_DATA_DIR", PathBuf::from("data"))?,
            lifecycle_file: env::parse("TAYORI_LIFECYCLE_FILE", PathBuf::from("lifecycle.json"))?,
            tmp_dir: env::parse("TAYORI_TMP_DIR", std::env::temp_dir())?,
            max_upload_bytes: env::parse("TAYORI_MAX_UPLOAD_BYTES", 10 * 1024 * 1024)?,
            cors_origins: origins("TAYORI_CORS_ORIGINS")?,
            s3_cors_origins: origins("TAYORI_S3_CORS_ORIGINS")?,
            max_image_pixels: env::parse("TAYORI_MAX_IMAGE_PIXELS", 40_000_000)?,
            presign_ttl: env::secs("TAYORI_PRESIGN_TTL_SECS", 3600)?,
            backup_interval: env::secs("TAYORI_BACKUP_INTERVAL_SECS", 86_400)?,
            catalog_task_timeout: env::secs("TAYORI_CATALOG_TASK_TIMEOUT_SECS", 60)?,
            rate_limit_per_min: env::parse("TAYORI_RATE_LIMIT_PER_MIN", 5)?,
            proxies: crate::admission::TrustedProxies {
                hops: {
                    let legacy: bool = env::parse("TAYORI_TRUST_PROXY_HEADERS", false)?;
                    env::parse("TAYORI_TRUSTED_PROXY_HOPS", u32::from(legacy))?
                },
                nets: {
                    let raw = env::var("TAYORI_TRUSTED_PROXY_NETS").unwrap_or_else(|| "private".into());
                    crate::admission::parse_nets(&raw).map_err(|reason| EnvError {
                        name: "TAYORI_TRUSTED_PROXY_NETS".into(),
                        value: raw.clone(),
                        reason,
                    })?
                },
            },
            max_queue_depth: env::parse("TAYORI_MAX_QUEUE_DEPTH", 1000)?,
            max_catalog_queue_depth: env::parse("TAYORI_MAX_CATALOG_QUEUE_DEPTH", 50)?,
            header_read_timeout: env::secs("TAYORI_HEADER_READ_TIMEOUT_SECS", 10)?,
            body_timeout: env::secs("TAYORI_BODY_TIMEOUT_SECS", 60)?,
            max_connections: env::parse("TAYORI_MAX_CONNECTIONS", 4096)?,
            max_connections_per_client: env::parse("TAYORI_MAX_CONNECTIONS_PER_CLIENT", 64)?,
            admin_token: match env::var("TAYORI_ADMIN_TOKEN") {
                Some(t) if t.trim().chars().count() < crate::admin::MIN_TOKEN_CHARS => {
                    return Err(EnvError {
                        name: "TAYORI_ADMIN_TOKEN".into(),
                        value: "(hidden)".into(),
                        reason: format!(
                            "an admin token must be at least {} characters (a random one: openssl rand -hex 32)",
                            crate::admin::MIN_TOKEN_CHARS
                        ),
                    });
                }
                t => t.map(|t| t.trim().to_owned()),
            },
            failed_keep: shared::failed::keep_from_env()?,
            redis: RedisConfig::from_env()?,
            queue: QueueConfig::from_env()?,
            ttls: Ttls::from_env()?,
            s3,
            embedded_s3,
        })
    }
}
