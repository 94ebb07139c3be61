//! Shared state of the gateway's handlers.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use shared::catalog::Catalog;
use shared::catalog_task::CatalogTask;
use shared::job::VideoJob;
use shared::queue::Queue;
use shared::redis_conn::ConnectionManager;
use shared::storage::Storage;
use shared::tasks::TaskStore;

use crate::config::GatewayConfig;
use crate::hub::ProgressHub;

#[derive(Clone)]
pub struct AppState {
    pub cfg: Arc<GatewayConfig>,
    pub redis: ConnectionManager,
    pub tasks: TaskStore,
    /// Failed jobs kept for an operator's retry.
    pub failed: shared::failed::FailedStore,
    pub queue: Queue<VideoJob>,
    pub catalog_queue: Queue<CatalogTask>,
    pub storage: Storage,
    pub catalog: Catalog,
    pub hub: ProgressHub,
    pub metrics: Arc<GatewayMetrics>,
}

/// This gateway's own counters.
#[derive(Debug, Default)]
pub struct GatewayMetrics {
    pub jobs_submitted: AtomicU64,
    pub viewers: AtomicI64,
}

impl GatewayMetrics {
    /// A viewer connected; the guard counts it out when dropped.
    pub fn viewer(self: &Arc<Self>) -> ViewerGuard {
        self.viewers.fetch_add(1, Ordering::Relaxed);
        ViewerGuard(self.clone())
    }
}

pub struct ViewerGuard(Arc<GatewayMetrics>);

impl Drop for ViewerGuard {
    fn drop(&mut self) {
        self.0.viewers.fetch_sub(1, Ordering::Relaxed);
    }
}
