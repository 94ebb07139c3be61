//! The embedded S3 endpoint: a real S3 protocol server (s3s + s3s-fs, SigV4
//! signatures checked) on its own port over a local directory, used when no
//! external S3 endpoint is configured.
//!
//! s3s-fs implements objects and buckets but not bucket lifecycle (it answers
//! 501) nor CORS preflight, so this module adds both: lifecycle rules are
//! stored per bucket as JSON beside the object tree and a sweeper deletes
//! expired objects through the S3 API itself; a CORS layer lets the page
//! fetch presigned URLs and POST uploads. Transitions (e.g. to GLACIER) are
//! stored and reported but have no effect here: there is one storage class.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use axum::body::Body as AxumBody;
use axum::response::IntoResponse;
use s3s::dto::*;
use s3s::{S3, S3Request, S3Response, S3Result, s3_error};
use s3s_fs::FileSystem;
use shared::lifecycle::LifecycleRules;
use shared::storage::Storage;
use tokio::net::TcpListener;

#[derive(Debug, Clone)]
pub struct EmbeddedS3Config {
    /// `TAYORI_S3_EMBEDDED_BIND`, default `127.0.0.1:9000`.
    pub bind: SocketAddr,
    /// `TAYORI_S3_EMBEDDED_DIR`, default `.tayori/s3`: objects under
    /// `objects/`, lifecycle rules under `lifecycle/`.
    pub dir: PathBuf,
    /// `TAYORI_S3_SWEEP_SECS`, default 3600: how often expired objects are removed.
    pub sweep_interval: Duration,
    /// `TAYORI_S3_DAY_SECS`, default 86400: length of a lifecycle "day"
    /// (shortened only by tests).
    pub day: Duration,
}

/// s3s-fs plus stored lifecycle configurations.
struct Embedded {
    fs: FileSystem,
    lifecycle_dir: PathBuf,
}

impl Embedded {
    fn lifecycle_path(&self, bucket: &str) -> S3Result<PathBuf> {
        if bucket.is_empty()
            || !bucket.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
            || bucket.contains("..")
        {
            return Err(s3_error!(InvalidBucketName));
        }
        Ok(self.lifecycle_dir.join(format!("{bucket}.json")))
    }
}

/// Delegate the object and bucket operations s3s-fs implements.
macro_rules! delegate {
    ($($name:ident($input:ty) -> $output:ty;)*) => {
        $(
            // Written out as #[async_trait] expands it: the attribute does not
            // see inside macro invocations.
            fn $name<'life0, 'async_trait>(
                &'life0 self,
                req: S3Request<$input>,
            ) -> std::pin::Pin<Box<dyn std::future::Future<Output = S3Result<S3Response<$output>>> + Send + 'async_trait>>
            where
                'life0: 'async_trait,
                Self: 'async_trait,
            {
                Box::pin(async move { self.fs.$name(req).await })
            }
        )*
    };
}

#[async_trait::async_trait]
impl S3 for Embedded {
    /// s3s-fs, plus the `response-content-disposition` and
    /// `response-content-type` overrides of a signed GET (S3 honours them
    /// in presigned URLs: the page's download link names the file).
    async fn get_object(&self, req: S3Request<GetObjectInput>) -> S3Result<S3Response<GetObjectOutput>> {
        let disposition = req.input.response_content_disposition.clone();
        let content_type = req.input.response_content_type.clone();
        let mut resp = self.fs.get_object(req).await?;
        if disposition.is_some() {
            resp.output.content_disposition = disposition;
        }
        if let Some(ct) = content_type.and_then(|c| c.parse().ok()) {
            resp.output.content_type = Some(ct);
        }
        Ok(resp)
    }

    delegate! {
        create_bucket(CreateBucketInput) -> CreateBucketOutput;
        copy_object(CopyObjectInput) -> CopyObjectOutput;
        delete_bucket(DeleteBucketInput) -> DeleteBucketOutput;
        delete_object(DeleteObjectInput) -> DeleteObjectOutput;
        delete_objects(DeleteObjectsInput) -> DeleteObjectsOutput;
        get_bucket_location(GetBucketLocationInput) -> GetBucketLocationOutput;
        head_bucket(HeadBucketInput) -> HeadBucketOutput;
        head_object(HeadObjectInput) -> HeadObjectOutput;
        list_buckets(ListBucketsInput) -> ListBucketsOutput;
        list_objects(ListObjectsInput) -> ListObjectsOutput;
        list_objects_v2(ListObjectsV2Input) -> ListObjectsV2Output;
        put_object(PutObjectInput) -> PutObjectOutput;
        create_multipart_upload(CreateMultipartUploadInput) -> CreateMultipartUploadOutput;
        upload_part(UploadPartInput) -> UploadPartOutput;
        upload_part_copy(UploadPartCopyInput) -> UploadPartCopyOutput;
        list_parts(ListPartsInput) -> ListPartsOutput;
        complete_multipart_upload(CompleteMultipartUploadInput) -> CompleteMultipartUploadOutput;
        abort_multipart_upload(AbortMultipartUploadInput) -> AbortMultipartUploadOutput;
    }

    async fn put_bucket_lifecycle_configuration(
        &self,
        req: S3Request<PutBucketLifecycleConfigurationInput>,
    ) -> S3Result<S3Response<PutBucketLifecycleConfigurationOutput>> {
        let bucket = req.input.bucket.clone();
        let config = req.input.lifecycle_configuration.clone().unwrap_or_default();
        self.fs
            .head_bucket(req.map_input(|_| HeadBucketInput { bucket: bucket.clone(), ..Default::default() }))
            .await?;
        let json = serde_json::to_vec_pretty(&config).map_err(|e| s3_error!(e, InternalError))?;
        let path = self.lifecycle_path(&bucket)?;
        write_atomically(&path, &json).await.map_err(|e| s3_error!(e, InternalError))?;
        Ok(S3Response::new(PutBucketLifecycleConfigurationOutput::default()))
    }

    async fn get_bucket_lifecycle_configuration(
        &self,
        req: S3Request<GetBucketLifecycleConfigurationInput>,
    ) -> S3Result<S3Response<GetBucketLifecycleConfigurationOutput>> {
        let path = self.lifecycle_path(&req.input.bucket)?;
        let bytes = match tokio::fs::read(&path).await {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(s3_error!(NoSuchLifecycleConfiguration)),
            Err(e) => return Err(s3_error!(e, InternalError)),
        };
        let config: BucketLifecycleConfiguration =
            serde_json::from_slice(&bytes).map_err(|e| s3_error!(e, InternalError))?;
        Ok(S3Response::new(GetBucketLifecycleConfigurationOutput { rules: Some(config.rules), ..Default::default() }))
    }

    async fn delete_bucket_lifecycle(
        &self,
        req: S3Request<DeleteBucketLifecycleInput>,
    ) -> S3Result<S3Response<DeleteBucketLifecycleOutput>> {
        let path = self.lifecycle_path(&req.input.bucket)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(s3_error!(e, InternalError)),
        }
        Ok(S3Response::new(DeleteBucketLifecycleOutput::default()))
    }
}

async fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp.{}", uuid::Uuid::new_v4().simple()));
    tokio::fs::write(&tmp, bytes).await?;
    tokio::fs::rename(&tmp, path).await
}

/// The largest body chunk handed to s3s. Its form parser (0.14.1) keeps a
/// chunk that ends in what may be the start of the closing boundary, then
/// appends the whole next chunk to it and refuses the upload past 64 KiB;
/// hyper reads chunks of 64 KiB and more, so a file with a carriage return
/// at a chunk's end (any photo, by chance; every chunk of a file of them)
/// failed with a 400. Chunks of at most this size keep that buffer under
/// the limit whatever the bytes.
const MAX_FRAME: usize = 16 * 1024;

/// A request body re-cut into data frames of at most [`MAX_FRAME`] bytes
/// (the bytes are shared, not copied).
struct SmallFrames<B> {
    inner: B,
    rest: bytes::Bytes,
}

impl<B> http_body::Body for SmallFrames<B>
where
    B: http_body::Body<Data = bytes::Bytes> + Unpin,
{
    type Data = bytes::Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, B::Error>>> {
        use std::task::Poll;
        let this = &mut *self;
        if this.rest.is_empty() {
            match std::pin::Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => this.rest = data,
                    Err(frame) => return Poll::Ready(Some(Ok(frame))),
                },
                other => return other,
            }
        }
        let n = this.rest.len().min(MAX_FRAME);
        Poll::Ready(Some(Ok(http_body::Frame::data(this.rest.split_to(n)))))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        let mut hint = self.inner.size_hint();
        let rest = self.rest.len() as u64;
        // Upper bound first: a lower bound above the upper one panics.
        if let Some(upper) = hint.upper() {
            hint.set_upper(upper.saturating_add(rest));
        }
        hint.set_lower(hint.lower().saturating_add(rest));
        hint
    }
}

/// A running embedded S3 endpoint.
pub struct EmbeddedS3 {
    pub addr: SocketAddr,
}

/// Bind the port and serve until `shutdown` completes.
pub async fn start(
    cfg: &EmbeddedS3Config,
    access_key: &str,
    secret_key: &str,
    origins: &[http::HeaderValue],
    limits: crate::serve::Limits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<EmbeddedS3> {
    let objects = cfg.dir.join("objects");
    let lifecycle_dir = cfg.dir.join("lifecycle");
    tokio::fs::create_dir_all(&objects).await?;
    tokio::fs::create_dir_all(&lifecycle_dir).await?;
    let fs = FileSystem::new(&objects).map_err(|e| std::io::Error::other(format!("{e:?}")))?;
    let service = {
        let mut b = s3s::service::S3ServiceBuilder::new(Embedded { fs, lifecycle_dir });
        b.set_auth(s3s::auth::SimpleAuth::from_single(access_key, secret_key));
        b.build()
    };
    let handler = move |req: axum::extract::Request| {
        let service = service.clone();
        async move {
            let req = req.map(|b| s3s::Body::http_body_unsync(SmallFrames { inner: b, rest: bytes::Bytes::new() }));
            match service.call(req).await {
                Ok(resp) => resp.map(AxumBody::new).into_response(),
                Err(e) => {
                    tracing::error!(error = ?e, "embedded S3 request failed");
                    http::StatusCode::INTERNAL_SERVER_ERROR.into_response()
                }
            }
        }
    };
    // Browsers fetch presigned URLs and POST uploads straight to this port.
    let cors = crate::cors::embedded_s3(origins);
    let app = axum::Router::new().fallback(handler).layer(cors);
    let listener = TcpListener::bind(cfg.bind).await?;
    let addr = listener.local_addr()?;
    // The same hardened loop as the gateway's (header and body timeouts,
    // HTTP/1 only): browsers upload to this port directly.
    tokio::spawn(async move {
        if let Err(e) = crate::serve::serve(listener, app, limits, shutdown).await {
            tracing::error!(error = %e, "embedded S3 server stopped");
        }
    });
    tracing::info!(%addr, dir = %cfg.dir.display(), "embedded S3 endpoint listening");
    Ok(EmbeddedS3 { addr })
}

/// Remove objects whose lifecycle rule says they have expired, through the
/// S3 API (so the object store's own bookkeeping stays right).
pub async fn sweep_expired(storage: &Storage, day: Duration) -> Result<usize, shared::storage::StorageError> {
    let rules: LifecycleRules = match storage.get_lifecycle().await {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(error = %e, "no lifecycle rules to apply");
            return Ok(0);
        }
    };
    let now = SystemTime::now();
    let mut removed = 0;
    for rule in rules.rules.iter().filter(|r| r.status == "Enabled") {
        let Some(exp) = &rule.expiration else { continue };
        let max_age = day * exp.days;
        for obj in storage.list(&rule.prefix).await? {
            let age = obj.last_modified.and_then(|t| now.duration_since(t).ok()).unwrap_or_default();
            if age >= max_age {
                storage.delete(&obj.key).await?;
                removed += 1;
            }
        }
    }
    Ok(removed)
}

/// Run [`sweep_expired`] every `interval` until the task is dropped.
pub async fn sweeper(storage: Storage, interval: Duration, day: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match sweep_expired(&storage, day).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "lifecycle sweep removed expired objects"),
            Err(e) => tracing::warn!(error = %e, "lifecycle sweep failed"),
        }
    }
}
