//! Typed client methods of the load-balancing routes (`ciliumctl service list`).

use crate::client::{Client, ClientError};
use crate::models::ServiceInfo;

impl Client {
    /// `GET /v1/services`: every service with its frontends and backends.
    pub async fn service_list(&self) -> Result<Vec<ServiceInfo>, ClientError> {
        self.get("/v1/services").await
    }
}
