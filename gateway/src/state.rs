//! Shared state of the gateway's handlers.

use std::sync::Arc;

use shared::catalog::Catalog;
use shared::queue::{CatalogTaskStorage, JobStorage};
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
    pub queue: JobStorage,
    pub catalog_queue: CatalogTaskStorage,
    pub storage: Storage,
    pub catalog: Catalog,
    pub hub: ProgressHub,
}
