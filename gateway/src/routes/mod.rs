//! HTTP routes, one module per route family.

pub mod admin;
pub mod catalog;
pub mod health;
pub mod jobs;
pub mod metrics;
pub mod page;
pub mod progress;
pub mod uploads;
