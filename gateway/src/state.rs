//! Shared state of the gateway's handlers.

use std::sync::Arc;

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
    /// Opens dedicated connections for blocking waits (catalog results).
    pub redis_client: redis::Client,
    pub tasks: TaskStore,
    pub queue: Queue<VideoJob>,
    pub catalog_queue: Queue<CatalogTask>,
    pub storage: Storage,
    pub catalog: Catalog,
    pub hub: ProgressHub,
    pub metrics: Arc<crate::routes::metrics::GatewayMetrics>,
}
