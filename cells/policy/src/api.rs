//! Routes: `GET /v1/policies`, `GET /v1/policy/explain`, `GET /v1/policy/endpoint/{id}`.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use cilium_api::ApiError;
use cilium_api::models::{
    PolicyEndpointDetail, PolicyEndpointEntry, PolicyExplanation, PolicyPeer, PolicyRuleRef,
    PolicySelectedEndpoint, PolicySummary, PolicyVerdict,
};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::PolicyError;
use crate::lookup::{Decision, Reason};
use crate::model::RuleRef;
use crate::parse::proto;
use crate::repository::{PodEndpoint, Repository};

/// The policy router with its state applied.
pub fn router(repo: Arc<Repository>) -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(explain))
        .routes(routes!(endpoint))
        .with_state(repo)
}

/// API form of a rule reference.
pub fn rule_ref(r: &RuleRef, cookie: u32) -> PolicyRuleRef {
    PolicyRuleRef {
        kind: r.kind.as_str().to_string(),
        namespace: r.namespace.clone(),
        name: r.name.clone(),
        direction: r.direction.as_str().to_string(),
        rule_index: r.rule_index,
        deny: r.deny,
        cookie,
        description: r.describe(),
    }
}

/// Stored policies (all kinds) with the endpoints of this node each one selects.
#[utoipa::path(get, path = "/v1/policies", tag = "policy",
    responses((status = 200, description = "The policies", body = [PolicySummary])))]
async fn list(State(repo): State<Arc<Repository>>) -> Result<Json<Vec<PolicySummary>>, ApiError> {
    let out = repo
        .policy_selections()
        .into_iter()
        .map(|(p, eps)| PolicySummary {
            kind: p.kind.as_str().to_string(),
            namespace: p.namespace.clone(),
            name: p.name.clone(),
            rules: p.rule_count(),
            enforces_ingress: p.specs.iter().any(|s| s.enforce_ingress),
            enforces_egress: p.specs.iter().any(|s| s.enforce_egress),
            endpoints: eps
                .iter()
                .map(|e| PolicySelectedEndpoint {
                    id: e.id,
                    pod: e.pod(),
                })
                .collect(),
        })
        .collect();
    Ok(Json(out))
}

/// Parameters of `GET /v1/policy/explain`.
#[derive(Debug, Deserialize, IntoParams)]
struct ExplainQuery {
    /// Source pod, `namespace/name`.
    from: String,
    /// Destination pod, `namespace/name`.
    to: String,
    /// Destination port (ICMP: the type); `80/TCP` also accepted.
    port: String,
    /// Protocol: TCP (default), UDP, SCTP, ICMP.
    protocol: Option<String>,
}

fn split_pod(s: &str, what: &'static str) -> Result<(String, String), PolicyError> {
    match s.split_once('/') {
        Some((ns, pod)) if !ns.is_empty() && !pod.is_empty() && !pod.contains('/') => {
            Ok((ns.to_string(), pod.to_string()))
        }
        _ => Err(PolicyError::BadArgument {
            what,
            reason: format!("{s:?} must be NAMESPACE/POD"),
        }),
    }
}

/// Parses `80`, `80/TCP` plus an optional separate protocol into (port, protocol).
pub fn parse_port_proto(port: &str, protocol: Option<&str>) -> Result<(u16, u8), PolicyError> {
    let (p, inline) = match port.split_once('/') {
        Some((p, pr)) => (p, Some(pr)),
        None => (port, None),
    };
    let port: u16 = p.trim().parse().map_err(|_| PolicyError::BadArgument {
        what: "port",
        reason: format!("{p:?} is not a port number 0-65535"),
    })?;
    let pname = inline.or(protocol).unwrap_or("TCP");
    let pr = match proto::parse(pname) {
        Some(n) if n != proto::ANY => n,
        _ => {
            return Err(PolicyError::BadArgument {
                what: "protocol",
                reason: format!("{pname:?} must be TCP, UDP, SCTP or ICMP"),
            });
        }
    };
    Ok((port, pr))
}

fn verdict(repo: &Repository, d: &Decision) -> PolicyVerdict {
    PolicyVerdict {
        enforced: d.reason != Reason::NotEnforced,
        allowed: d.allowed,
        deny: d.deny,
        reason: d.reason.as_str().to_string(),
        cookie: d.cookie,
        rule: d
            .cookie
            .and_then(|c| repo.rule_by_cookie(c).map(|r| rule_ref(&r, c))),
    }
}

fn peer(p: &PodEndpoint) -> PolicyPeer {
    PolicyPeer {
        pod: p.pod.clone(),
        endpoint_id: p.endpoint_id,
        identity: p.identity,
        ipv4: p.ipv4,
    }
}

/// The verdict for a connection between two pods of this node: egress of the source, ingress
/// of the destination, from the same entries the BPF maps hold.
#[utoipa::path(get, path = "/v1/policy/explain", tag = "policy", params(ExplainQuery),
    responses(
        (status = 200, description = "The verdict and deciding rules", body = PolicyExplanation),
        (status = 400, description = "Malformed arguments", body = cilium_api::ErrorBody),
        (status = 404, description = "A pod has no endpoint here", body = cilium_api::ErrorBody)))]
async fn explain(
    State(repo): State<Arc<Repository>>,
    query: Result<Query<ExplainQuery>, QueryRejection>,
) -> Result<Json<PolicyExplanation>, ApiError> {
    let Query(q) = query?;
    let from = split_pod(&q.from, "from")?;
    let to = split_pod(&q.to, "to")?;
    let (port, pr) = parse_port_proto(&q.port, q.protocol.as_deref())?;
    let e = repo.explain((&from.0, &from.1), (&to.0, &to.1), port, pr)?;
    Ok(Json(PolicyExplanation {
        from: peer(&e.from),
        to: peer(&e.to),
        protocol: proto::name(e.protocol),
        port: e.port,
        egress: verdict(&repo, &e.egress),
        ingress: verdict(&repo, &e.ingress),
        allowed: e.allowed,
    }))
}

/// Human-readable port block.
pub fn ports_string(port: u16, len: u8, protocol: u8) -> String {
    let e = crate::model::PolicyEntry {
        direction: crate::model::Direction::Ingress,
        identity: 0,
        protocol,
        port,
        port_prefix_len: len,
        deny: false,
        cookie: 0,
    };
    match e.port_range() {
        _ if len == 0 => "any".to_string(),
        (a, b) if a == b => a.to_string(),
        (a, b) => format!("{a}-{b}"),
    }
}

/// An endpoint's resolved policy entries, with the rule behind each.
#[utoipa::path(get, path = "/v1/policy/endpoint/{id}", tag = "policy",
    params(("id" = String, Path, description = "Endpoint id or cni:<container-id>:<ifname>")),
    responses(
        (status = 200, description = "The resolved policy", body = PolicyEndpointDetail),
        (status = 404, description = "No such endpoint", body = cilium_api::ErrorBody)))]
async fn endpoint(
    State(repo): State<Arc<Repository>>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<PolicyEndpointDetail>, ApiError> {
    let Path(id) = id?;
    let (ep, p) = repo.endpoint_with_policy(&id)?;
    let mut labels_cache = std::collections::HashMap::new();
    let entries = p
        .entries
        .iter()
        .map(|e| {
            let identity_labels = labels_cache
                .entry(e.identity)
                .or_insert_with(|| {
                    if e.identity == 0 {
                        "any".to_string()
                    } else {
                        repo.identity_labels(e.identity)
                            .map(|l| cilium_identity::format_labels(&l))
                            .unwrap_or_default()
                    }
                })
                .clone();
            PolicyEndpointEntry {
                direction: e.direction.as_str().to_string(),
                identity: e.identity,
                identity_labels,
                protocol: proto::name(e.protocol),
                port: e.port,
                port_prefix_len: e.port_prefix_len,
                ports: ports_string(e.port, e.port_prefix_len, e.protocol),
                deny: e.deny,
                cookie: e.cookie,
                rule: repo
                    .rule_by_cookie(e.cookie)
                    .map(|r| rule_ref(&r, e.cookie)),
            }
        })
        .collect();
    Ok(Json(PolicyEndpointDetail {
        endpoint_id: ep.id,
        pod: ep.pod(),
        identity: p.identity,
        ingress_enforced: p.ingress_enforced,
        egress_enforced: p.egress_enforced,
        entries,
    }))
}
