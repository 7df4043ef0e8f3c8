//! Route registry: cells add their routers while the hive is populated; the agent's API
//! server assembles them (and the OpenAPI document) when it starts.

use parking_lot::Mutex;
use utoipa_axum::router::OpenApiRouter;

/// Routes contributed by cells before the server starts.
#[derive(Default)]
pub struct ApiRoutes {
    routers: Mutex<Vec<OpenApiRouter>>,
}

impl ApiRoutes {
    /// Add a router (with its state already applied).
    pub fn add(&self, router: OpenApiRouter) {
        self.routers.lock().push(router);
    }

    /// Take every router added so far (the server does this once, at start).
    pub fn take_all(&self) -> Vec<OpenApiRouter> {
        std::mem::take(&mut *self.routers.lock())
    }
}

impl std::fmt::Debug for ApiRoutes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiRoutes")
            .field("routers", &self.routers.lock().len())
            .finish()
    }
}
