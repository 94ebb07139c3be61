//! S3 storage: one wrapper over aws-sdk-s3 used against the embedded
//! endpoint and against any real S3 (AWS, MinIO, Garage) alike.
//!
//! Presigned POST is signed here by hand because the Rust SDK has presigned
//! GET and PUT but no POST policy (SigV4, "browser-based uploads").

use std::path::Path;
use std::time::{Duration, SystemTime};

use aws_sdk_s3::Client;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;
use tokio::io::AsyncWriteExt;

use crate::lifecycle::LifecycleRules;

#[derive(Clone)]
pub struct S3Config {
    /// `TAYORI_S3_ENDPOINT`: URL of an S3 endpoint (MinIO, Garage, …). Unset:
    /// the gateway serves its embedded endpoint; on AWS, the regional default.
    pub endpoint: Option<String>,
    /// `TAYORI_S3_PUBLIC_ENDPOINT`: the endpoint as browsers reach it, used in
    /// presigned URLs (they sign the host). Default: `endpoint`.
    pub public_endpoint: Option<String>,
    /// `TAYORI_S3_REGION`, default `us-east-1`.
    pub region: String,
    /// `TAYORI_S3_BUCKET`, default `tayori`.
    pub bucket: String,
    /// `TAYORI_S3_ACCESS_KEY` (required).
    pub access_key: String,
    /// `TAYORI_S3_SECRET_KEY` (required; never logged).
    pub secret_key: String,
    /// `TAYORI_S3_MAX_ATTEMPTS`, default 5: attempts per S3 call, with
    /// exponential backoff between them.
    pub max_attempts: u32,
    /// `TAYORI_S3_PATH_STYLE`, default true when an endpoint is set.
    pub path_style: bool,
    /// `TAYORI_S3_REQUEST_CHECKSUMS`, `when_supported` (default: uploads
    /// carry a CRC32 the store checks) or `when_required` (only where S3
    /// demands one). For a store that refuses the SDK's signed streaming
    /// uploads over plain HTTP (Garage 2.5: "Invalid payload signature").
    pub checksums_when_required: bool,
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("public_endpoint", &self.public_endpoint)
            .field("region", &self.region)
            .field("bucket", &self.bucket)
            .field("access_key", &self.access_key)
            .field("secret_key", &"<redacted>")
            .finish()
    }
}

impl S3Config {
    pub fn from_env() -> Result<Self, crate::env::EnvError> {
        let missing = |name: &str| crate::env::EnvError {
            name: name.into(),
            value: String::new(),
            reason: "must be set (the S3 credentials shared by the gateway and the workers)".into(),
        };
        let endpoint = crate::env::var("TAYORI_S3_ENDPOINT");
        Ok(S3Config {
            public_endpoint: crate::env::var("TAYORI_S3_PUBLIC_ENDPOINT").or_else(|| endpoint.clone()),
            path_style: crate::env::parse("TAYORI_S3_PATH_STYLE", endpoint.is_some())?,
            endpoint,
            region: crate::env::var("TAYORI_S3_REGION").unwrap_or_else(|| "us-east-1".into()),
            bucket: crate::env::var("TAYORI_S3_BUCKET").unwrap_or_else(|| "tayori".into()),
            access_key: crate::env::var("TAYORI_S3_ACCESS_KEY").ok_or_else(|| missing("TAYORI_S3_ACCESS_KEY"))?,
            secret_key: crate::env::var("TAYORI_S3_SECRET_KEY").ok_or_else(|| missing("TAYORI_S3_SECRET_KEY"))?,
            max_attempts: crate::env::parse("TAYORI_S3_MAX_ATTEMPTS", 5)?,
            checksums_when_required: match crate::env::var("TAYORI_S3_REQUEST_CHECKSUMS").as_deref() {
                None | Some("when_supported") => false,
                Some("when_required") => true,
                Some(other) => {
                    return Err(crate::env::EnvError {
                        name: "TAYORI_S3_REQUEST_CHECKSUMS".into(),
                        value: other.into(),
                        reason: "expected when_supported or when_required".into(),
                    });
                }
            },
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("object {key} not found")]
    NotFound { key: String },
    #[error("S3 {op} failed: {message}")]
    Service { op: &'static str, message: String, transient: bool },
    #[error("local file error during S3 {op}: {source}")]
    Io {
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
}

impl StorageError {
    /// Whether trying again later may succeed (network, throttling, 5xx).
    pub fn is_transient(&self) -> bool {
        match self {
            StorageError::Service { transient, .. } => *transient,
            StorageError::NotFound { .. } | StorageError::Io { .. } => false,
        }
    }

    fn from_sdk<E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static>(
        op: &'static str,
        err: SdkError<E>,
    ) -> Self {
        crate::metrics::count_error(crate::metrics::Service::S3);
        let transient = match &err {
            SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => true,
            SdkError::ServiceError(e) => e.raw().status().is_server_error() || e.raw().status().as_u16() == 429,
            _ => false,
        };
        let message = match err.code() {
            Some(code) => format!("{code}: {}", err.message().unwrap_or("")),
            None => format!("{}", aws_sdk_s3::error::DisplayErrorContext(&err)),
        };
        StorageError::Service { op, message, transient }
    }
}

/// A signed browser upload: POST `url` as multipart/form-data with `fields`
/// first and the file last, in a field named `file`.
#[derive(Debug, Clone, Serialize)]
pub struct PresignedPost {
    pub url: String,
    pub fields: Vec<(String, String)>,
    pub expires_at: DateTime<Utc>,
}

/// A listed object.
#[derive(Debug, Clone)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    pub last_modified: Option<SystemTime>,
}

#[derive(Clone, Debug)]
pub struct Storage {
    client: Client,
    presign_client: Client,
    cfg: S3Config,
}

fn build_client(cfg: &S3Config, endpoint: Option<&str>) -> Client {
    use aws_smithy_http_client::{Builder, tls};
    let http = Builder::new().tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::Ring)).build_https();
    let mut b = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(cfg.region.clone()))
        .credentials_provider(Credentials::new(&cfg.access_key, &cfg.secret_key, None, None, "tayori"))
        .http_client(http)
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(cfg.max_attempts.max(1))
                .with_initial_backoff(Duration::from_millis(200))
                .with_max_backoff(Duration::from_secs(5)),
        )
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5))
                .operation_attempt_timeout(Duration::from_secs(120))
                .build(),
        )
        .force_path_style(cfg.path_style);
    if cfg.checksums_when_required {
        b = b.request_checksum_calculation(aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired);
    }
    if let Some(ep) = endpoint {
        b = b.endpoint_url(ep);
    }
    Client::from_conf(b.build())
}

impl Storage {
    pub fn new(cfg: S3Config) -> Self {
        let client = build_client(&cfg, cfg.endpoint.as_deref());
        let presign_client = if cfg.public_endpoint == cfg.endpoint {
            client.clone()
        } else {
            build_client(&cfg, cfg.public_endpoint.as_deref())
        };
        Storage { client, presign_client, cfg }
    }

    pub fn bucket(&self) -> &str {
        &self.cfg.bucket
    }

    pub fn config(&self) -> &S3Config {
        &self.cfg
    }

    /// Create the bucket if it does not exist.
    pub async fn ensure_bucket(&self) -> Result<(), StorageError> {
        match self.client.head_bucket().bucket(&self.cfg.bucket).send().await {
            Ok(_) => return Ok(()),
            Err(SdkError::ServiceError(e)) if e.raw().status().as_u16() == 404 => {}
            Err(e) => return Err(StorageError::from_sdk("HeadBucket", e)),
        }
        match self.client.create_bucket().bucket(&self.cfg.bucket).send().await {
            Ok(_) => Ok(()),
            Err(e) => match e.code() {
                Some("BucketAlreadyOwnedByYou") | Some("BucketAlreadyExists") => Ok(()),
                _ => Err(StorageError::from_sdk("CreateBucket", e)),
            },
        }
    }

    /// Reachability check for `/health`.
    pub async fn check(&self) -> Result<(), StorageError> {
        self.client
            .head_bucket()
            .bucket(&self.cfg.bucket)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| StorageError::from_sdk("HeadBucket", e))
    }

    pub async fn put_lifecycle(&self, rules: &LifecycleRules) -> Result<(), StorageError> {
        self.client
            .put_bucket_lifecycle_configuration()
            .bucket(&self.cfg.bucket)
            .lifecycle_configuration(rules.to_sdk())
            .send()
            .await
            .map(|_| ())
            .map_err(|e| StorageError::from_sdk("PutBucketLifecycleConfiguration", e))
    }

    /// Let pages from `origins` upload to the bucket (the presigned POST)
    /// and fetch from it (presigned links), the bucket's whole CORS
    /// configuration. For an S3 other than the embedded one, which answers
    /// CORS itself.
    pub async fn put_cors(&self, origins: &[String]) -> Result<(), StorageError> {
        let mut rule = aws_sdk_s3::types::CorsRule::builder()
            .allowed_headers("*")
            .expose_headers("ETag")
            .expose_headers("Content-Length")
            .max_age_seconds(600);
        // Browsers upload by the presigned POST and read by GET; nothing
        // else is theirs to do.
        for m in ["GET", "HEAD", "POST"] {
            rule = rule.allowed_methods(m);
        }
        for o in origins {
            rule = rule.allowed_origins(o);
        }
        let invalid = |e: aws_sdk_s3::error::BuildError| StorageError::Service {
            op: "PutBucketCors",
            message: e.to_string(),
            transient: false,
        };
        let cors = aws_sdk_s3::types::CorsConfiguration::builder()
            .cors_rules(rule.build().map_err(invalid)?)
            .build()
            .map_err(invalid)?;
        self.client
            .put_bucket_cors()
            .bucket(&self.cfg.bucket)
            .cors_configuration(cors)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| StorageError::from_sdk("PutBucketCors", e))
    }

    pub async fn get_lifecycle(&self) -> Result<LifecycleRules, StorageError> {
        let out = self
            .client
            .get_bucket_lifecycle_configuration()
            .bucket(&self.cfg.bucket)
            .send()
            .await
            .map_err(|e| StorageError::from_sdk("GetBucketLifecycleConfiguration", e))?;
        Ok(LifecycleRules::from_sdk(out.rules()))
    }

    pub async fn put_file(&self, key: &str, path: &Path, content_type: &str) -> Result<u64, StorageError> {
        let len = tokio::fs::metadata(path).await.map_err(|source| StorageError::Io { op: "PutObject", source })?.len();
        // ByteStream::from_path re-opens the file on each retry attempt.
        let body = ByteStream::from_path(path)
            .await
            .map_err(|e| StorageError::Io { op: "PutObject", source: std::io::Error::other(e) })?;
        self.client
            .put_object()
            .bucket(&self.cfg.bucket)
            .key(key)
            .content_type(content_type)
            .body(body)
            .send()
            .await
            .map_err(|e| StorageError::from_sdk("PutObject", e))?;
        Ok(len)
    }

    pub async fn put_bytes(&self, key: &str, bytes: Vec<u8>, content_type: &str) -> Result<(), StorageError> {
        self.client
            .put_object()
            .bucket(&self.cfg.bucket)
            .key(key)
            .content_type(content_type)
            .body(ByteStream::from(bytes))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| StorageError::from_sdk("PutObject", e))
    }

    /// Stream an object into a local file; returns its size.
    pub async fn get_to_file(&self, key: &str, path: &Path) -> Result<u64, StorageError> {
        let out = self.client.get_object().bucket(&self.cfg.bucket).key(key).send().await.map_err(|e| {
            match e.as_service_error() {
                Some(se) if se.is_no_such_key() => StorageError::NotFound { key: key.to_owned() },
                _ => StorageError::from_sdk("GetObject", e),
            }
        })?;
        let io = |source| StorageError::Io { op: "GetObject", source };
        let mut file = tokio::fs::File::create(path).await.map_err(io)?;
        let mut body = out.body;
        let mut n = 0u64;
        while let Some(chunk) = body.try_next().await.map_err(|e| StorageError::Service {
            op: "GetObject",
            message: e.to_string(),
            transient: true,
        })? {
            n += chunk.len() as u64;
            file.write_all(&chunk).await.map_err(io)?;
        }
        file.flush().await.map_err(io)?;
        Ok(n)
    }

    /// Size of an object, or `None` when it does not exist.
    pub async fn head(&self, key: &str) -> Result<Option<u64>, StorageError> {
        match self.client.head_object().bucket(&self.cfg.bucket).key(key).send().await {
            Ok(out) => Ok(Some(out.content_length().unwrap_or(0).max(0) as u64)),
            Err(SdkError::ServiceError(e)) if e.raw().status().as_u16() == 404 => Ok(None),
            Err(e) => Err(StorageError::from_sdk("HeadObject", e)),
        }
    }

    pub async fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.client
            .delete_object()
            .bucket(&self.cfg.bucket)
            .key(key)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| StorageError::from_sdk("DeleteObject", e))
    }

    /// Every object under `prefix` (follows continuation tokens).
    pub async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StorageError> {
        let mut out = Vec::new();
        let mut token = None;
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.cfg.bucket)
                .prefix(prefix)
                .set_continuation_token(token)
                .send()
                .await
                .map_err(|e| StorageError::from_sdk("ListObjectsV2", e))?;
            for o in page.contents() {
                out.push(ObjectInfo {
                    key: o.key().unwrap_or_default().to_owned(),
                    size: o.size().unwrap_or(0).max(0) as u64,
                    last_modified: o.last_modified().and_then(|t| SystemTime::try_from(*t).ok()),
                });
            }
            match page.next_continuation_token() {
                Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_owned()),
                _ => break,
            }
        }
        Ok(out)
    }

    /// Delete every object under `prefix`; returns how many.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<usize, StorageError> {
        let objects = self.list(prefix).await?;
        for o in &objects {
            self.delete(&o.key).await?;
        }
        Ok(objects.len())
    }

    /// A presigned GET URL, valid for `ttl`.
    pub async fn presign_get(&self, key: &str, ttl: Duration) -> Result<(String, DateTime<Utc>), StorageError> {
        let cfg = presigning(ttl)?;
        let req = self
            .presign_client
            .get_object()
            .bucket(&self.cfg.bucket)
            .key(key)
            .presigned(cfg)
            .await
            .map_err(|e| StorageError::from_sdk("PresignGetObject", e))?;
        Ok((req.uri().to_owned(), Utc::now() + ttl))
    }

    /// A presigned GET URL that makes browsers save the object as
    /// `file_name` (`Content-Disposition: attachment`), valid for `ttl`.
    pub async fn presign_download(
        &self,
        key: &str,
        file_name: &str,
        ttl: Duration,
    ) -> Result<(String, DateTime<Utc>), StorageError> {
        let cfg = presigning(ttl)?;
        let safe: String =
            file_name.chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')).collect();
        let req = self
            .presign_client
            .get_object()
            .bucket(&self.cfg.bucket)
            .key(key)
            .response_content_disposition(format!("attachment; filename=\"{safe}\""))
            .presigned(cfg)
            .await
            .map_err(|e| StorageError::from_sdk("PresignGetObject", e))?;
        Ok((req.uri().to_owned(), Utc::now() + ttl))
    }

    /// A presigned PUT URL for one content type, valid for `ttl`.
    pub async fn presign_put(&self, key: &str, content_type: &str, ttl: Duration) -> Result<String, StorageError> {
        let cfg = presigning(ttl)?;
        let req = self
            .presign_client
            .put_object()
            .bucket(&self.cfg.bucket)
            .key(key)
            .content_type(content_type)
            .presigned(cfg)
            .await
            .map_err(|e| StorageError::from_sdk("PresignPutObject", e))?;
        Ok(req.uri().to_owned())
    }

    /// The bucket's address as browsers reach it (path-style or virtual-host).
    pub fn public_bucket_url(&self) -> String {
        match &self.cfg.public_endpoint {
            Some(ep) if self.cfg.path_style => format!("{}/{}", ep.trim_end_matches('/'), self.cfg.bucket),
            Some(ep) => {
                let (scheme, host) = ep.split_once("://").unwrap_or(("https", ep));
                format!("{scheme}://{}.{}", self.cfg.bucket, host.trim_end_matches('/'))
            }
            None => format!("https://{}.s3.{}.amazonaws.com", self.cfg.bucket, self.cfg.region),
        }
    }

    /// The origin (`scheme://host[:port]`) of [`Storage::public_bucket_url`]:
    /// where browsers send uploads and fetch previews and videos.
    pub fn public_origin(&self) -> String {
        let url = self.public_bucket_url();
        let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(&url);
        let host = rest.split('/').next().unwrap_or(rest);
        let scheme = url.split_once("://").map(|(s, _)| s).unwrap_or("https");
        format!("{scheme}://{host}")
    }

    /// A presigned POST policy: the S3 endpoint itself enforces the key, the
    /// content type and `content-length-range` 0..=max_bytes.
    pub fn presign_post(&self, key: &str, content_type: &str, max_bytes: u64, ttl: Duration) -> PresignedPost {
        let now = Utc::now();
        let url = self.public_bucket_url();
        let post = sign_post_policy(&PostPolicyInput {
            bucket: &self.cfg.bucket,
            key,
            content_type,
            max_bytes,
            region: &self.cfg.region,
            access_key: &self.cfg.access_key,
            secret_key: &self.cfg.secret_key,
            now,
            ttl,
        });
        PresignedPost { url, fields: post, expires_at: now + ttl }
    }
}

fn presigning(ttl: Duration) -> Result<PresigningConfig, StorageError> {
    PresigningConfig::expires_in(ttl).map_err(|e| StorageError::Service {
        op: "Presign",
        message: e.to_string(),
        transient: false,
    })
}

struct PostPolicyInput<'a> {
    bucket: &'a str,
    key: &'a str,
    content_type: &'a str,
    max_bytes: u64,
    region: &'a str,
    access_key: &'a str,
    secret_key: &'a str,
    now: DateTime<Utc>,
    ttl: Duration,
}

type HmacSha256 = Hmac<Sha256>;

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any size");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

/// SigV4 signing key for one service, region and day.
fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> Vec<u8> {
    let k = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k = hmac(&k, region.as_bytes());
    let k = hmac(&k, service.as_bytes());
    hmac(&k, b"aws4_request")
}

/// Form fields of a SigV4 POST policy (AWS "Authenticating Requests in
/// Browser-Based Uploads Using POST").
fn sign_post_policy(p: &PostPolicyInput<'_>) -> Vec<(String, String)> {
    use base64::Engine;
    let date = p.now.format("%Y%m%d").to_string();
    let amz_date = p.now.format("%Y%m%dT%H%M%SZ").to_string();
    let credential = format!("{}/{date}/{}/s3/aws4_request", p.access_key, p.region);
    let expiration = (p.now + p.ttl).format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string();
    let policy = serde_json::json!({
        "expiration": expiration,
        "conditions": [
            {"bucket": p.bucket},
            {"key": p.key},
            {"Content-Type": p.content_type},
            ["content-length-range", 0, p.max_bytes],
            {"x-amz-algorithm": "AWS4-HMAC-SHA256"},
            {"x-amz-credential": credential},
            {"x-amz-date": amz_date},
        ]
    });
    let policy_b64 = base64::engine::general_purpose::STANDARD.encode(policy.to_string());
    let signature = hex::encode(hmac(&signing_key(p.secret_key, &date, p.region, "s3"), policy_b64.as_bytes()));
    vec![
        ("key".into(), p.key.to_owned()),
        ("Content-Type".into(), p.content_type.to_owned()),
        ("x-amz-algorithm".into(), "AWS4-HMAC-SHA256".into()),
        ("x-amz-credential".into(), credential),
        ("x-amz-date".into(), amz_date),
        ("policy".into(), policy_b64),
        ("x-amz-signature".into(), signature),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The signing-key derivation example from AWS's SigV4 documentation
    /// ("Examples of how to derive a signing key"): 20120215, us-east-1, iam.
    #[test]
    fn signing_key_matches_the_aws_documented_example() {
        let k = signing_key("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "20120215", "us-east-1", "iam");
        assert_eq!(hex::encode(k), "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d");
    }

    #[test]
    fn post_policy_carries_the_size_and_type_conditions() {
        use base64::Engine;
        let now = DateTime::parse_from_rfc3339("2026-01-02T03:04:05Z").unwrap().with_timezone(&Utc);
        let fields = sign_post_policy(&PostPolicyInput {
            bucket: "b",
            key: "images/uploads/x/original.jpg",
            content_type: "image/jpeg",
            max_bytes: 10 * 1024 * 1024,
            region: "us-east-1",
            access_key: "AK",
            secret_key: "SK",
            now,
            ttl: Duration::from_secs(600),
        });
        let get = |k: &str| fields.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()).unwrap();
        let policy: serde_json::Value =
            serde_json::from_slice(&base64::engine::general_purpose::STANDARD.decode(get("policy")).unwrap()).unwrap();
        assert_eq!(policy["expiration"], "2026-01-02T03:14:05.000Z");
        let conds = policy["conditions"].as_array().unwrap();
        assert!(conds.contains(&serde_json::json!(["content-length-range", 0, 10485760])));
        assert!(conds.contains(&serde_json::json!({"Content-Type": "image/jpeg"})));
        assert_eq!(get("x-amz-credential"), "AK/20260102/us-east-1/s3/aws4_request");
        assert_eq!(get("x-amz-signature").len(), 64);
    }
}
