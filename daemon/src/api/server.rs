//! Binding the listeners and serving the assembled router.

use std::os::unix::fs::PermissionsExt as _;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use cilium_api::ApiError;
use hive::{CancellationToken, Health, Hook, HookContext, Lifecycle};
use parking_lot::Mutex;
use tokio::task::JoinHandle;
use utoipa::OpenApi as _;

use super::metrics::{ApiMetrics, record};
use super::{ApiConfig, ApiRoutes};

/// Largest request body the API accepts.
pub const MAX_BODY_BYTES: usize = 256 << 20;

#[derive(utoipa::OpenApi)]
#[openapi(info(
    title = "cilium-agent API",
    description = "REST API of the cilium-rs node agent. Errors are {code, message, details}."
))]
struct ApiDoc;

/// The running server (listeners and their tasks).
pub struct ApiServer {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: Arc<ApiConfig>,
    routes: Arc<ApiRoutes>,
    metrics: Arc<ApiMetrics>,
    health: Health,
    cancel: CancellationToken,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl ApiServer {
    /// Construct the server; it binds when the hive starts.
    pub fn new(
        cfg: Arc<ApiConfig>,
        routes: Arc<ApiRoutes>,
        metrics: Arc<ApiMetrics>,
        lc: Lifecycle,
        health: Health,
    ) -> hive::anyhow::Result<Self> {
        let inner = Arc::new(Inner {
            cfg,
            routes,
            metrics,
            health,
            cancel: CancellationToken::new(),
            tasks: Mutex::new(Vec::new()),
        });
        lc.append(ServerHook(inner.clone()));
        Ok(Self { inner })
    }

    /// The unix socket path served.
    pub fn socket_path(&self) -> &std::path::Path {
        &self.inner.cfg.socket_path
    }
}

impl std::fmt::Debug for ApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiServer")
            .field("socket", &self.inner.cfg.socket_path)
            .finish()
    }
}

/// Build the full router (every route plus the OpenAPI document and the JSON 404).
pub(crate) fn build_router(routes: &ApiRoutes, metrics: Arc<ApiMetrics>) -> Router {
    let mut merged = utoipa_axum::router::OpenApiRouter::with_openapi(ApiDoc::openapi());
    for r in routes.take_all() {
        merged = merged.merge(r);
    }
    let (router, mut doc) = merged.split_for_parts();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    let doc = Arc::new(doc);
    router
        .route(
            "/v1/openapi.json",
            get(move || {
                let doc = doc.clone();
                async move { axum::Json(doc.as_ref().clone()) }
            }),
        )
        .fallback(|req: Request| async move {
            ApiError::not_found(format!(
                "no route for {} {}",
                req.method(),
                req.uri().path()
            ))
        })
        // `ciliumctl apply` of a large file (10,000 services with their EndpointSlices is tens
        // of MB) must not hit axum's 2 MB default.
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(metrics, record))
}

/// On the TCP listener only reads are allowed, unless the request carries the token.
async fn read_only(State(token): State<Arc<String>>, req: Request, next: Next) -> Response {
    let read = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    let authorized = !token.is_empty()
        && req
            .headers()
            .get(cilium_api::TOKEN_HEADER)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v == token.as_str());
    if read || authorized {
        return next.run(req).await;
    }
    ApiError::forbidden(format!(
        "{} {} changes state and is not allowed on the TCP listener; use the unix socket, or \
         start the agent with --api-token and send it in the {} header",
        req.method(),
        req.uri().path(),
        cilium_api::TOKEN_HEADER
    ))
    .into_response()
}

struct ServerHook(Arc<Inner>);

impl ServerHook {
    async fn bind_unix(&self, router: Router) -> hive::anyhow::Result<()> {
        let path = self.0.cfg.socket_path.clone();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| {
                hive::anyhow::anyhow!(
                    "cannot create the API socket directory {}: {e}",
                    dir.display()
                )
            })?;
        }
        if path.exists() {
            if tokio::net::UnixStream::connect(&path).await.is_ok() {
                hive::anyhow::bail!(
                    "another agent is already serving on {}; stop it or pass a different --socket-path",
                    path.display()
                );
            }
            // A stale socket from a previous run.
            std::fs::remove_file(&path).map_err(|e| {
                hive::anyhow::anyhow!("cannot remove the stale socket {}: {e}", path.display())
            })?;
        }
        let listener = tokio::net::UnixListener::bind(&path).map_err(|e| {
            hive::anyhow::anyhow!("cannot listen on the API socket {}: {e}", path.display())
        })?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o660)).map_err(|e| {
            hive::anyhow::anyhow!("cannot set mode 0660 on {}: {e}", path.display())
        })?;
        tracing::info!(socket = %path.display(), "serving the API");
        let cancel = self.0.cancel.clone();
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router)
                .with_graceful_shutdown(cancel.cancelled_owned())
                .await
            {
                tracing::warn!(error = %e, "API server on the unix socket failed");
            }
        });
        self.0.tasks.lock().push(task);
        Ok(())
    }

    async fn bind_tcp(&self, router: Router) -> hive::anyhow::Result<()> {
        let addr = self.0.cfg.api_listen.clone();
        if addr.is_empty() {
            return Ok(());
        }
        let listener = tokio::net::TcpListener::bind(&addr).await.map_err(|e| {
            hive::anyhow::anyhow!("cannot listen for the API on {addr} (--api-listen): {e}")
        })?;
        let token = Arc::new(self.0.cfg.api_token.clone());
        let router = router.layer(middleware::from_fn_with_state(token, read_only));
        tracing::info!(address = %addr, "serving the read-only API on TCP");
        let cancel = self.0.cancel.clone();
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router)
                .with_graceful_shutdown(cancel.cancelled_owned())
                .await
            {
                tracing::warn!(error = %e, "API server on TCP failed");
            }
        });
        self.0.tasks.lock().push(task);
        Ok(())
    }
}

#[hive::async_trait]
impl Hook for ServerHook {
    fn name(&self) -> String {
        "api-server".to_string()
    }

    async fn start(&self, _ctx: HookContext) -> hive::anyhow::Result<()> {
        let router = build_router(&self.0.routes, self.0.metrics.clone());
        self.bind_unix(router.clone()).await?;
        self.bind_tcp(router).await?;
        self.0
            .health
            .ok(format!("serving on {}", self.0.cfg.socket_path.display()));
        Ok(())
    }

    async fn stop(&self, ctx: HookContext) -> hive::anyhow::Result<()> {
        self.0.cancel.cancel();
        let tasks = std::mem::take(&mut *self.0.tasks.lock());
        // Long-lived streams (monitor) keep graceful shutdown waiting: give them a moment,
        // then cut them off.
        let grace = ctx
            .deadline
            .saturating_duration_since(tokio::time::Instant::now())
            .min(Duration::from_secs(2));
        for t in tasks {
            let abort = t.abort_handle();
            if tokio::time::timeout(grace, t).await.is_err() {
                abort.abort();
            }
        }
        let _ = std::fs::remove_file(&self.0.cfg.socket_path);
        self.0.health.stopped("stopped");
        tracing::info!(socket = %self.0.cfg.socket_path.display(), "API server stopped");
        Ok(())
    }
}
