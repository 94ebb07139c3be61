//! `Idempotency-Key` on the routes that make something (a video job, an
//! upload policy): a client that sends its request again, because the
//! connection dropped before the answer came, gets the first answer back
//! instead of a second job.
//!
//! The first request with a key claims it in Redis with a fingerprint of
//! the request (every field, and the photo's SHA-256); once it has answered,
//! the answer is kept 24 h. Another request with the key then gets:
//! - the same fingerprint, answered: the stored answer, `Idempotent-Replayed:
//!   true`, no new work, nothing counted against the client's allowance;
//! - the same fingerprint, still running: 409 `idempotency-request-in-flight`
//!   with `Retry-After`;
//! - another fingerprint: 422 `idempotency-key-reused`.
//!
//! A request that fails gives its key up, so the retry runs afresh. A claim
//! lives 2 minutes while it runs, so a gateway that dies mid-request does
//! not hold the key for a day.
//!
//! The record is named by a SHA-256 of the route and the key, and a secret
//! of the answer (a job's cancel token) is stored sealed with a pad derived
//! from the key itself: whoever reads Redis learns neither the key nor the
//! token. Written here, not taken from a crate: the HTTP idempotency crates
//! in the registry keep their records in process memory, which several
//! gateways cannot share.

use std::sync::LazyLock;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use shared::redis_conn::ConnectionManager;

use crate::error::{AppError, AppResult};

pub const HEADER: &str = "idempotency-key";
/// Marks an answer that was stored, not made now.
pub const REPLAYED: &str = "idempotent-replayed";
/// How long an answered key is kept.
pub const ANSWER_TTL: Duration = Duration::from_secs(24 * 3600);
/// How long a claim lives while its request runs.
pub const CLAIM_TTL: Duration = Duration::from_secs(120);
const MAX_KEY_LEN: usize = 255;

/// A request's key, as Redis names it, with the pad that seals its secret.
#[derive(Clone)]
pub struct Key {
    redis_key: String,
    pad: [u8; 32],
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key").field("redis_key", &self.redis_key).finish_non_exhaustive()
    }
}

impl Key {
    /// The request's `Idempotency-Key` for `route`, if it sent one: 1 to
    /// 255 visible ASCII characters (a UUID is the usual choice), else 400.
    pub fn from_headers(headers: &HeaderMap, route: &str) -> AppResult<Option<Key>> {
        let mut values = headers.get_all(HEADER).iter();
        let Some(value) = values.next() else { return Ok(None) };
        let invalid = || {
            AppError::bad_request(
                "idempotency-key-invalid",
                "Idempotency-Key must be one value of 1 to 255 visible ASCII characters (a UUID, for example).",
            )
        };
        let raw = value.as_bytes();
        if values.next().is_some()
            || raw.is_empty()
            || raw.len() > MAX_KEY_LEN
            || !raw.iter().all(|b| (0x21..=0x7e).contains(b))
        {
            return Err(invalid());
        }
        let name = Sha256::new().chain_update(route).chain_update([0]).chain_update(raw).finalize();
        let pad = Sha256::new()
            .chain_update("tayori idempotency seal\0")
            .chain_update(route)
            .chain_update([0])
            .chain_update(raw)
            .finalize();
        Ok(Some(Key { redis_key: shared::keys::idempotency(&hex::encode(name)), pad: pad.into() }))
    }

    /// A hex secret of at most 32 bytes, sealed with the key's pad.
    fn seal(&self, secret: &str) -> Option<String> {
        let bytes = hex::decode(secret).ok().filter(|b| b.len() <= self.pad.len())?;
        Some(hex::encode(bytes.iter().zip(self.pad).map(|(b, p)| b ^ p).collect::<Vec<u8>>()))
    }

    fn unseal(&self, sealed: &str) -> Option<String> {
        self.seal(sealed)
    }
}

/// A request's fingerprint: SHA-256 over its parts, each named and
/// length-prefixed, so that no two different requests run together.
pub fn fingerprint<'a>(parts: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>) -> String {
    let mut h = Sha256::new();
    for (name, value) in parts {
        h.update((name.len() as u64).to_be_bytes());
        h.update(name);
        match value {
            None => h.update([0]),
            Some(v) => {
                h.update([1]);
                h.update((v.len() as u64).to_be_bytes());
                h.update(v);
            }
        }
    }
    hex::encode(h.finalize())
}

#[derive(Debug, Serialize, Deserialize)]
struct Record {
    fingerprint: String,
    /// The answer's body, once there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    answer: Option<serde_json::Value>,
    /// The answer's secret, sealed (see [`Key::seal`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sealed: Option<String>,
}

/// What a claim came to.
#[derive(Debug)]
enum Claim {
    /// This request holds the key: run it, then [`answered`] or [`release`].
    Fresh,
    /// The same request was answered before: its body, and its secret.
    Replay { answer: serde_json::Value, secret: Option<String> },
}

/// What [`once`] came to.
#[derive(Debug)]
pub enum Once {
    /// The work ran now: its answer.
    Made(serde_json::Value),
    /// The same request was answered before: the stored answer, with its
    /// secret put back in place.
    Replay(serde_json::Value),
}

/// Run `make` at most once for `key` (always, when the request sent none).
///
/// The claim, the work and the recording of its answer (or the release of
/// the key when the work fails) run in a task of their own: hyper drops a
/// handler whose client hung up, and a key left claimed would answer the
/// client's retry 409 until the claim ran out. `secret` names the answer's
/// field that is stored sealed (a job's cancel token).
pub async fn once<F>(
    mut redis: ConnectionManager,
    key: Option<Key>,
    fingerprint: String,
    secret: Option<&'static str>,
    make: F,
) -> AppResult<Once>
where
    F: Future<Output = AppResult<serde_json::Value>> + Send + 'static,
{
    let work = tokio::spawn(async move {
        let Some(key) = key else { return make.await.map(Once::Made) };
        if let Claim::Replay { mut answer, secret: sealed } = claim(&mut redis, &key, &fingerprint).await? {
            if let Some(field) = secret {
                answer[field] = sealed.into();
            }
            return Ok(Once::Replay(answer));
        }
        let made = make.await;
        match &made {
            Ok(answer) => {
                let mut stored = answer.clone();
                let plain = secret.and_then(|f| stored.get_mut(f).map(serde_json::Value::take));
                let plain = plain.as_ref().and_then(serde_json::Value::as_str);
                if let Err(e) = answered(&mut redis, &key, &fingerprint, &stored, plain).await {
                    // The answer stands; a retry then makes the thing again.
                    tracing::warn!(error = %e, "could not keep an answer for its Idempotency-Key");
                }
            }
            Err(_) => release(&mut redis, &key, &fingerprint).await,
        }
        made.map(Once::Made)
    });
    work.await.map_err(|e| AppError::Internal(format!("idempotent request task: {e}")))?
}

/// Returns the record already there, or sets the claim and returns nil.
static CLAIM: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local v = redis.call('GET', KEYS[1])
if v then return v end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return false
",
    )
});

/// Deletes the key only while it still holds this request's claim.
static RELEASE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
",
    )
});

fn pending(fingerprint: &str) -> String {
    serde_json::to_string(&Record { fingerprint: fingerprint.to_owned(), answer: None, sealed: None })
        .expect("a record serializes")
}

/// Claim `key` for a request with `fingerprint`.
async fn claim(redis: &mut ConnectionManager, key: &Key, fingerprint: &str) -> AppResult<Claim> {
    let found: Option<String> =
        CLAIM.key(&key.redis_key).arg(pending(fingerprint)).arg(CLAIM_TTL.as_secs()).invoke_async(redis).await?;
    let Some(found) = found else { return Ok(Claim::Fresh) };
    let record: Record = serde_json::from_str(&found)
        .map_err(|e| AppError::Internal(format!("idempotency record {} is invalid: {e}", key.redis_key)))?;
    if record.fingerprint != fingerprint {
        return Err(AppError::client(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency-key-reused",
            "This Idempotency-Key was used for a different request; use a new key for a new request.",
        ));
    }
    match record.answer {
        Some(answer) => Ok(Claim::Replay { answer, secret: record.sealed.and_then(|s| key.unseal(&s)) }),
        None => Err(AppError::Busy {
            status: StatusCode::CONFLICT,
            code: "idempotency-request-in-flight",
            message: "The first request with this Idempotency-Key is still being handled; ask again in a moment."
                .into(),
            retry_after: 1,
        }),
    }
}

/// Keep the answer of the request that held `key` for [`ANSWER_TTL`].
async fn answered(
    redis: &mut ConnectionManager,
    key: &Key,
    fingerprint: &str,
    answer: &serde_json::Value,
    secret: Option<&str>,
) -> AppResult<()> {
    let record = Record {
        fingerprint: fingerprint.to_owned(),
        answer: Some(answer.clone()),
        sealed: secret.and_then(|s| key.seal(s)),
    };
    let record = serde_json::to_string(&record).map_err(|e| AppError::Internal(e.to_string()))?;
    let _: () = redis.set_ex(&key.redis_key, record, ANSWER_TTL.as_secs()).await?;
    Ok(())
}

/// Give up the claim of a request that failed, so that its retry runs.
async fn release(redis: &mut ConnectionManager, key: &Key, fingerprint: &str) {
    let r: redis::RedisResult<i64> = RELEASE.key(&key.redis_key).arg(pending(fingerprint)).invoke_async(redis).await;
    if let Err(e) = r {
        // The claim then ends by itself after CLAIM_TTL.
        tracing::warn!(error = %e, "could not release an idempotency key");
    }
}

/// Mark a response as a replay.
pub fn mark_replayed(headers: &mut HeaderMap) {
    headers.insert(REPLAYED, HeaderValue::from_static("true"));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&[u8]]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(HEADER, HeaderValue::from_bytes(v).unwrap());
        }
        h
    }

    #[test]
    fn keys_are_checked_and_named_by_route() {
        assert!(Key::from_headers(&HeaderMap::new(), "generate").unwrap().is_none());
        let a = Key::from_headers(&headers(&[b"abc-123"]), "generate").unwrap().unwrap();
        let b = Key::from_headers(&headers(&[b"abc-123"]), "uploads").unwrap().unwrap();
        assert_ne!(a.redis_key, b.redis_key, "one key on two routes is two records");
        assert!(!a.redis_key.contains("abc"), "the key itself is not stored: {}", a.redis_key);
        let long = vec![b'a'; 256];
        for bad in [&b""[..], b"has space", b"tab\there", &long, "名前".as_bytes()] {
            let r = Key::from_headers(&headers(&[bad]), "generate");
            assert!(r.is_err(), "{:?} accepted", String::from_utf8_lossy(bad));
        }
        assert!(Key::from_headers(&headers(&[b"one", b"two"]), "generate").is_err(), "two values");
    }

    #[test]
    fn secrets_are_sealed_with_the_key() {
        let k = Key::from_headers(&headers(&[b"k1"]), "generate").unwrap().unwrap();
        let other = Key::from_headers(&headers(&[b"k2"]), "generate").unwrap().unwrap();
        let token = "00ff".repeat(16);
        let sealed = k.seal(&token).unwrap();
        assert_ne!(sealed, token);
        assert_eq!(k.unseal(&sealed).as_deref(), Some(token.as_str()));
        assert_ne!(other.unseal(&sealed).as_deref(), Some(token.as_str()));
    }

    #[test]
    fn fingerprints_tell_requests_apart() {
        let f = |m: Option<&str>, b: Option<&str>| {
            fingerprint([("message", m.map(str::as_bytes)), ("bgm_id", b.map(str::as_bytes))])
        };
        assert_eq!(f(Some("hi"), None), f(Some("hi"), None));
        assert_ne!(f(Some("hi"), None), f(Some("hi"), Some("")), "absent is not empty");
        assert_ne!(f(Some("ab"), Some("c")), f(Some("a"), Some("bc")), "parts do not run together");
    }
}
