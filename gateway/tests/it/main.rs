//! Integration tests: real redis-server, gateway and worker processes,
//! the embedded S3 endpoint (and Garage), ffmpeg and the speech engines.

mod admin;
mod admission;
mod bad_input;
mod browser;
mod cancel;
mod catalog;
mod cli;
mod cluster;
mod delivery;
mod deploy;
mod e2e;
mod failover;
mod faults;
mod garage;
mod harness;
mod idempotency;
mod interop;
mod logs;
mod metrics;
mod presign;
mod soak;
mod trust;
mod uploads;
