//! Prometheus endpoint (`--prometheus-listen`, default 127.0.0.1:9962) serving every metric
//! registered in the hive's registry.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use hive::{BoxCell, CancellationToken, Config, FnHook, Health, Invoke, Lifecycle};
use prometheus::{Encoder as _, Registry, TextEncoder};
use serde::Serialize;

/// Metrics flags.
#[derive(Debug, Clone, clap::Args, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct MetricsConfig {
    /// Address of the Prometheus endpoint; empty to disable.
    #[arg(long = "prometheus-listen", default_value = "127.0.0.1:9962")]
    pub prometheus_listen: String,
}

async fn metrics(State(registry): State<Arc<Registry>>) -> impl IntoResponse {
    let mut buf = Vec::new();
    let families = registry.gather();
    if let Err(e) = TextEncoder::new().encode(&families, &mut buf) {
        return (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode metrics: {e}"),
        )
            .into_response();
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], buf).into_response()
}

/// The metrics server cell.
pub fn cell() -> BoxCell {
    hive::Module::new(
        "metrics",
        "Prometheus endpoint",
        vec![
            Config::<MetricsConfig>::new(),
            Invoke::new(
                |cfg: Arc<MetricsConfig>,
                 registry: Arc<Registry>,
                 lc: Lifecycle,
                 health: Health| {
                    if cfg.prometheus_listen.is_empty() {
                        health.ok("disabled (--prometheus-listen is empty)");
                        return Ok::<_, hive::anyhow::Error>(());
                    }
                    let stop_health = health.clone();
                    let addr = cfg.prometheus_listen.clone();
                    let cancel = CancellationToken::new();
                    let stop_token = cancel.clone();
                    lc.append(FnHook::new(
                    "prometheus-server",
                    move |_ctx| {
                        let health = health.clone();
                        let addr = addr.clone();
                        let registry = registry.clone();
                        let cancel = cancel.clone();
                        async move {
                            let listener = tokio::net::TcpListener::bind(&addr).await.map_err(|e| {
                                hive::anyhow::anyhow!(
                                    "cannot listen for Prometheus on {addr}: {e}; is another agent running? (--prometheus-listen)"
                                )
                            })?;
                            tracing::info!(address = %addr, "serving Prometheus metrics");
                            health.ok(format!("serving on {addr}"));
                            let app = Router::new()
                                .route("/metrics", get(metrics))
                                .with_state(registry);
                            tokio::spawn(async move {
                                let res = axum::serve(listener, app)
                                    .with_graceful_shutdown(cancel.cancelled_owned())
                                    .await;
                                if let Err(e) = res {
                                    tracing::warn!(error = %e, "Prometheus server failed");
                                }
                            });
                            Ok(())
                        }
                    },
                    move |_ctx| {
                        let t = stop_token.clone();
                        let h = stop_health.clone();
                        async move {
                            t.cancel();
                            h.stopped("stopped");
                            Ok(())
                        }
                    },
                ));
                    Ok(())
                },
            ),
        ],
    )
}
