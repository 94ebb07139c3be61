//! Types and services shared by the gateway and the workers.
//!
//! Everything here is transport-agnostic: nothing in this crate knows about
//! axum or HTTP status codes. The job, progress and task-meta types are the
//! wire format between processes (through Redis), so they carry a version.

pub mod cancel;
pub mod catalog;
pub mod catalog_task;
pub mod env;
pub mod failed;
pub mod heartbeat;
pub mod job;
pub mod keys;
pub mod lifecycle;
pub mod metrics;
pub mod progress;
pub mod queue;
pub mod redis_conn;
pub mod rt;
pub mod signal;
pub mod sniff;
pub mod storage;
pub mod tasks;
pub mod telemetry;
pub mod text;

pub use job::{JobError, Resolution, VideoJob, VideoResult};
pub use progress::{ProgressEvent, Step, TaskMeta, TaskStatus};
