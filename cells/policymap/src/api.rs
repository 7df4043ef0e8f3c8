//! Routes: `GET /v1/bpf/policy/{endpoint}` (an endpoint's decoded policy map entries with
//! counters) and `GET /v1/policy/stats` (per-cookie counters).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use cilium_api::ApiError;
use cilium_api::models::{BpfPolicy, BpfPolicyEntry, PolicyRuleStats};
use cilium_bpf::Datapath;
use cilium_policy::Repository;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// State of the policy map routes.
#[derive(Clone)]
pub struct PolicyMapApi {
    /// The loaded datapath.
    pub dp: Arc<Datapath>,
    /// Names cookies (optional: without it `rule` stays empty).
    pub repo: Option<Arc<Repository>>,
}

impl PolicyMapApi {
    /// The router with both routes.
    pub fn router(self) -> OpenApiRouter {
        OpenApiRouter::new()
            .routes(routes!(bpf_policy))
            .routes(routes!(policy_stats))
            .with_state(self)
    }

    fn rule(&self, cookie: u32) -> String {
        self.repo
            .as_ref()
            .and_then(|r| r.rule_by_cookie(cookie))
            .map(|r| r.describe())
            .unwrap_or_default()
    }
}

/// Protocol name of a policy entry (`any` for 0).
pub fn proto_name(proto: u8) -> String {
    match proto {
        0 => "any".into(),
        1 => "icmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        132 => "sctp".into(),
        p => format!("proto-{p}"),
    }
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

/// An endpoint's policy as the datapath holds it (`cilium_policy_v1`,
/// `cilium_policy_cfg_v1`), with each entry's per-cookie counters.
#[utoipa::path(get, path = "/v1/bpf/policy/{endpoint}", tag = "policy",
    params(("endpoint" = u16, Path, description = "Endpoint id")),
    responses(
        (status = 200, description = "Decoded policy map entries", body = BpfPolicy),
        (status = 400, description = "Not an endpoint id", body = cilium_api::ErrorBody)))]
async fn bpf_policy(
    State(s): State<PolicyMapApi>,
    Path(endpoint): Path<String>,
) -> Result<Json<BpfPolicy>, ApiError> {
    let ep: u16 = endpoint.parse().map_err(|_| {
        ApiError::bad_request(format!(
            "endpoint {endpoint:?} is not an endpoint id (1-65535); see `ciliumctl endpoint list`"
        ))
    })?;
    let dp = s.dp.clone();
    let (cfg, entries, stats) = blocking("reading the policy maps", move || {
        let pm = &dp.maps().policy;
        Ok((pm.enforcement(ep)?, pm.endpoint_entries(ep)?, pm.stats()?))
    })
    .await?;
    let mut out: Vec<BpfPolicyEntry> = entries
        .into_iter()
        .map(|(k, v)| {
            let st = stats.iter().find(|r| r.cookie == v.cookie);
            BpfPolicyEntry {
                direction: crate::entries::direction_of(k.dir)
                    .map_or_else(|| format!("dir-{}", k.dir), |d| d.to_string()),
                identity: k.identity,
                protocol: proto_name(k.proto),
                protocol_number: k.proto,
                port: k.port(),
                port_end: k.port_end(),
                port_prefix_len: k.port_prefix_len(),
                verdict: if v.deny != 0 { "deny" } else { "allow" }.into(),
                cookie: v.cookie,
                rule: s.rule(v.cookie),
                packets: st.map_or(0, |r| r.packets),
                bytes: st.map_or(0, |r| r.bytes),
            }
        })
        .collect();
    out.sort_by(|a, b| {
        (&a.direction, a.identity, a.protocol_number, a.port).cmp(&(
            &b.direction,
            b.identity,
            b.protocol_number,
            b.port,
        ))
    });
    Ok(Json(BpfPolicy {
        endpoint_id: ep,
        ingress_enforced: cfg.is_some_and(|c| c.ingress_enforced != 0),
        egress_enforced: cfg.is_some_and(|c| c.egress_enforced != 0),
        revision: cfg.map_or(0, |c| c.revision),
        entries: out,
    }))
}

/// Packet and byte counters per policy cookie (rule), summed over CPUs.
#[utoipa::path(get, path = "/v1/policy/stats", tag = "policy",
    responses((status = 200, description = "Per-rule counters", body = Vec<PolicyRuleStats>)))]
async fn policy_stats(
    State(s): State<PolicyMapApi>,
) -> Result<Json<Vec<PolicyRuleStats>>, ApiError> {
    let dp = s.dp.clone();
    let rows = blocking("reading cilium_policy_stats_v1", move || {
        dp.maps().policy.stats()
    })
    .await?;
    Ok(Json(
        rows.into_iter()
            .map(|r| PolicyRuleStats {
                cookie: r.cookie,
                rule: s.rule(r.cookie),
                packets: r.packets,
                bytes: r.bytes,
            })
            .collect(),
    ))
}
