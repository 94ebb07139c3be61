//! Every Redis key and S3 object key tayori uses, in one place.
//!
//! The names follow the original design (`progress:{task_id}`,
//! `ws:session:{id}`, the Celery-compatible task meta key, and the bucket
//! layout `images/`, `voices/`, `bgm/`, `videos/`).
//!
//! Keys that one script (or one transaction) touches together share a
//! Redis Cluster hash slot, through a hash tag (the part of a key in its
//! first `{...}`, which alone decides the slot): a job's progress keys are
//! tagged with its task id (`progress:{ID}`, literally as the original
//! design writes it); its stage record with the whole task meta key
//! (`job:stages:{celery-task-meta-ID}`): a key without braces hashes as a
//! whole, so this puts the record in the meta's slot while the meta keeps
//! the name Celery clients read; a queue's keys with the queue's name
//! (`queue:{NAME}:pending`, ...). The test below checks each group.

/// Task meta (status, result, error), kept 24 h.
pub fn task_meta(task_id: &str) -> String {
    format!("celery-task-meta-{task_id}")
}

/// Latest progress snapshot of a job, kept 5 minutes after the last event.
pub fn progress(task_id: &str) -> String {
    format!("progress:{{{task_id}}}")
}

/// Ordered list of every progress event of a job (same TTL as the snapshot):
/// lets a viewer that connects late or reconnects replay what it missed.
pub fn progress_log(task_id: &str) -> String {
    format!("progress:{{{task_id}}}:log")
}

/// The next progress sequence number of a job (a counter that lives as long
/// as the task meta, so numbering never restarts when the log expires
/// during a long wait).
pub fn progress_seq(task_id: &str) -> String {
    format!("progress:{{{task_id}}}:seq")
}

/// Pub/sub channel on which workers publish a job's progress events.
pub fn progress_channel(task_id: &str) -> String {
    format!("progress:{task_id}")
}

/// Pattern a gateway subscribes to in order to relay every job's events.
pub const PROGRESS_CHANNEL_PATTERN: &str = "progress:*";

/// Task id from a progress channel name (`progress:{task_id}`).
pub fn task_id_from_channel(channel: &str) -> Option<&str> {
    channel.strip_prefix("progress:").filter(|id| !id.contains(':'))
}

/// A WebSocket viewer's session, kept 10 minutes, refreshed by ping.
pub fn ws_session(session_id: &str) -> String {
    format!("ws:session:{session_id}")
}

/// Marks a stage of a job as claimed so that a redelivered copy is not run twice.
pub fn job_claim(task_id: &str, stage: crate::job::Stage) -> String {
    format!("job:claim:{task_id}:{}", stage.name())
}

/// SHA-256 of a job's cancel token (hex), kept as long as its meta.
pub fn job_cancel(task_id: &str) -> String {
    format!("job:cancel:{task_id}")
}

/// Hash of a job's finished stages (`done:{stage}`), their step records
/// (`metrics:{stage}`) and how often each was started (`starts:{stage}`).
pub fn job_stages(task_id: &str) -> String {
    format!("job:stages:{{{}}}", task_meta(task_id))
}

/// What an `Idempotency-Key` came to (a JSON record: the request's
/// fingerprint, then its answer), named by a SHA-256 of the route and the
/// key; kept 2 minutes while the request runs, 24 h once it has answered.
pub fn idempotency(key_hash: &str) -> String {
    format!("idem:{key_hash}")
}

/// A video job that ended in FAILURE, kept for an operator to retry
/// (JSON, [`crate::failed::FailedJob`]), `TAYORI_FAILED_KEEP_SECS`.
pub fn failed_job(task_id: &str) -> String {
    format!("failed:job:{task_id}")
}

/// ZSET of the kept failures' task ids by when they failed (ms).
pub fn failed_index() -> String {
    "failed:index".to_owned()
}

/// A worker's latest heartbeat (JSON, [`crate::heartbeat::Heartbeat`]),
/// kept 15 s after it.
pub fn worker(name: &str) -> String {
    format!("worker:{name}")
}

/// ZSET of worker names by their last heartbeat (ms).
pub fn workers() -> String {
    "workers".to_owned()
}

/// A photo uploaded straight to S3 through a presigned POST policy: its
/// object key, kept one hour from the policy whether or not a job used it
/// (more than one job may be made from one upload).
pub fn upload(upload_id: &str) -> String {
    format!("upload:{upload_id}")
}

/// S3 object keys of one job (bucket layout of the original design).
pub mod objects {
    pub fn upload_original(task_id: &str, ext: &str) -> String {
        format!("images/uploads/{task_id}/original.{ext}")
    }
    pub fn person_crop(task_id: &str, n: usize) -> String {
        format!("images/uploads/{task_id}/person_{n}_crop.jpg")
    }
    pub fn person_bg_removed(task_id: &str, n: usize) -> String {
        format!("images/uploads/{task_id}/person_{n}_bg_removed.png")
    }
    pub fn optimized(task_id: &str, width: u32, height: u32) -> String {
        format!("images/uploads/{task_id}/optimized_{width}x{height}.png")
    }
    pub fn person_preview(task_id: &str, n: usize) -> String {
        format!("images/previews/{task_id}/person_{n}_preview.jpg")
    }
    pub fn base_voice(task_id: &str) -> String {
        format!("voices/generated/{task_id}/base_voice.wav")
    }
    pub fn prosody_adjusted(task_id: &str) -> String {
        format!("voices/generated/{task_id}/prosody_adjusted.wav")
    }
    /// When each sentence is spoken in `prosody_adjusted` (JSON,
    /// [`crate::text::SpeechTiming`]): the captions' times.
    pub fn speech_timing(task_id: &str) -> String {
        format!("voices/generated/{task_id}/speech_timing.json")
    }
    pub fn final_mixed(task_id: &str) -> String {
        format!("voices/generated/{task_id}/final_mixed.mp3")
    }
    /// The same mix as AAC in an M4A, made by the mix step for the render
    /// to copy into the video as it is (not in the original layout: an
    /// AAC encode there cost the render 0.3 s on its critical path).
    pub fn final_mixed_aac(task_id: &str) -> String {
        format!("voices/generated/{task_id}/final_mixed.m4a")
    }
    pub fn final_video(task_id: &str) -> String {
        format!("videos/{task_id}/final_video.mp4")
    }
    pub fn thumbnail(task_id: &str) -> String {
        format!("videos/{task_id}/thumbnail.jpg")
    }
    /// Every prefix a job writes under: what a cancelled job leaves is
    /// removed by listing these.
    pub fn job_prefixes(task_id: &str) -> [String; 3] {
        [format!("images/uploads/{task_id}/"), format!("voices/generated/{task_id}/"), format!("videos/{task_id}/")]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Redis Cluster's hash slot of a key: CRC16 (XMODEM) of its hash tag
    /// (what is between the first `{` and the next `}`, if not empty) or
    /// of the whole key, modulo 16384. Written here from the cluster
    /// specification, as the test's own judge.
    fn slot(key: &str) -> u16 {
        let b = key.as_bytes();
        let tagged = b.iter().position(|&c| c == b'{').and_then(|open| {
            let close = b[open + 1..].iter().position(|&c| c == b'}')?;
            (close > 0).then(|| &b[open + 1..open + 1 + close])
        });
        let mut crc: u16 = 0;
        for &byte in tagged.unwrap_or(b) {
            crc ^= u16::from(byte) << 8;
            for _ in 0..8 {
                crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
            }
        }
        crc % 16384
    }

    #[test]
    fn the_slot_function_agrees_with_the_specification() {
        // The examples of the Redis Cluster specification.
        // CRC16/XMODEM of "123456789" is 0x31C3 (12739), under 16384.
        assert_eq!(slot("123456789"), 0x31C3);
        assert_eq!(slot("{user1000}.following"), slot("{user1000}.followers"));
        assert_ne!(slot("foo{}{bar}"), slot("bar"), "an empty tag: the whole key is hashed");
        assert_eq!(slot("foo{{bar}}zap"), slot("{bar"));
    }

    /// The keys each multi-key script or transaction touches share a slot.
    #[test]
    fn keys_used_together_share_a_cluster_slot() {
        let id = "6f1c2a9e-0b7d-4e55-9a41-2c3d4e5f6a7b";
        // The hand-off scripts: the stage record and the task meta.
        assert_eq!(slot(&job_stages(id)), slot(&task_meta(id)));
        assert_eq!(task_meta(id), format!("celery-task-meta-{id}"), "the name Celery clients read");
        // The progress script: snapshot, log and sequence counter.
        assert_eq!(slot(&progress(id)), slot(&progress_log(id)));
        assert_eq!(slot(&progress(id)), slot(&progress_seq(id)));
        // A queue's scripts: all of its keys.
        let q = crate::queue::Keys::new("tayori-render");
        let all = [&q.pending, &q.data, &q.leased, &q.attempts, &q.delayed, &q.wake, &q.dead];
        assert!(all.iter().all(|k| slot(k) == slot(&q.pending)), "{all:?}");
        // And they do spread: other tasks and queues land elsewhere.
        let other = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
        assert_ne!(slot(&task_meta(id)), slot(&task_meta(other)));
        assert_ne!(slot(&q.pending), slot(&crate::queue::Keys::new("tayori").pending));
    }
}
