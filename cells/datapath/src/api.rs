//! API handlers: `GET /v1/monitor` (NDJSON stream), `GET /v1/metrics` (Prometheus text),
//! `GET /v1/bpf/{lxc,ipcache,ct,metrics}` (decoded map dumps), `POST /v1/bpf/ct/gc`.

use std::convert::Infallible;
use std::net::Ipv4Addr;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use cilium_api::ApiError;
use cilium_api::models::{
    BpfCtEntry, BpfEndpoint, BpfIpcacheEntry, BpfMetric, CtGcResult, MonitorEvent, MonitorEventType,
};
use cilium_bpf::Datapath;
use futures::StreamExt as _;
use prometheus::{Encoder as _, Registry, TextEncoder};
use serde::Deserialize;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::conntrack::ConntrackGc;
use crate::monitor::{Monitor, proto_name, tcp_flags};

/// What the datapath routes read.
#[derive(Clone)]
pub struct DatapathApi {
    /// The loaded datapath.
    pub dp: Arc<Datapath>,
    /// Event fan-out.
    pub monitor: Arc<Monitor>,
    /// Conntrack GC (for on-demand passes).
    pub gc: Arc<ConntrackGc>,
    /// The hive's metrics registry.
    pub registry: Arc<Registry>,
}

impl DatapathApi {
    /// The router with every datapath route.
    pub fn router(self) -> OpenApiRouter {
        OpenApiRouter::new()
            .routes(routes!(monitor))
            .routes(routes!(metrics))
            .routes(routes!(bpf_lxc))
            .routes(routes!(bpf_ipcache))
            .routes(routes!(bpf_ct))
            .routes(routes!(bpf_ct_gc))
            .routes(routes!(bpf_metrics))
            .with_state(self)
    }
}

/// Query of `GET /v1/monitor`.
#[derive(Debug, Deserialize)]
pub struct MonitorQuery {
    /// drop, trace or policy-verdict; all when absent.
    #[serde(rename = "type")]
    kind: Option<String>,
}

fn parse_filter(kind: Option<&str>) -> Result<Option<MonitorEventType>, ApiError> {
    match kind {
        None | Some("") => Ok(None),
        Some("drop") => Ok(Some(MonitorEventType::Drop)),
        Some("trace") => Ok(Some(MonitorEventType::Trace)),
        Some("policy-verdict") => Ok(Some(MonitorEventType::PolicyVerdict)),
        Some(other) => Err(ApiError::bad_request(format!(
            "unknown monitor event type {other:?}; use drop, trace or policy-verdict"
        ))),
    }
}

fn json_line(ev: &MonitorEvent) -> Bytes {
    let mut v = serde_json::to_vec(ev).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

/// Live datapath events as newline-delimited JSON (one `MonitorEvent` per line, flushed
/// per event). A subscriber that reads too slowly gets a `{"type":"lost","lost":N}` line.
#[utoipa::path(get, path = "/v1/monitor", tag = "datapath",
    params(("type" = Option<String>, Query, description = "drop, trace or policy-verdict")),
    responses(
        (status = 200, description = "Stream of events, one JSON object per line",
            content_type = "application/x-ndjson", body = MonitorEvent),
        (status = 400, description = "Unknown type", body = cilium_api::ErrorBody)))]
async fn monitor(
    State(s): State<DatapathApi>,
    Query(q): Query<MonitorQuery>,
) -> Result<Response, ApiError> {
    let filter = parse_filter(q.kind.as_deref())?;
    let stream = BroadcastStream::new(s.monitor.subscribe()).filter_map(move |item| {
        let line = match item {
            Ok(ev) if filter.is_none_or(|f| f == ev.kind) => Some(json_line(&ev)),
            Ok(_) => None,
            Err(BroadcastStreamRecvError::Lagged(n)) => Some(json_line(&MonitorEvent::lost(n))),
        };
        futures::future::ready(line.map(Ok::<_, Infallible>))
    });
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-ndjson"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

/// Every metric of the agent in Prometheus text format (as the Prometheus port serves).
#[utoipa::path(get, path = "/v1/metrics", tag = "datapath",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String)))]
async fn metrics(State(s): State<DatapathApi>) -> Result<Response, ApiError> {
    let families = tokio::task::spawn_blocking(move || s.registry.gather())
        .await
        .map_err(|e| ApiError::internal(format!("gathering metrics failed: {e}")))?;
    let mut buf = Vec::new();
    TextEncoder::new()
        .encode(&families, &mut buf)
        .map_err(|e| ApiError::internal(format!("encoding metrics failed: {e}")))?;
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], buf).into_response())
}

async fn blocking<T: Send + 'static>(
    what: &'static str,
    f: impl FnOnce() -> Result<T, cilium_bpf::Error> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("{what} failed: {e}")))?
        .map_err(|e| ApiError::internal(format!("{what} failed: {e}")))
}

fn mac(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Local endpoints as the datapath sees them (`cilium_lxc_v1`).
#[utoipa::path(get, path = "/v1/bpf/lxc", tag = "datapath",
    responses((status = 200, description = "Endpoint map rows", body = Vec<BpfEndpoint>)))]
async fn bpf_lxc(State(s): State<DatapathApi>) -> Result<Json<Vec<BpfEndpoint>>, ApiError> {
    let rows = blocking("dumping cilium_lxc_v1", move || {
        s.dp.maps().endpoints.dump()
    })
    .await?;
    Ok(Json(
        rows.into_iter()
            .map(|(ip, e)| BpfEndpoint {
                ip: ip.to_string(),
                endpoint_id: e.ep_id,
                ifindex: e.ifindex,
                flags: if e.flags & cilium_bpf::types::ENDPOINT_F_HOST != 0 {
                    vec!["host".into()]
                } else {
                    vec![]
                },
                mac: mac(&e.mac),
                node_mac: mac(&e.node_mac),
                identity: e.sec_identity,
            })
            .collect(),
    ))
}

/// Prefix to identity as the datapath sees it (`cilium_ipcache_v1`).
#[utoipa::path(get, path = "/v1/bpf/ipcache", tag = "datapath",
    responses((status = 200, description = "Ipcache map rows", body = Vec<BpfIpcacheEntry>)))]
async fn bpf_ipcache(State(s): State<DatapathApi>) -> Result<Json<Vec<BpfIpcacheEntry>>, ApiError> {
    let rows = blocking("dumping cilium_ipcache_v1", move || {
        s.dp.maps().ipcache.dump()
    })
    .await?;
    Ok(Json(
        rows.into_iter()
            .map(|(ip, len, v)| BpfIpcacheEntry {
                prefix: format!("{ip}/{len}"),
                identity: v.sec_identity,
                tunnel_endpoint: if v.tunnel_endpoint == 0 {
                    String::new()
                } else {
                    Ipv4Addr::from(v.tunnel_endpoint.to_ne_bytes()).to_string()
                },
                flags: v.flags,
            })
            .collect(),
    ))
}

/// Decodes one conntrack record relative to `now` (CLOCK_BOOTTIME seconds).
pub fn ct_row(r: &cilium_bpf::CtRecord, now: u32) -> BpfCtEntry {
    let (k, e) = (&r.key, &r.entry);
    let mut flags = Vec::new();
    if e.flags & cilium_bpf::types::CT_F_ESTABLISHED != 0 {
        flags.push("established".to_string());
    }
    if e.flags & cilium_bpf::types::CT_F_CLOSING != 0 {
        flags.push("closing".to_string());
    }
    if e.flags & cilium_bpf::types::CT_F_SERVICE != 0 {
        flags.push("service".to_string());
    }
    BpfCtEntry {
        protocol: proto_name(k.proto),
        src_ip: k.src().to_string(),
        src_port: k.src_port(),
        dst_ip: k.dst().to_string(),
        dst_port: k.dst_port(),
        flags,
        tx_flags_seen: tcp_flags(e.tx_flags_seen),
        rx_flags_seen: tcp_flags(e.rx_flags_seen),
        expires_in_seconds: i64::from(e.lifetime) - i64::from(now),
        tx_packets: e.tx_packets,
        tx_bytes: e.tx_bytes,
        rx_packets: e.rx_packets,
        rx_bytes: e.rx_bytes,
        src_identity: e.src_sec_identity,
    }
}

/// Conntrack entries of both CT maps.
#[utoipa::path(get, path = "/v1/bpf/ct", tag = "datapath",
    responses((status = 200, description = "Conntrack entries", body = Vec<BpfCtEntry>)))]
async fn bpf_ct(State(s): State<DatapathApi>) -> Result<Json<Vec<BpfCtEntry>>, ApiError> {
    let rows = blocking("dumping the conntrack maps", move || {
        s.dp.maps().conntrack.dump()
    })
    .await?;
    let now = cilium_bpf::boot_time_secs();
    let mut out: Vec<BpfCtEntry> = rows.iter().map(|r| ct_row(r, now)).collect();
    out.sort_by(|a, b| {
        (&a.protocol, &a.src_ip, a.src_port, &a.dst_ip, a.dst_port).cmp(&(
            &b.protocol,
            &b.src_ip,
            b.src_port,
            &b.dst_ip,
            b.dst_port,
        ))
    });
    Ok(Json(out))
}

/// Runs one conntrack garbage collection pass now.
#[utoipa::path(post, path = "/v1/bpf/ct/gc", tag = "datapath",
    responses((status = 200, description = "What the pass did", body = CtGcResult)))]
async fn bpf_ct_gc(State(s): State<DatapathApi>) -> Result<Json<CtGcResult>, ApiError> {
    let gc = s.gc.clone();
    let stats = tokio::task::spawn_blocking(move || gc.run_now())
        .await
        .map_err(|e| ApiError::internal(format!("conntrack GC failed: {e}")))?
        .map_err(|e| ApiError::internal(format!("conntrack GC failed: {e}")))?;
    Ok(Json(CtGcResult {
        scanned: stats.scanned,
        deleted: stats.deleted,
        next_run_seconds: stats.next_interval.as_secs(),
    }))
}

/// Packet and byte counters of the datapath by reason and direction.
#[utoipa::path(get, path = "/v1/bpf/metrics", tag = "datapath",
    responses((status = 200, description = "Metrics map rows", body = Vec<BpfMetric>)))]
async fn bpf_metrics(State(s): State<DatapathApi>) -> Result<Json<Vec<BpfMetric>>, ApiError> {
    let rows = blocking("dumping cilium_metrics_v1", move || {
        s.dp.maps().metrics.dump()
    })
    .await?;
    Ok(Json(
        rows.into_iter()
            .map(|r| BpfMetric {
                reason: cilium_bpf::reason_name(r.reason),
                reason_code: r.reason,
                direction: r.direction().to_string(),
                packets: r.packets,
                bytes: r.bytes,
            })
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monitor_filter_accepts_the_three_types_only() {
        assert_eq!(parse_filter(None).unwrap(), None);
        assert_eq!(
            parse_filter(Some("drop")).unwrap(),
            Some(MonitorEventType::Drop)
        );
        assert_eq!(
            parse_filter(Some("policy-verdict")).unwrap(),
            Some(MonitorEventType::PolicyVerdict)
        );
        assert!(parse_filter(Some("lost")).is_err());
    }

    #[test]
    fn ct_rows_are_decoded_relative_to_now() {
        let key = cilium_bpf::CtKey4 {
            saddr: u32::from_ne_bytes([10, 200, 0, 5]),
            daddr: u32::from_ne_bytes([10, 200, 0, 7]),
            sport: 43210u16.to_be(),
            dport: 80u16.to_be(),
            proto: 6,
            ..Default::default()
        };
        let entry = cilium_bpf::CtEntry4 {
            lifetime: 1000,
            tx_flags_seen: 0x12,
            flags: cilium_bpf::types::CT_F_ESTABLISHED,
            tx_packets: 3,
            ..Default::default()
        };
        let row = ct_row(&cilium_bpf::CtRecord { key, entry }, 940);
        assert_eq!(row.protocol, "tcp");
        assert_eq!((row.src_ip.as_str(), row.src_port), ("10.200.0.5", 43210));
        assert_eq!((row.dst_ip.as_str(), row.dst_port), ("10.200.0.7", 80));
        assert_eq!(row.expires_in_seconds, 60);
        assert_eq!(row.flags, vec!["established"]);
        assert_eq!(row.tx_flags_seen, "SYN ACK");
        assert_eq!(row.tx_packets, 3);
    }
}
