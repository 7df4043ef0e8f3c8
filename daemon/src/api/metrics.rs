//! Request metrics of the API, labelled by route template (bounded) and status code.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

/// `cilium_api_requests_total` and `cilium_api_request_duration_seconds`.
#[derive(Debug, Clone)]
pub struct ApiMetrics {
    requests: IntCounterVec,
    duration: HistogramVec,
}

impl ApiMetrics {
    /// Register the metrics in the hive's registry.
    pub fn new(registry: Arc<Registry>) -> hive::anyhow::Result<Self> {
        let requests = IntCounterVec::new(
            Opts::new("cilium_api_requests_total", "API requests served"),
            &["method", "route", "code"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "cilium_api_request_duration_seconds",
                "Time to serve an API request",
            ),
            &["method", "route"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        Ok(Self { requests, duration })
    }
}

/// Middleware recording every request.
pub async fn record(State(m): State<Arc<ApiMetrics>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let method = req.method().as_str().to_string();
    let start = Instant::now();
    let resp = next.run(req).await;
    let code = resp.status().as_u16().to_string();
    m.requests
        .with_label_values(&[&method, &route, &code])
        .inc();
    m.duration
        .with_label_values(&[&method, &route])
        .observe(start.elapsed().as_secs_f64());
    resp
}
