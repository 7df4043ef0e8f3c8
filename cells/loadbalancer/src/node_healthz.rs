//! The node's kube-proxy health endpoint (`--kube-proxy-replacement-healthz-bind-address`,
//! kube-proxy's `--healthz-bind-address`, conventionally `0.0.0.0:10256`). Cloud load
//! balancers probe it on every node to decide whether the node can take traffic for
//! services with `externalTrafficPolicy: Cluster`; with kube-proxy gone, the agent answers.
//!
//! `GET /healthz`: `200` while no cell of the agent reports itself degraded, else `503`.
//! Body `{"lastUpdated": T, "currentTime": T}` (RFC 3339), as kube-proxy and Cilium send it.
//! `lastUpdated` is the last time every frontend was in the BPF maps: `currentTime` while
//! they are, older while a change is still being written or failing. A `503` also lists the
//! degraded cells (`"degraded": [...]`), so whoever reads the probe sees why.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use hive::{CancellationToken, Health, HealthView, Level};
use parking_lot::Mutex;
use statedb::WatchSet;
use statedb::reconciler::StatusKind;

use crate::writer::Writer;

/// Whether the frontends are all in the maps, and since when they last were.
#[derive(Debug, Clone, Copy)]
struct Sync {
    in_sync: bool,
    last: SystemTime,
}

#[derive(Clone)]
struct Shared {
    view: Arc<HealthView>,
    sync: Arc<Mutex<Sync>>,
}

/// The answer to one probe, given the degraded cells (their ids), the frontends' sync
/// state and the time now.
fn answer(
    degraded: &[String],
    in_sync: bool,
    last: SystemTime,
    now: SystemTime,
) -> (StatusCode, String) {
    let ts = |t: SystemTime| humantime::format_rfc3339_millis(t).to_string();
    let mut body = serde_json::json!({
        "lastUpdated": ts(if in_sync { now } else { last }),
        "currentTime": ts(now),
    });
    let status = if degraded.is_empty() {
        StatusCode::OK
    } else {
        body["degraded"] = serde_json::json!(degraded);
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, body.to_string())
}

async fn healthz(State(s): State<Shared>) -> Response {
    let degraded: Vec<String> = s
        .view
        .all()
        .into_iter()
        .filter(|h| h.level == Level::Degraded)
        .map(|h| h.id)
        .collect();
    let sync = *s.sync.lock();
    let (status, body) = answer(&degraded, sync.in_sync, sync.last, SystemTime::now());
    crate::healthcheck::json_response(status, body)
}

/// Serves `/healthz` on `addr` until `cancel`, following the `frontends` table for
/// `lastUpdated`. A bind failure is reported in the job's health and retried.
pub async fn run(
    addr: String,
    writer: Arc<Writer>,
    view: Arc<HealthView>,
    cancel: CancellationToken,
    health: Health,
) -> hive::anyhow::Result<()> {
    let listener = loop {
        match tokio::net::TcpListener::bind(&addr).await {
            Ok(l) => break l,
            Err(e) => {
                tracing::warn!(address = %addr, error = %e, "cannot open the kube-proxy health endpoint");
                health.degraded(
                    "kube-proxy health endpoint not open",
                    format!(
                        "{addr}: {e} (--kube-proxy-replacement-healthz-bind-address; is kube-proxy \
                         still running?)"
                    ),
                );
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                }
            }
        }
    };
    let shared = Shared {
        view,
        sync: Arc::new(Mutex::new(Sync {
            in_sync: false,
            last: SystemTime::UNIX_EPOCH,
        })),
    };
    let app = Router::new()
        .route("/healthz", get(healthz))
        .with_state(shared.clone());
    let stop = cancel.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
    });
    tracing::info!(address = %addr, "serving the kube-proxy health endpoint");
    health.ok(format!("serving /healthz on {addr}"));
    loop {
        let mut ws = WatchSet::new();
        let in_sync = {
            let txn = writer.read_txn();
            let (mut all, watch) = writer.frontends().all_watch(&txn);
            ws.add(watch);
            all.all(|f| f.status.kind == StatusKind::Done)
        };
        {
            let mut s = shared.sync.lock();
            s.in_sync = in_sync;
            if in_sync {
                s.last = SystemTime::now();
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = ws.wait() => {}
        }
        // Many changes in a row (a large apply) are looked at once.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    match server.await {
        Ok(Err(e)) => {
            tracing::warn!(address = %addr, error = %e, "kube-proxy health endpoint failed")
        }
        Err(e) => {
            tracing::warn!(address = %addr, error = %e, "kube-proxy health endpoint task failed")
        }
        Ok(Ok(())) => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_like_kube_proxy_and_names_what_is_degraded() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let last = now - Duration::from_secs(30);
        let (status, body) = answer(&[], true, last, now);
        assert_eq!(status, StatusCode::OK);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["lastUpdated"], v["currentTime"], "{body}");
        assert_eq!(v["currentTime"], "2027-01-15T08:00:00.000Z", "{body}");
        assert!(v.get("degraded").is_none(), "{body}");
        // Frontends still being written: lastUpdated stays at the last time they all were.
        let (status, body) = answer(&[], false, last, now);
        assert_eq!(status, StatusCode::OK);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["lastUpdated"], "2027-01-15T07:59:30.000Z", "{body}");
        let (status, body) = answer(&["agent.lbmap.job-reconcile".into()], true, last, now);
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["degraded"][0], "agent.lbmap.job-reconcile", "{body}");
    }
}
