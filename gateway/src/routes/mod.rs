//! HTTP routes, one module per route family.

pub mod catalog;
pub mod health;
pub mod jobs;
pub mod page;
pub mod progress;
